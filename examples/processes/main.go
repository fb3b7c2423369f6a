// Command processes runs a fleet in process mode: each cluster in a child
// process of this same executable, supervised by the parent, against an
// embedded Discord simulator (discordtest). Half-way it kills one child
// with SIGKILL itself, and shows the parent start it again and its shards
// come back by RESUME, not IDENTIFY.
//
//	go run ./examples/processes -duration 10s
//
// The program's main is the same in the parent and the children: Run in
// a child serves its cluster only (natsfleet.IsChild tells which, for
// what only the parent does here: run the simulator and print).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/events"
	"github.com/disgoorg/disgo/gateway"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/natsfleet"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// tokenEnv passes the simulator's token to the children, in their
// environment (never on a command line).
const tokenEnv = "PROCESSES_EXAMPLE_TOKEN"

type options struct {
	duration time.Duration
	shards   int
	clusters int
	kill     int
	verbose  bool
}

func main() {
	var o options
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "stop after this long")
	flag.IntVar(&o.shards, "shards", 16, "shards")
	flag.IntVar(&o.clusters, "clusters", 4, "clusters, one child process each")
	flag.IntVar(&o.kill, "kill", 1, "the cluster whose child is killed half-way (-1: none)")
	flag.BoolVar(&o.verbose, "v", false, "log the children's records at Info")
	flag.Parse()
	if err := o.check(); err != nil {
		fmt.Fprintln(os.Stderr, "processes:", err)
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "processes:", err)
		os.Exit(1)
	}
}

func (o options) check() error {
	switch {
	case o.duration <= 0:
		return fmt.Errorf("-duration %s: use a positive duration", o.duration)
	case o.shards < 1 || o.clusters < 1 || o.clusters > o.shards:
		return fmt.Errorf("-shards %d -clusters %d: use 1 or more shards and 1 to -shards clusters", o.shards, o.clusters)
	case o.kill >= o.clusters:
		return fmt.Errorf("-kill %d: use a cluster from 0 to %d, or -1", o.kill, o.clusters-1)
	}
	return nil
}

// messageBot counts the messages its cluster receives.
type messageBot struct{}

func (messageBot) Setup(_ context.Context, g *shardgroup.Group) error {
	g.Client().AddEventListeners(bot.NewListenerFunc(func(*events.MessageCreate) {}))
	return nil
}

func run(o options) error {
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cfg := runtime.Config{
		Token:   runtime.Token(os.Getenv(tokenEnv)),
		Intents: gateway.IntentGuilds | gateway.IntentGuildMessages,
		Logger:  log,
		Bot:     func(int) runtime.Bot { return messageBot{} },
	}
	child := natsfleet.IsChild()
	var sim *discordtest.Server
	if !child {
		sim = discordtest.NewServer(
			discordtest.WithGuilds(200),
			discordtest.WithRecommendedShards(o.shards),
			discordtest.WithMaxConcurrency(4),
			discordtest.WithIdentifyWindow(100*time.Millisecond),
		)
		defer sim.Close()
		cfg.Token, cfg.GatewayURL, cfg.RESTURL = runtime.Token(sim.Token()), sim.GatewayURL(), sim.RESTURL()
		cfg.IdentifyInterval, cfg.Shards, cfg.Clusters = sim.IdentifyWindow(), o.shards, o.clusters
	}
	cfg.Processes = natsfleet.Processes(natsfleet.ProcessConfig{
		Env:                []string{tokenEnv + "=" + string(cfg.Token)},
		CheckpointInterval: 200 * time.Millisecond,
		StatsInterval:      200 * time.Millisecond,
	})
	rt, err := runtime.New(cfg)
	if err != nil {
		return err
	}
	if child {
		// A child runs until the parent stops it (or goes away).
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		defer stop()
		return rt.Run(ctx)
	}
	return parent(rt, sim, o)
}

// tally counts the IDENTIFYs and RESUMEs the children report, before and
// after the kill.
type tally struct {
	mu                  sync.Mutex // guards the rest
	killed              bool
	identifies          [2]int // [0]: before the kill, [1]: after
	resumes             [2]int
	resumedAfterKill    map[int]bool // shards of the killed cluster resumed after the kill
	identifiedAfterKill map[int]bool
	changed             chan struct{} // receives a token when a count changes
}

func (t *tally) event(e runtime.Event, killCluster int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i := 0
	if t.killed {
		i = 1
	}
	switch e := e.(type) {
	case runtime.ShardIdentify:
		t.identifies[i]++
		if t.killed && e.Cluster == killCluster {
			t.identifiedAfterKill[e.Shard] = true
		}
	case runtime.ShardResumed:
		t.resumes[i]++
		if t.killed && e.Cluster == killCluster {
			t.resumedAfterKill[e.Shard] = true
		}
	default:
		return
	}
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

func parent(rt *runtime.Runtime, sim *discordtest.Server, o options) error {
	t := &tally{resumedAfterKill: map[int]bool{}, identifiedAfterKill: map[int]bool{}, changed: make(chan struct{}, 1)}
	rt.Subscribe(func(e runtime.Event) {
		t.event(e, o.kill)
		switch e := e.(type) {
		case runtime.FleetReady:
			fmt.Printf("fleet ready: %d shards in %s\n", e.Shards, e.Elapsed.Round(time.Millisecond))
		case runtime.ClusterRestarted:
			fmt.Printf("cluster %d restarted by the parent: %v\n", e.Cluster, e.Err)
		case runtime.ClusterFailed:
			fmt.Printf("cluster %d failed: %v\n", e.Cluster, e.Err)
		}
	})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- rt.Run(ctx) }()

	start := time.Now()
	select {
	case <-rt.Ready():
	case err := <-runDone:
		return fmt.Errorf("the fleet stopped before it was ready: %v", err)
	}
	for _, c := range rt.Clusters() {
		waitShown(rt, c.ID)
	}
	printPids(rt, "ready")
	half := time.NewTimer(max(o.duration/2-time.Since(start), 0))
	defer half.Stop()
	killed := false
	var failure error
	for {
		select {
		case <-half.C:
			if o.kill < 0 {
				continue
			}
			pid, shards := clusterPid(rt, o.kill)
			if pid == 0 {
				failure = fmt.Errorf("cluster %d has no child process to kill", o.kill)
				continue
			}
			t.mu.Lock()
			t.killed = true
			t.mu.Unlock()
			fmt.Printf("killing cluster %d's child process %d (shards %v) with SIGKILL\n", o.kill, pid, shards)
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				return fmt.Errorf("kill %d: %w", pid, err)
			}
			killed = true
		case <-t.changed:
			if !killed {
				continue
			}
			_, shards := clusterPid(rt, o.kill)
			t.mu.Lock()
			n := len(t.resumedAfterKill)
			t.mu.Unlock()
			if n == len(shards) {
				waitShown(rt, o.kill)
				printPids(rt, fmt.Sprintf("cluster %d back by RESUME", o.kill))
				killed = false // printed once
			}
		case err := <-runDone:
			return summary(t, sim, o, err, failure)
		}
	}
}

// clusterPid returns the pid of the child serving a cluster, and its
// shards.
func clusterPid(rt *runtime.Runtime, cluster int) (int, []int) {
	for _, c := range rt.Clusters() {
		if c.ID == cluster && c.Process != nil {
			ids := make([]int, len(c.Shards))
			for i, s := range c.Shards {
				ids[i] = s.ID
			}
			return c.Process.PID, ids
		}
	}
	return 0, nil
}

// waitShown waits, at most a second, until Clusters shows every shard
// of cluster ready: the child's report follows its events closely.
func waitShown(rt *runtime.Runtime, cluster int) {
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		for _, c := range rt.Clusters() {
			if c.ID == cluster && c.State == shardgroup.StateReady {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func printPids(rt *runtime.Runtime, when string) {
	fmt.Printf("%s (parent pid %d):\n", when, os.Getpid())
	for _, c := range rt.Clusters() {
		if c.Process == nil {
			fmt.Printf("  cluster %d: no child process\n", c.ID)
			continue
		}
		ready := 0
		for _, s := range c.Shards {
			if s.State == shardgroup.StateReady {
				ready++
			}
		}
		fmt.Printf("  cluster %d: pid %d, %d of %d shards ready, RSS %d MiB, restarts %d\n",
			c.ID, c.Process.PID, ready, len(c.Shards), c.Process.RSS>>20, c.Restarts)
	}
}

func summary(t *tally, sim *discordtest.Server, o options, runErr, failure error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Printf("IDENTIFYs: %d at start-up, %d after the kill; RESUMEs: %d before the kill, %d after\n",
		t.identifies[0], t.identifies[1], t.resumes[0], t.resumes[1])
	st := sim.Stats()
	violations := 0
	for _, n := range st.Violations {
		violations += n
	}
	fmt.Printf("simulator: %d identify-rule violations\n", violations)
	if runErr != nil && !errors.Is(runErr, context.DeadlineExceeded) && !errors.Is(runErr, context.Canceled) {
		return runErr
	}
	if failure != nil {
		return failure
	}
	if o.kill >= 0 {
		if !t.killed {
			return errors.New("the run ended before the kill: use a longer -duration")
		}
		if len(t.identifiedAfterKill) > 0 {
			return fmt.Errorf("shards %v of the killed cluster identified instead of resuming", keys(t.identifiedAfterKill))
		}
		if len(t.resumedAfterKill) == 0 {
			return errors.New("no shard of the killed cluster resumed before the end: use a longer -duration")
		}
	}
	return nil
}

func keys(m map[int]bool) []int {
	out := make([]int, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
