package runtime

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofleet/fleet/discordtest"
)

// startFakeFleet runs a fleet of one cluster on p's children, ready.
func startFakeFleet(t *testing.T, p *fakeProcesses) (*Runtime, *fakeChild) {
	t.Helper()
	rt, err := New(processConfig(t, p))
	if err != nil {
		t.Fatal(err)
	}
	go rt.Run(context.Background())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = rt.Shutdown(ctx)
	})
	old := p.next(t)
	old.ready()
	<-rt.Ready()
	// The fake child reports ready inside Spawn, before the runtime holds
	// it: wait until it does, as a real child's report comes after.
	waitFor(t, func() bool { return slices.Equal(childPids(rt), []int{old.pid}) })
	return rt, old
}

// childPids lists the pid of the child serving each cluster (0: none).
func childPids(rt *Runtime) []int {
	rt.mu.Lock()
	clusters := slices.Clone(rt.clusters)
	rt.mu.Unlock()
	out := make([]int, len(clusters))
	for i, c := range clusters {
		c.mu.Lock()
		if c.proc != nil {
			out[i] = c.proc.Pid()
		}
		c.mu.Unlock()
	}
	return out
}

// pair is the next two children spawned (together), by cluster.
func (p *fakeProcesses) pair(t *testing.T) (*fakeChild, *fakeChild) {
	t.Helper()
	a, b := p.next(t), p.next(t)
	if a.spec.Cluster > b.spec.Cluster {
		a, b = b, a
	}
	return a, b
}

func (p *fakeProcesses) stepsNow() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.steps)
}

// TestProcessReshardSteps drives a reshard in process mode: the new
// plan's children start in standby at the new shard count, identifying;
// a second reshard is refused meanwhile; once every new child is ready
// the old child catches up (Sync), they deliver, then the old child
// delivers what it received before (Sync again) and stops without keeping its sessions,
// then the pool drops the old count's sessions; Clusters shows the new
// children.
func TestProcessReshardSteps(t *testing.T) {
	p := newFakeProcesses()
	rt, old := startFakeFleet(t, p)
	rec := record(rt, EventReshardStarted, EventReshardProgress, EventReshardCutOver, EventReshardDone)
	done := make(chan error, 1)
	go func() { done <- rt.Reshard(context.Background(), ReshardOptions{Shards: 2, Clusters: 2}) }()
	a, b := p.pair(t)
	for i, c := range []*fakeChild{a, b} {
		if s := c.spec; s.Cluster != i || !slices.Equal(s.Shards, []int{i}) || s.ShardCount != 2 || !s.Standby || s.Resume != ResumeNone {
			t.Fatalf("new child %d: %+v, want cluster %d, shard %d of 2, in standby, identifying", i, s, i, i)
		}
	}
	if err := rt.Reshard(context.Background(), ReshardOptions{Shards: 4}); !errors.Is(err, ErrReshardInProgress) {
		t.Fatalf("a second Reshard while one runs: %v, want ErrReshardInProgress", err)
	}
	a.ready()
	if steps := p.stepsNow(); len(steps) != 0 {
		t.Fatalf("before every new child is ready: %v, want nothing asked", steps)
	}
	b.ready()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := []string{fmt.Sprintf("sync %d last=false", old.pid), fmt.Sprintf("deliver %d", a.pid), fmt.Sprintf("deliver %d", b.pid),
		fmt.Sprintf("sync %d last=true", old.pid),
		fmt.Sprintf("stop %d keep=false", old.pid), "resharded 2"}
	if steps := p.stepsNow(); !slices.Equal(steps, want) {
		t.Fatalf("the switch: %v, want %v", steps, want)
	}
	if got := childPids(rt); !slices.Equal(got, []int{a.pid, b.pid}) {
		t.Fatalf("clusters after the reshard served by %v, want the new children %d and %d", got, a.pid, b.pid)
	}
	if st := rt.Stats(); st.Shards != 2 || st.ShardsReady != 2 {
		t.Fatalf("Stats after the reshard: %d shards, %d ready, want 2 and 2", st.Shards, st.ShardsReady)
	}
	if n := len(rec.of(EventReshardProgress)); n != 2 || len(rec.of(EventReshardCutOver)) != 1 || len(rec.of(EventReshardDone)) != 1 {
		t.Fatalf("events: %d progress, %v, %v; want 2 progress, one cut-over, one done", n, rec.of(EventReshardCutOver), rec.of(EventReshardDone))
	}
	// The new children are supervised: a crash restarts the cluster,
	// at the new count, no longer in standby.
	a.exit(errors.New("signal: killed"))
	again := p.next(t)
	if s := again.spec; s.Cluster != 0 || s.ShardCount != 2 || s.Standby || s.Resume != ResumeStored {
		t.Fatalf("the restarted child: %+v, want cluster 0 of 2 shards, resuming its stored sessions, delivering", s)
	}
}

// TestProcessReshardGivesUp: a reshard whose ctx ends, or one of whose
// new children exits, before the switch stops the new children and
// leaves the old one serving.
func TestProcessReshardGivesUp(t *testing.T) {
	p := newFakeProcesses()
	rt, old := startFakeFleet(t, p)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rt.Reshard(ctx, ReshardOptions{Shards: 2, Clusters: 2}) }()
	a, b := p.pair(t)
	a.ready()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "old clusters keep serving") {
		t.Fatalf("Reshard with its ctx ended: %v, want context.Canceled, saying the old clusters serve", err)
	}
	want := []string{fmt.Sprintf("stop %d keep=false", a.pid), fmt.Sprintf("stop %d keep=false", b.pid)}
	if steps := p.stepsNow(); !slices.Equal(steps, want) && !slices.Equal(steps, []string{want[1], want[0]}) {
		t.Fatalf("after the ctx ended: %v, want %v", steps, want)
	}

	go func() { done <- rt.Reshard(context.Background(), ReshardOptions{Shards: 2, Clusters: 2}) }()
	c, d := p.pair(t)
	c.ready()
	d.exit(errors.New("signal: killed"))
	if err := <-done; err == nil || !strings.Contains(err.Error(), "signal: killed") || !strings.Contains(err.Error(), "old clusters keep serving") {
		t.Fatalf("Reshard with a new child dead: %v, want its exit, saying the old clusters serve", err)
	}
	if got := childPids(rt); !slices.Equal(got, []int{old.pid}) {
		t.Fatalf("clusters after the reshards gave up served by %v, want the old child %d", got, old.pid)
	}
	old.mu.Lock()
	stopped := len(old.stopped)
	old.mu.Unlock()
	if stopped != 0 {
		t.Fatal("the old child was stopped by a reshard that gave up")
	}
}

// TestProcessReshardStats: after a reshard in process mode, Stats shows
// the new plan's children, with their pids, and none of the old ones.
func TestProcessReshardStats(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	cfg := testConfig(s)
	cfg.Clusters = 2
	cfg.Processes = &reportingProcesses{}
	rt, stop := startFleet(t, cfg)
	defer func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	}()
	// Each child's process is known once its first report came.
	before := map[int]bool{}
	for deadline := time.Now().Add(10 * time.Second); len(before) < cfg.Clusters; {
		clear(before)
		for _, c := range rt.Stats().Clusters {
			if c.Process != nil {
				before[c.Process.PID] = true
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s, %d of %d clusters report their process", len(before), cfg.Clusters)
		}
		time.Sleep(time.Millisecond) // polling Stats: nothing signals a report
	}
	if err := rt.Reshard(context.Background(), ReshardOptions{Shards: 8, Clusters: 4}); err != nil {
		t.Fatal(err)
	}
	st := rt.Stats()
	if st.Shards != 8 || st.ShardsReady != 8 || len(st.Clusters) != 4 {
		t.Fatalf("Stats after the reshard: %d shards, %d ready, %d clusters; want 8, 8, 4", st.Shards, st.ShardsReady, len(st.Clusters))
	}
	for _, c := range st.Clusters {
		if c.Process == nil || before[c.Process.PID] || len(c.Shards) != 2 {
			t.Errorf("cluster %d after the reshard: %+v with %d shards, want a new child with 2", c.ID, c.Process, len(c.Shards))
		}
	}
}

// A member that does not deliver yet (a reshard's new child) still fills
// its caches: once it delivers, its cluster knows every guild of its
// shards, and only the events after the switch reach the listeners.
func TestMemberNotDeliveringFillsCaches(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	b, q := memberShared(t, s)
	l := newLedger()
	cfg := memberConfig(s, b, q, ClusterPlan{ID: 0, Shards: []int{0}})
	cfg.Shards = 1
	cfg.Bot = l.bot
	var open atomic.Bool
	var muted atomic.Int64
	cfg.Member.Delivering = func(int) bool {
		if !open.Load() {
			muted.Add(1)
			return false
		}
		return true
	}
	rt, stop := startFleet(t, cfg)
	defer stop()
	waitFor(t, func() bool { return rt.Clusters()[0].Guilds == 4 }) // fails unless the caches take what is not delivered
	g := s.GuildID(0)
	before := muted.Load()
	if n, _ := s.Dispatch(g, "MESSAGE_CREATE", s.MessageCreate(g, "muted", 1)); n != 1 {
		t.Fatalf("dispatched to %d sessions", n)
	}
	waitFor(t, func() bool { return muted.Load() > before })
	open.Store(true)
	if n, _ := s.Dispatch(g, "MESSAGE_CREATE", s.MessageCreate(g, "delivered", 2)); n != 1 {
		t.Fatalf("dispatched to %d sessions", n)
	}
	l.waitN(t, 1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n != 1 {
		t.Fatalf("the listener saw %d messages, want only the one after Delivering turned true", l.n)
	}
}
