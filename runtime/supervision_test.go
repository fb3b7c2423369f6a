package runtime

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/services"
	"github.com/gofleet/fleet/shardgroup"
)

// recorder keeps every event of some kinds.
type recorder struct {
	mu     sync.Mutex
	events []Event
	ch     chan Event
}

func record(rt *Runtime, kinds ...EventKind) *recorder {
	rec := &recorder{ch: make(chan Event, 64)}
	rt.Subscribe(func(e Event) {
		for _, k := range kinds {
			if e.Kind() == k {
				rec.mu.Lock()
				rec.events = append(rec.events, e)
				rec.mu.Unlock()
				select {
				case rec.ch <- e:
				default:
				}
			}
		}
	})
	return rec
}

func (rec *recorder) of(k EventKind) []Event {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var out []Event
	for _, e := range rec.events {
		if e.Kind() == k {
			out = append(out, e)
		}
	}
	return out
}

// eventsOf returns the recorded events of type T, in order.
func eventsOf[T Event](rec *recorder) []T {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var out []T
	for _, e := range rec.events {
		if e, ok := e.(T); ok {
			out = append(out, e)
		}
	}
	return out
}

// flakyBot's Setup runs the step of its attempt (by call order), then
// succeeds once the steps run out.
type flakyBot struct {
	calls atomic.Int32
	steps []func(ctx context.Context) error
}

func (f *flakyBot) bot(int) Bot {
	return BotFunc(func(ctx context.Context, _ *shardgroup.Group) error {
		n := int(f.calls.Add(1)) - 1
		if n < len(f.steps) {
			return f.steps[n](ctx)
		}
		return nil
	})
}

func smallServer() *discordtest.Server {
	return discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithIdentifyWindow(time.Millisecond))
}

func TestSetupPanicIsRestarted(t *testing.T) {
	s := smallServer()
	defer s.Close()
	f := &flakyBot{steps: []func(context.Context) error{
		func(context.Context) error { panic("setup bug") },
		func(context.Context) error { return errors.New("not yet") },
	}}
	cfg := testConfig(s)
	cfg.Bot, cfg.RestartBackoff = f.bot, time.Millisecond
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec := record(rt, EventClusterRestarted, EventFleetReady)
	stop := runUntil(t, rt)
	waitEvent(t, rec.ch) // restarted, restarted, then ready
	waitFor(t, func() bool { return len(rec.of(EventFleetReady)) == 1 })
	restarts := eventsOf[ClusterRestarted](rec)
	if len(restarts) != 2 {
		t.Fatalf("%d restarts, want 2: %+v", len(restarts), restarts)
	}
	var pe *PanicError
	if !errors.As(restarts[0].Err, &pe) || pe.Value != "setup bug" || !strings.Contains(string(pe.Stack), "supervision_test.go") {
		t.Fatalf("first restart's error %v, want a *PanicError with the stack", restarts[0].Err)
	}
	if restarts[0].Restarts != 1 || restarts[1].Restarts != 2 || restarts[1].MaxRestarts != 5 || restarts[1].Hard || !strings.Contains(restarts[1].Err.Error(), "not yet") {
		t.Fatalf("restart events %+v", restarts)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestNilBotAndPanickingFactoryFailTheFleet(t *testing.T) {
	for _, tc := range []struct {
		name    string
		factory func(int) Bot
		want    string
	}{
		{"nil bot", func(int) Bot { return nil }, "Config.Bot returned nil for cluster 0"},
		{"factory panics", func(int) Bot { panic("factory bug") }, "panic: factory bug"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := smallServer()
			defer s.Close()
			cfg := testConfig(s)
			cfg.Bot, cfg.MaxRestarts, cfg.RestartBackoff = tc.factory, 1, time.Millisecond
			rt, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			rec := record(rt, EventClusterRestarted, EventClusterFailed)
			err = rt.Run(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "no cluster could start") {
				t.Fatalf("Run = %v, want it to say %q", err, tc.want)
			}
			if len(rec.of(EventClusterRestarted)) != 1 || len(rec.of(EventClusterFailed)) != 1 {
				t.Fatalf("events %+v, want one restart then failed", rec.events)
			}
		})
	}
}

func TestSetupErrFatalStopsTheFleet(t *testing.T) {
	s := smallServer()
	defer s.Close()
	cfg := testConfig(s)
	cfg.Bot = func(int) Bot {
		return BotFunc(func(context.Context, *shardgroup.Group) error {
			return fmt.Errorf("config missing: %w", ErrFatal)
		})
	}
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec := record(rt, EventClusterRestarted)
	if err := rt.Run(context.Background()); !errors.Is(err, ErrFatal) || !strings.Contains(err.Error(), "config missing") {
		t.Fatalf("Run = %v, want ErrFatal", err)
	}
	if n := len(rec.of(EventClusterRestarted)); n != 0 {
		t.Fatalf("%d restarts for a fatal error", n)
	}
}

func TestSetupHangingHonouringCtxIsRestarted(t *testing.T) {
	s := smallServer()
	defer s.Close()
	f := &flakyBot{steps: []func(context.Context) error{
		func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() },
	}}
	cfg := testConfig(s)
	cfg.Bot, cfg.ClusterTimeout, cfg.RestartBackoff = f.bot, 200*time.Millisecond, time.Millisecond
	_, stop := startFleet(t, cfg)
	if n := f.calls.Load(); n != 2 {
		t.Fatalf("Setup called %d times, want 2", n)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestSetupHangingIgnoringCtx(t *testing.T) {
	s := smallServer()
	defer s.Close()
	release := make(chan struct{})
	defer close(release)
	f := &flakyBot{steps: []func(context.Context) error{
		func(context.Context) error { <-release; return nil },
	}}
	cfg := testConfig(s)
	cfg.Bot, cfg.ClusterTimeout, cfg.RestartBackoff = f.bot, 200*time.Millisecond, time.Millisecond
	cfg.ShutdownTimeout = 300 * time.Millisecond
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go rt.Run(context.Background())
	waitReady(t, rt) // the second Setup serves while the first still hangs
	start := time.Now()
	err = rt.Shutdown(context.Background())
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "cluster 0: Setup") {
		t.Fatalf("Shutdown = %v, want it to name cluster 0's Setup", err)
	}
	if took > cfg.ShutdownTimeout+2*time.Second {
		t.Fatalf("Shutdown took %s, ShutdownTimeout is %s", took, cfg.ShutdownTimeout)
	}
	if <-rt.Done(); rt.Err() == nil {
		t.Fatal("Run returned nil with a Setup still running")
	}
}

func TestShutdownDuringHangingSetup(t *testing.T) {
	s := smallServer()
	defer s.Close()
	entered := make(chan struct{})
	cfg := testConfig(s)
	cfg.Bot = func(int) Bot {
		return BotFunc(func(ctx context.Context, _ *shardgroup.Group) error {
			close(entered)
			<-ctx.Done() // no ClusterTimeout would end it soon: the default is 30 s and more
			return ctx.Err()
		})
	}
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- rt.Run(context.Background()) }()
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rt.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestSetupFailingOnRestartIsSupervised(t *testing.T) {
	s := smallServer()
	defer s.Close()
	f := &flakyBot{steps: []func(context.Context) error{
		func(context.Context) error { return nil }, // the first start
		func(context.Context) error { return errors.New("soft restart setup fails") },
		func(context.Context) error { panic("hard restart setup panics") },
	}}
	cfg := testConfig(s)
	cfg.Bot, cfg.RestartBackoff = f.bot, time.Millisecond
	rt, stop := startFleet(t, cfg)
	defer stop()
	rec := record(rt, EventClusterRestarted)
	ctx := context.Background()
	before := rt.groups()[0]
	if err := rt.SoftRestart(ctx, 0); err == nil || !strings.Contains(err.Error(), "old instance keeps serving") {
		t.Fatalf("SoftRestart = %v, want the Setup error", err)
	}
	if rt.groups()[0] != before || before.State() != shardgroup.StateReady {
		t.Fatal("the old instance does not serve after a failed soft restart")
	}
	var pe *PanicError
	if err := rt.Restart(ctx, 0); !errors.As(err, &pe) {
		t.Fatalf("Restart = %v, want the Setup panic", err)
	}
	// The cluster is restarted under supervision and serves again.
	waitFor(t, func() bool {
		g := rt.groups()[0]
		return g != before && g.State() == shardgroup.StateReady
	})
	if r := eventsOf[ClusterRestarted](rec); len(r) != 1 || !errors.As(r[0].Err, &pe) {
		t.Fatalf("restart events %+v, want one for the panic", r)
	}
	if n := f.calls.Load(); n != 4 {
		t.Fatalf("Setup called %d times, want 4", n)
	}
}

func TestOperationsBeforeRun(t *testing.T) {
	s := smallServer()
	defer s.Close()
	rt, err := New(testConfig(s))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for name, op := range map[string]func() error{
		"SoftRestart":     func() error { return rt.SoftRestart(ctx, 0) },
		"SoftRestartAll":  func() error { return rt.SoftRestartAll(ctx) },
		"Restart":         func() error { return rt.Restart(ctx, 0) },
		"ShutdownCluster": func() error { return rt.ShutdownCluster(ctx, 0) },
		"Reshard":         func() error { return rt.Reshard(ctx, ReshardOptions{Shards: 2}) },
		"RestartAll":      func() error { return rt.RestartAll(ctx) },
		"StartReshard":    func() error { _, err := rt.StartReshard(ctx, ReshardOptions{}); return err },
		"StartRestartAll": func() error { _, err := rt.StartRestartAll(ctx); return err },
		"RestartService":  func() error { return rt.RestartService(ctx, services.StoreName) },
		"SoftRestartService": func() error {
			return rt.SoftRestartService(ctx, services.StoreName)
		},
		"ShutdownService":    func() error { return rt.ShutdownService(ctx, services.StoreName) },
		"RestartAllServices": func() error { return rt.RestartAllServices(ctx) },
	} {
		if err := op(); !errors.Is(err, ErrNotRunning) {
			t.Errorf("%s before Run = %v, want ErrNotRunning", name, err)
		}
	}
}

func TestSoftRestartDuringReshardHonoursCtx(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(16), discordtest.WithRecommendedShards(2),
		discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	cfg := testConfig(s)
	cfg.Clusters = 2
	rt, stop := startFleet(t, cfg)
	defer stop()
	rec := record(rt, EventSoftRestartStarted, EventReshardStarted)
	s.HoldShard(3) // the new generation's shard 3 never gets READY: the reshard waits
	defer s.ReleaseShard(3)
	reshardCtx, cancelReshard := context.WithCancel(context.Background())
	reshardDone := make(chan error, 1)
	go func() { reshardDone <- rt.Reshard(reshardCtx, ReshardOptions{Shards: 4}) }()
	waitFor(t, func() bool { return len(rec.of(EventReshardStarted)) == 1 })
	before := s.Stats()

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	// The reshard holds the operation slot until it is cancelled below:
	// a SoftRestart that returns meanwhile has honoured its ctx.
	softDone := make(chan error, 1)
	go func() { softDone <- rt.SoftRestart(ctx, 0) }()
	select {
	case err := <-softDone:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("SoftRestart = %v, want ctx's error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("SoftRestart still waiting 10 s after its ctx ended: it waits for the reshard instead of its ctx")
	}
	if n := len(rec.of(EventSoftRestartStarted)); n != 0 {
		t.Fatalf("%d soft restarts started: it did something", n)
	}
	if after := s.Stats(); after.Resumes != before.Resumes {
		t.Fatalf("resumes %d -> %d: a soft restart happened", before.Resumes, after.Resumes)
	}
	cancelReshard()
	if err := <-reshardDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("Reshard = %v", err)
	}
}

func TestCancelRunDuringPreflight(t *testing.T) {
	for _, how := range []string{"ctx", "Shutdown"} {
		t.Run(how, func(t *testing.T) {
			arrived := make(chan struct{}, 1)
			release := make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				select {
				case arrived <- struct{}{}:
				default:
				}
				select { // holds /gateway/bot, as a slow Discord would
				case <-release:
				case <-r.Context().Done():
				}
			}))
			defer srv.Close()
			defer close(release)
			rt, err := New(Config{Token: "t", Bot: nopBot, RESTURL: srv.URL + "/api/v10", GatewayURL: "ws://127.0.0.1:1"})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := make(chan error, 1)
			go func() { errc <- rt.Run(ctx) }()
			<-arrived
			start := time.Now()
			if how == "ctx" {
				cancel()
			} else if err := rt.Shutdown(context.Background()); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			err = <-errc
			took := time.Since(start)
			if err != nil {
				t.Fatalf("Run = %v, want nil once stopped", err)
			}
			t.Logf("Run returned %s after the stop", took)
			if took > 100*time.Millisecond+150*time.Millisecond {
				t.Fatalf("Run returned %s after the stop, want within 100 ms", took)
			}
		})
	}
}

func TestCancelRunWhileStarting(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(16), discordtest.WithRecommendedShards(4),
		discordtest.WithIdentifyWindow(time.Second)) // one bucket: shards wait in the queue
	defer s.Close()
	rt, err := New(testConfig(s))
	if err != nil {
		t.Fatal(err)
	}
	rec := record(rt, EventShardIdentify)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- rt.Run(ctx) }()
	waitEvent(t, rec.ch)
	start := time.Now()
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Run = %v", err)
	}
	took := time.Since(start)
	t.Logf("Run returned %s after cancel", took)
	if took > 250*time.Millisecond {
		t.Fatalf("Run returned %s after cancel, want within 100 ms", took)
	}
}

func TestUnreachableGatewayFailsRun(t *testing.T) {
	s := smallServer()
	defer s.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "ws://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	cfg := testConfig(s)
	cfg.GatewayURL, cfg.ClusterTimeout, cfg.MaxRestarts, cfg.RestartBackoff = dead, 100*time.Millisecond, 2, time.Millisecond
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec := record(rt, EventClusterRestarted, EventClusterFailed, EventFatal)
	err = rt.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no cluster could start") || !strings.Contains(err.Error(), "not ready within") {
		t.Fatalf("Run = %v, want an error saying no cluster could start", err)
	}
	if len(rec.of(EventClusterRestarted)) != 2 || len(rec.of(EventClusterFailed)) != 1 || len(rec.of(EventFatal)) != 1 {
		t.Fatalf("events %+v, want two restarts, failed, fatal", rec.events)
	}

	cfg.GatewayURL = "http//gateway"
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "not a ws:// or wss:// URL") {
		t.Fatalf("New with a malformed GatewayURL = %v", err)
	}
}

func TestShutdownWithAHeldHandshake(t *testing.T) {
	s := smallServer()
	defer s.Close()
	// A gateway that accepts connections and never answers the upgrade.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns sync.WaitGroup
	accepted := make(chan net.Conn, 4)
	conns.Add(1)
	go func() {
		defer conns.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	defer func() {
		ln.Close()
		conns.Wait()
		close(accepted)
		for c := range accepted {
			c.Close()
		}
	}()
	cfg := testConfig(s)
	cfg.GatewayURL, cfg.ShutdownTimeout = "ws://"+ln.Addr().String(), 300*time.Millisecond
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- rt.Run(context.Background()) }()
	waitFor(t, func() bool { return len(accepted) > 0 })
	start := time.Now()
	err = rt.Shutdown(context.Background())
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "cluster 0") || !strings.Contains(err.Error(), "shards [0] did not stop") {
		t.Fatalf("Shutdown = %v, want it to name cluster 0's shard 0", err)
	}
	t.Logf("Shutdown returned after %s: %v", took, err)
	if took > cfg.ShutdownTimeout+time.Second {
		t.Fatalf("Shutdown took %s, ShutdownTimeout is %s", took, cfg.ShutdownTimeout)
	}
	<-errc
}

func TestShutdownWhileSoftRestartWaitsOnAHeldShard(t *testing.T) {
	s := smallServer()
	defer s.Close()
	cfg := testConfig(s)
	cfg.ShutdownTimeout = 500 * time.Millisecond
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go rt.Run(context.Background())
	waitReady(t, rt)
	s.HoldShard(0) // the new instance's RESUME gets no answer
	defer s.ReleaseShard(0)
	soft := make(chan error, 1)
	go func() { soft <- rt.SoftRestart(context.Background(), 0) }()
	waitFor(t, func() bool { return s.Stats().Connections >= 2 }) // the new instance is dialling
	start := time.Now()
	if err := rt.Shutdown(context.Background()); err != nil {
		t.Logf("Shutdown: %v", err)
	}
	if took := time.Since(start); took > cfg.ShutdownTimeout+time.Second {
		t.Fatalf("Shutdown took %s, ShutdownTimeout is %s", took, cfg.ShutdownTimeout)
	}
	if err := <-soft; err == nil {
		t.Fatal("SoftRestart returned nil though the fleet stopped before the new instance was ready")
	}
	<-rt.Done()
}

// panickyHookBot's Shutdown hook panics.
type panickyHookBot struct{}

func (panickyHookBot) Setup(context.Context, *shardgroup.Group) error { return nil }
func (panickyHookBot) Shutdown(context.Context) error                 { panic("hook bug") }

func TestShutdownHookPanicIsRecovered(t *testing.T) {
	s := smallServer()
	defer s.Close()
	cfg := testConfig(s)
	cfg.Bot = func(int) Bot { return panickyHookBot{} }
	rt := runReady(t, cfg)
	// A soft restart runs the old instance's hook: the panic is recovered.
	if err := rt.SoftRestart(context.Background(), 0); err != nil {
		t.Fatalf("SoftRestart: %v", err)
	}
	err := rt.Shutdown(context.Background())
	if err == nil || !strings.Contains(err.Error(), "cluster 0: Shutdown hook: runtime: panic: hook bug") {
		t.Fatalf("Shutdown = %v, want the hook's panic named", err)
	}
	<-rt.Done()
}

func TestSoftRestartCtxEndingDuringSetupKeepsTheOldInstance(t *testing.T) {
	s := smallServer()
	defer s.Close()
	f := &flakyBot{steps: []func(context.Context) error{
		func(context.Context) error { return nil },
		func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }, // the new instance's Setup outlasts the caller
	}}
	cfg := testConfig(s)
	cfg.Bot = f.bot
	rt, stop := startFleet(t, cfg)
	defer stop()
	rec := record(rt, EventSoftRestartHandedOver)
	before, resumes := rt.groups()[0], s.Stats().Resumes
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := rt.SoftRestart(ctx, 0)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "old instance keeps serving") {
		t.Fatalf("SoftRestart = %v, want ctx's error and the old instance serving", err)
	}
	if rt.groups()[0] != before || before.State() != shardgroup.StateReady || len(rec.of(EventSoftRestartHandedOver)) != 0 ||
		s.Stats().Resumes != resumes {
		t.Fatal("something was handed over")
	}
}

func TestDefaultClusterTimeoutFollowsTheIdentifyQueue(t *testing.T) {
	q16, _ := NewLocalIdentifyQueue(16, 5*time.Second)
	q1, _ := NewLocalIdentifyQueue(1, 5*time.Second)
	r := &Runtime{cfg: Config{IdentifyInterval: 5 * time.Second}}
	for _, tc := range []struct {
		queue  IdentifyQueue
		shards []int
		want   time.Duration
	}{
		{q16, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, 5*time.Second + readyGrace}, // the first window
		{q16, []int{48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63}, 20*time.Second + readyGrace},
		{q1, []int{0, 1, 2, 3}, 20*time.Second + readyGrace},
		{q1, []int{12, 13, 14, 15}, 80*time.Second + readyGrace}, // 15 shards queue before the last one
	} {
		got := r.defaultClusterTimeout(&cluster{shards: tc.shards}, &fleetEnv{queue: tc.queue})
		if got != tc.want {
			t.Errorf("shards %v with max_concurrency %d: %s, want %s", tc.shards,
				tc.queue.(*LocalIdentifyQueue).MaxConcurrency(), got, tc.want)
		}
	}
}
