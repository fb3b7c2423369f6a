// Command multihost runs one bot's fleet on three hosts that share only a
// NATS cluster, kills one host half-way, and shows its clusters move to
// the others and come back by RESUME, not IDENTIFY.
//
// Everything runs on this machine, on loopback: a three-node NATS cluster
// (embedded servers routed to each other), the Discord simulator, and
// three host processes (this program run again, as each machine of a real
// fleet would run the bot's binary).
//
//	go run ./examples/multihost -duration 20s
//
// A host is the few lines of runHost: connect to NATS, natsfleet.NewHost
// with the fleet's name and the bot's runtime.Config, Run.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/events"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/natsfleet"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// hostEnv carries a host's arguments from the parent: in the environment,
// since they hold the NATS password and the bot token.
const hostEnv = "MULTIHOST_HOST"

type hostArgs struct {
	NATS       natsfleet.ConnectInfo `json:"nats"`
	ID         string                `json:"id"`
	Token      string                `json:"token"`
	GatewayURL string                `json:"gateway_url"`
	RESTURL    string                `json:"rest_url"`
}

const (
	fleetName = "demo"
	shards    = 12
	clusters  = 6
	leaseTTL  = 3 * time.Second
)

func main() {
	duration := flag.Duration("duration", 20*time.Second, "how long the fleet runs; one host is killed half-way")
	flag.Parse()
	var err error
	if raw := os.Getenv(hostEnv); raw != "" {
		err = runHost(raw)
	} else {
		err = run(*duration)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "multihost:", err)
		os.Exit(1)
	}
}

// runHost is one machine of the fleet: it runs until its stdin closes,
// then hands its clusters over and leaves.
func runHost(raw string) error {
	var a hostArgs
	if err := json.Unmarshal([]byte(raw), &a); err != nil {
		return err
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() { // the parent closes stdin to stop this host
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()

	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nc, err := natsfleet.Connect(cctx, a.NATS.URL, append(a.NATS.Options(), natsfleet.Name(a.ID))...)
	if err != nil {
		return err
	}
	defer nc.Close()
	h, err := natsfleet.NewHost(cctx, nc, natsfleet.HostConfig{
		Fleet:    fleetName,
		ID:       a.ID,
		LeaseTTL: leaseTTL,
		Runtime: runtime.Config{
			Token:      runtime.Token(a.Token),
			GatewayURL: a.GatewayURL, RESTURL: a.RESTURL, // the simulator's; leave empty for Discord
			Shards: shards, Clusters: clusters,
			IdentifyInterval:   50 * time.Millisecond, // the simulator's window; Discord's is 5 s
			CheckpointInterval: 500 * time.Millisecond,
			Bot: func(cluster int) runtime.Bot {
				return runtime.BotFunc(func(_ context.Context, g *shardgroup.Group) error {
					g.Client().AddEventListeners(bot.NewListenerFunc(func(*events.MessageCreate) {
						// the bot's handlers, as in a single process
					}))
					return nil
				})
			},
		},
	})
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	fmt.Println("ready")
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var owned []int
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
			if now := h.Owned(); !slices.Equal(now, owned) {
				owned = now
				b, _ := json.Marshal(owned)
				fmt.Println("owned", string(b))
			}
		}
	}
}

// host is a host process as the parent sees it.
type host struct {
	id    string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
}

// owners tracks which host runs each cluster, from the hosts' reports.
type owners struct {
	mu      sync.Mutex
	by      map[int]string // cluster -> the host running it now
	last    map[int]string // cluster -> the last host that ran it
	changed chan struct{}
}

func (o *owners) set(id string, clusters []int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for c, h := range o.by {
		if h == id && !slices.Contains(clusters, c) {
			delete(o.by, c)
		}
	}
	for _, c := range clusters {
		if prev := o.last[c]; prev != "" && prev != id {
			fmt.Printf("  cluster %d moved: %s -> %s\n", c, prev, id)
		}
		o.by[c], o.last[c] = id, id
	}
	close(o.changed)
	o.changed = make(chan struct{})
}

// await waits until cond holds of the owners.
func (o *owners) await(ctx context.Context, what string, cond func(map[int]string) bool) error {
	for {
		o.mu.Lock()
		ok, ch := cond(o.by), o.changed
		o.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waited for %s: %w", what, ctx.Err())
		}
	}
}

func (o *owners) of(id string) []int {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []int
	for c, h := range o.by {
		if h == id {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return out
}

func run(duration time.Duration) error {
	if duration < 10*time.Second {
		return fmt.Errorf("-duration %v is too short: the killed host's clusters move after the lease's %v; give at least 10s", duration, leaseTTL)
	}
	nodes, err := natsfleet.StartCluster(3, natsfleet.ServerConfig{})
	if err != nil {
		return err
	}
	defer nodes.Close()
	fmt.Println("NATS cluster of 3 nodes:", nodes.ConnectInfo())

	discord := discordtest.NewServer(discordtest.WithGuilds(shards*4), discordtest.WithRecommendedShards(shards),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(50*time.Millisecond))
	defer discord.Close()

	exe, err := os.Executable()
	if err != nil {
		return err
	}
	own := &owners{by: map[int]string{}, last: map[int]string{}, changed: make(chan struct{})}
	var hosts []*host
	defer func() {
		for _, h := range hosts {
			_ = h.stdin.Close()
		}
		for _, h := range hosts {
			select {
			case <-h.done:
			case <-time.After(15 * time.Second):
				_ = h.cmd.Process.Kill()
				<-h.done
			}
		}
	}()
	for i := range 3 {
		info := nodes.ConnectInfo()
		info.URL = nodes.Node(i).ClientURL() // each host starts on its own node, and learns the others
		raw, _ := json.Marshal(hostArgs{NATS: info, ID: fmt.Sprintf("host-%d", i), Token: discord.Token(),
			GatewayURL: discord.GatewayURL(), RESTURL: discord.RESTURL()})
		h, err := startHost(exe, fmt.Sprintf("host-%d", i), string(raw), own)
		if err != nil {
			return err
		}
		hosts = append(hosts, h)
	}

	ctx, cancel := context.WithTimeout(context.Background(), duration/2)
	defer cancel()
	err = own.await(ctx, "every cluster running on a host", func(by map[int]string) bool { return len(by) == clusters })
	if err != nil {
		return err
	}
	for _, h := range hosts {
		fmt.Printf("%s runs clusters %v\n", h.id, own.of(h.id))
	}
	<-ctx.Done() // half-way
	before := discord.Stats()
	victim := hosts[0]
	moved := own.of(victim.id)
	fmt.Printf("killing %s (SIGKILL), which runs clusters %v\n", victim.id, moved)
	killed := time.Now()
	_ = victim.cmd.Process.Kill()
	<-victim.done

	ctx2, cancel2 := context.WithTimeout(context.Background(), duration/2)
	defer cancel2()
	err = own.await(ctx2, fmt.Sprintf("clusters %v running on the other hosts", moved), func(by map[int]string) bool {
		for _, c := range moved {
			if h, ok := by[c]; !ok || h == victim.id {
				return false
			}
		}
		return true
	})
	if err != nil {
		return err
	}
	if err := waitResumed(ctx2, discord, before, len(moved)*shards/clusters); err != nil {
		return err
	}
	after := discord.Stats()
	fmt.Printf("%s's clusters run elsewhere %v after the kill: %d shards came back by RESUME, %d IDENTIFY\n",
		victim.id, time.Since(killed).Round(10*time.Millisecond), after.Resumes-before.Resumes, after.Identifies-before.Identifies)
	for _, h := range hosts[1:] {
		fmt.Printf("%s runs clusters %v\n", h.id, own.of(h.id))
	}
	<-ctx2.Done()
	if v := after.Violations["identify_concurrency"]; v > 0 {
		return fmt.Errorf("the simulator saw %d identify violations", v)
	}
	return nil
}

// waitResumed waits until the simulator has accepted n more RESUMEs than
// in before.
func waitResumed(ctx context.Context, s *discordtest.Server, before discordtest.Stats, n int) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for s.Stats().Resumes-before.Resumes < n {
		select {
		case <-t.C:
		case <-ctx.Done():
			return errors.New("the moved shards did not RESUME in time")
		}
	}
	return nil
}

// startHost runs this program again as host id, printing its lines.
func startHost(exe, id, args string, own *owners) (*host, error) {
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), hostEnv+"="+args)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	h := &host{id: id, cmd: cmd, stdin: stdin, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if rest, ok := strings.CutPrefix(line, "owned "); ok {
				var cs []int
				if json.Unmarshal([]byte(rest), &cs) == nil {
					own.set(id, cs)
				}
			}
		}
		_ = cmd.Wait()
		own.set(id, nil)
	}()
	return h, nil
}
