package main

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// build compiles commands of this module into dir, in one go build; under
// -race with the race detector too, so that it reuses the packages the
// test compiled.
func build(t *testing.T, ctx context.Context, dir string, pkgs ...string) {
	t.Helper()
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.CommandContext(ctx, "go", append(args, pkgs...)...)
	cmd.Dir = filepath.Join("..", "..")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %v: %v\n%s", pkgs, err, b)
	}
}

// proc is a running command whose stdout is read line by line.
type proc struct {
	cmd   *exec.Cmd
	lines chan string // closed when stdout ends
	read  chan struct{}
}

func start(t *testing.T, ctx context.Context, bin string, args ...string) *proc {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, lines: make(chan string, 64), read: make(chan struct{})}
	go func() {
		defer close(p.read)
		defer close(p.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			case <-ctx.Done():
				_, _ = io.Copy(io.Discard, out)
				return
			}
		}
	}()
	return p
}

// until returns the first line matching re, failing the test when stdout
// ends or ctx does first.
func (p *proc) until(t *testing.T, ctx context.Context, re *regexp.Regexp) []string {
	t.Helper()
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("%s ended before printing a line matching %q", filepath.Base(p.cmd.Path), re)
			}
			t.Log(line)
			if m := re.FindStringSubmatch(line); m != nil {
				return m
			}
		case <-ctx.Done():
			t.Fatalf("%s: no line matching %q: %v", filepath.Base(p.cmd.Path), re, ctx.Err())
		}
	}
}

// stop interrupts the command and waits for it.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(os.Interrupt)
	p.wait(t)
}

// wait waits for the command to exit.
func (p *proc) wait(t *testing.T) {
	t.Helper()
	go func() {
		for range p.lines { // let it write what it prints on the way out
		}
	}()
	if err := p.cmd.Wait(); err != nil {
		t.Errorf("%s: %v", filepath.Base(p.cmd.Path), err)
	}
	<-p.read
}

// TestQuickstartAgainstFakediscord runs the two commands as a user would:
// fakediscord prints its gateway, REST URL, token and control API, and
// the quickstart, given them, serves a fleet on it and answers every ping.
func TestQuickstartAgainstFakediscord(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command to build the binaries with")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := t.TempDir()
	build(t, ctx, dir, "./cmd/fakediscord", "./examples/quickstart")
	fake, quick := filepath.Join(dir, "fakediscord"), filepath.Join(dir, "quickstart")

	f := start(t, ctx, fake, "-guilds", "64", "-shards", "4", "-max-concurrency", "4", "-identify-window", "20ms", "-control")
	defer f.stop(t)
	vals := map[string]string{}
	for _, key := range []string{"gateway", "rest", "token", "control"} {
		vals[key] = f.until(t, ctx, regexp.MustCompile(`^`+key+`:\s+(\S+)$`))[1]
	}
	// The line to paste names exactly those values.
	paste := f.until(t, ctx, regexp.MustCompile(`.*quickstart -gateway.*`))[0]
	for key, v := range vals {
		if !strings.Contains(paste, "-"+key+" "+v) {
			t.Errorf("the quickstart line %q lacks -%s %s", paste, key, v)
		}
	}

	q := start(t, ctx, quick, "-gateway", vals["gateway"], "-rest", vals["rest"], "-token", vals["token"],
		"-control", vals["control"], "-clusters", "2")
	// Once pings are sent and some answered, stop it: it waits for the
	// pongs still on their way, then prints its summary.
	q.until(t, ctx, regexp.MustCompile(`^fleet ready: 4 shards`))
	q.until(t, ctx, regexp.MustCompile(`pings sent [1-9]\d*  pongs received [1-9]`))
	_ = q.cmd.Process.Signal(os.Interrupt)
	m := q.until(t, ctx, regexp.MustCompile(`^stopped: .*shards ready (\d+) of (\d+) .*pings sent (\d+)  pongs received (\d+)  pongs missing (-?\d+).*violations (\d+)`))
	q.wait(t)
	if m[1] != "4" || m[2] != "4" {
		t.Errorf("shards ready %s of %s, want 4 of 4", m[1], m[2])
	}
	sent, _ := strconv.Atoi(m[3])
	if sent == 0 || m[4] != m[3] || m[5] != "0" {
		t.Errorf("pings sent %s, pongs received %s, missing %s: want every ping answered", m[3], m[4], m[5])
	}
	if m[6] != "0" {
		t.Errorf("%s violations of Discord's rules", m[6])
	}
}

func TestFlags(t *testing.T) {
	base := options{shards: 16, clusters: 4, identifyWindow: 100 * time.Millisecond}
	for _, tc := range []struct {
		name string
		edit func(*options)
		want string // "" for none
	}{
		{"defaults", func(*options) {}, ""},
		{"fewer shards than the default clusters", func(o *options) { o.shards = 3 }, ""},
		{"more clusters than shards", func(o *options) { o.shards, o.clusters, o.clustersSet = 3, 4, true }, "-clusters 4 > -shards 3"},
		{"gateway alone", func(o *options) { o.gateway, o.token = "ws://x", "t" }, "-gateway and -rest go together"},
		{"gateway without token", func(o *options) { o.gateway, o.rest = "ws://x", "http://x" }, "-gateway needs -token"},
		{"control without gateway", func(o *options) { o.control = "http://x" }, "-control needs -gateway"},
		{"max concurrency not dividing", func(o *options) { o.maxConc = 3 }, "-max-concurrency 3: use one that divides -shards 16"},
	} {
		o := base
		tc.edit(&o)
		err := o.check()
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
	// The simulator's max_concurrency divides -shards, so that exactly
	// -shards run.
	for shards, want := range map[int]int{16: 8, 24: 8, 1000: 8, 12: 4, 3: 1, 2: 2} {
		if got := (options{shards: shards}).maxConcurrency(); got != want {
			t.Errorf("-shards %d: max_concurrency %d, want %d", shards, got, want)
		}
	}
}
