// Command bench measures the fleet against the physical limits Discord
// sets and against bare disgo. Each scenario prints one JSON line:
//
//	go run ./bench -scenario simulator -json
//
// Scenarios: simulator, bus, rest (and those listed by -list).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
)

// scenarios maps a name to its run function; files add theirs in init.
var scenarios = map[string]func() (any, error){}

func register(name string, run func() (any, error)) { scenarios[name] = run }

func init() { register("simulator", runSimulator) }

func main() {
	scenario := flag.String("scenario", "", "scenario to run (comma-separated, or all)")
	asJSON := flag.Bool("json", false, "print one JSON line per scenario (the default output is indented)")
	list := flag.Bool("list", false, "list the scenarios")
	child := flag.String("child", "", "internal: run as a helper process")
	flag.Parse()

	if *child != "" {
		if err := runChild(*child, flag.Args()); err != nil {
			fmt.Fprintln(os.Stderr, "bench child:", err)
			os.Exit(1)
		}
		return
	}
	names := make([]string, 0, len(scenarios))
	for n := range scenarios {
		names = append(names, n)
	}
	slices.Sort(names)
	if *list || *scenario == "" {
		fmt.Println("scenarios:", strings.Join(names, ", "))
		if *scenario == "" && !*list {
			os.Exit(2)
		}
		return
	}
	run := strings.Split(*scenario, ",")
	if *scenario == "all" {
		run = names
	}
	failed := false
	for _, name := range run {
		fn, ok := scenarios[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "bench: unknown scenario %q (have %s)\n", name, strings.Join(names, ", "))
			os.Exit(2)
		}
		res, err := fn()
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s: %v\n", name, err)
			failed = true
			continue
		}
		var out []byte
		if *asJSON {
			out, err = json.Marshal(res)
		} else {
			out, err = json.MarshalIndent(res, "", "  ")
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s: %v\n", name, err)
			failed = true
			continue
		}
		fmt.Println(string(out))
	}
	if failed {
		os.Exit(1)
	}
}
