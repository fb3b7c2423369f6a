package runtime

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/internal/clock"
	"github.com/gofleet/fleet/shardgroup"
)

// fakeProcesses is a Processes whose children are values the test
// drives: it makes them ready, crashes them, and sees what the
// supervisor asks of them.
type fakeProcesses struct {
	spawned chan *fakeChild
	onSpawn func(*fakeChild) // if set, run on each child before Spawn returns

	mu    sync.Mutex // guards n, steps
	n     int        // children spawned
	steps []string   // what the runtime asked of the children and the pool, in order
}

// step notes what the runtime asked.
func (p *fakeProcesses) step(s string) {
	p.mu.Lock()
	p.steps = append(p.steps, s)
	p.mu.Unlock()
}

func (p *fakeProcesses) Resharded(_ context.Context, shards int) error {
	p.step("resharded " + strconv.Itoa(shards))
	return nil
}

func newFakeProcesses() *fakeProcesses { return &fakeProcesses{spawned: make(chan *fakeChild, 16)} }

func (p *fakeProcesses) Transport() bus.Transport { return nil }
func (p *fakeProcesses) Child(context.Context, Config, func()) (bool, error) {
	return false, nil
}
func (p *fakeProcesses) Start(context.Context, ProcessFleet) (ProcessPool, error) { return p, nil }
func (p *fakeProcesses) Close(context.Context) error                              { return nil }

func (p *fakeProcesses) Spawn(_ context.Context, spec ChildSpec) (ChildProcess, error) {
	p.mu.Lock()
	c := &fakeChild{p: p, pid: 1000 + spec.Cluster + 100*p.n, spec: spec, exited: make(chan struct{}),
		resumed: make(chan map[int]shardgroup.Session, 1)}
	p.n++
	p.mu.Unlock()
	if p.onSpawn != nil {
		p.onSpawn(c)
	}
	p.spawned <- c
	return c, nil
}

// next is the next child spawned.
func (p *fakeProcesses) next(t *testing.T) *fakeChild {
	t.Helper()
	select {
	case c := <-p.spawned:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no child spawned within 10 s")
		return nil
	}
}

type fakeChild struct {
	p       *fakeProcesses
	pid     int
	spec    ChildSpec
	once    sync.Once
	exited  chan struct{}
	err     error
	resumed chan map[int]shardgroup.Session
	mu      sync.Mutex
	stopped []bool // the keep of each Stop
}

func (c *fakeChild) Pid() int                { return c.pid }
func (c *fakeChild) Exited() <-chan struct{} { return c.exited }
func (c *fakeChild) Err() error              { return c.err }
func (c *fakeChild) exit(err error)          { c.once.Do(func() { c.err = err; close(c.exited) }) }

// ready reports every shard ready, then the cluster, as a child does.
func (c *fakeChild) ready() {
	for _, s := range c.spec.Shards {
		c.spec.Report(ShardReady{Cluster: c.spec.Cluster, Shard: s})
	}
	c.spec.Report(ClusterReady{Cluster: c.spec.Cluster})
}

func (c *fakeChild) HandOver(context.Context) (map[int]shardgroup.Session, error) {
	out := map[int]shardgroup.Session{}
	for _, s := range c.spec.Shards {
		out[s] = shardgroup.Session{ShardID: s, SessionID: "handed", Sequence: 42}
	}
	return out, nil
}

func (c *fakeChild) Resume(_ context.Context, s map[int]shardgroup.Session) error {
	c.resumed <- s
	c.ready()
	return nil
}

func (c *fakeChild) Stop(_ context.Context, keep bool) error {
	c.mu.Lock()
	c.stopped = append(c.stopped, keep)
	c.mu.Unlock()
	c.p.step(fmt.Sprintf("stop %d keep=%v", c.pid, keep))
	c.exit(errors.New("stopped"))
	return nil
}

func (c *fakeChild) Sync(_ context.Context, last bool) error {
	c.p.step(fmt.Sprintf("sync %d last=%v", c.pid, last))
	return nil
}

func (c *fakeChild) Deliver(context.Context) error {
	c.p.step(fmt.Sprintf("deliver %d", c.pid))
	return nil
}

func processConfig(t *testing.T, p *fakeProcesses) Config {
	t.Helper()
	s := smallServer()
	t.Cleanup(s.Close)
	cfg := testConfig(s)
	cfg.Processes, cfg.Clusters = p, 1
	cfg.MaxRestarts, cfg.RestartWindow, cfg.RestartBackoff = 2, time.Minute, time.Second
	return cfg
}

// TestProcessCrashRestartSteps drives a cluster in a child process
// through crashes in made-up time: a crash after ready restarts at once
// (no back-off) with the exit reason, a crash before ready backs off,
// and both count against MaxRestarts.
func TestProcessCrashRestartSteps(t *testing.T) {
	p := newFakeProcesses()
	rt, err := New(processConfig(t, p))
	if err != nil {
		t.Fatal(err)
	}
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	rt.clock = fake
	rec := record(rt, EventClusterRestarted, EventClusterFailed)
	errc := make(chan error, 1)
	go func() { errc <- rt.Run(context.Background()) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	first := p.next(t)
	if first.spec.Resume != ResumeStored || len(first.spec.Shards) != 1 {
		t.Fatalf("first child: %+v, want the cluster's shard resuming the stored sessions", first.spec)
	}
	first.ready()
	<-rt.Ready()

	first.exit(errors.New("signal: killed"))
	second := p.next(t) // no clock step: no back-off
	if second.spec.Resume != ResumeStored {
		t.Fatalf("after a crash the child resumes %v, want the stored (checkpointed) sessions", second.spec.Resume)
	}
	e := rec.of(EventClusterRestarted)[0].(ClusterRestarted)
	if e.Backoff != 0 || e.Restarts != 1 || !strings.Contains(e.Err.Error(), "signal: killed") || !strings.Contains(e.Err.Error(), "child process 1000") {
		t.Fatalf("restart after a crash when ready: %+v, want restart 1 at once, with the child and the exit reason", e)
	}

	second.exit(errors.New("exit status 1")) // before it was ready
	pending, err := fake.WaitTimers(ctx, 1)
	if err != nil {
		t.Fatalf("no back-off after a crash before ready: %v", err)
	}
	e = rec.of(EventClusterRestarted)[1].(ClusterRestarted)
	if e.Restarts != 2 || e.Backoff != pending[0] || e.Backoff < time.Second || e.Backoff > 1250*time.Millisecond {
		t.Fatalf("restart after a crash before ready: %+v (timer %v), want restart 2 after 1 s to 1.25 s", e, pending)
	}
	fake.Advance(pending[0])
	third := p.next(t)
	third.ready()
	third.exit(errors.New("signal: killed"))
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "signal: killed") {
			t.Fatalf("Run = %v, want it to fail with the last exit reason", err)
		}
	case <-ctx.Done():
		t.Fatal("Run did not return once the budget was used up")
	}
	if f := rec.of(EventClusterFailed); len(f) != 1 {
		t.Fatalf("%d cluster_failed events, want 1", len(f))
	}
}

// TestProcessReadyThenExitRestartsAtOnce: a child that reports ready and
// exits before its supervisor looks crashed after ready, and restarts at
// once, though the supervisor then finds both at the same time.
func TestProcessReadyThenExitRestartsAtOnce(t *testing.T) {
	const rounds = 12
	p := newFakeProcesses()
	var spawns int
	p.onSpawn = func(c *fakeChild) {
		spawns++ // Spawn runs on the cluster's supervisor, one at a time
		c.ready()
		if spawns <= rounds {
			c.exit(errors.New("signal: killed"))
		}
	}
	cfg := processConfig(t, p)
	cfg.MaxRestarts = rounds + 1
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// A back-off would wait on this clock, which never moves: the next
	// child would not come.
	rt.clock = clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	rec := record(rt, EventClusterRestarted)
	go rt.Run(context.Background())
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = rt.Shutdown(ctx)
	}()
	for range rounds + 1 {
		p.next(t)
	}
	restarts := rec.of(EventClusterRestarted)
	if len(restarts) != rounds {
		t.Fatalf("%d restarts, want %d", len(restarts), rounds)
	}
	for i, e := range restarts {
		if r := e.(ClusterRestarted); r.Backoff != 0 || r.Restarts != i+1 {
			t.Fatalf("restart %d: %+v, want restart %d at once (the child was ready)", i+1, r, i+1)
		}
	}
}

// TestProcessSoftRestartHandsOver: a soft restart in process mode starts
// a child that waits for its sessions, takes the old child's exact
// sessions and gives them to the new one, then stops the old one.
func TestProcessSoftRestartHandsOver(t *testing.T) {
	p := newFakeProcesses()
	rt, err := New(processConfig(t, p))
	if err != nil {
		t.Fatal(err)
	}
	go rt.Run(context.Background())
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = rt.Shutdown(ctx)
	}()
	old := p.next(t)
	old.ready()
	<-rt.Ready()
	rec := record(rt, EventSoftRestartHandedOver)
	done := make(chan error, 1)
	go func() { done <- rt.SoftRestart(context.Background(), 0) }()
	next := p.next(t)
	if next.spec.Resume != ResumeHandOver {
		t.Fatalf("the new child resumes %v, want the handed-over sessions", next.spec.Resume)
	}
	got := <-next.resumed
	if s, ok := got[0]; !ok || s.SessionID != "handed" || s.Sequence != 42 {
		t.Fatalf("the new child got %v, want the old child's exact sessions", got)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	old.mu.Lock()
	stopped := old.stopped
	old.mu.Unlock()
	if len(stopped) != 1 || stopped[0] {
		t.Fatalf("the old child was stopped %v, want once, without keeping sessions it handed over", stopped)
	}
	if h := rec.of(EventSoftRestartHandedOver); len(h) != 1 || h[0].(SoftRestartHandedOver).Sessions != 1 {
		t.Fatalf("hand-over events %v, want one with 1 session", h)
	}
	if cs := rt.Clusters(); cs[0].State != shardgroup.StateReady || cs[0].Restarts != 1 {
		t.Fatalf("cluster after the soft restart: %+v, want ready, 1 restart", cs[0])
	}
}
