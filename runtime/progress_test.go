package runtime

import (
	"context"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gofleet/fleet/discordtest"
)

// The start-up of 64 shards at max_concurrency 4 is told in progress
// events: counts that only grow, an ETA that is the identify queue's
// physical limit for what remains, at most one per identify window, and
// a last one at fleet-ready. Per-shard lines are left to Debug.
func TestStartupProgress(t *testing.T) {
	const shards, mc, window = 64, 4, 20 * time.Millisecond
	s := discordtest.NewServer(discordtest.WithGuilds(64), discordtest.WithRecommendedShards(shards),
		discordtest.WithMaxConcurrency(mc), discordtest.WithIdentifyWindow(window))
	defer s.Close()
	var logs syncBuffer
	cfg := testConfig(s)
	cfg.Clusters = 4
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		evs []Event // StartupProgress and FleetReady, in order
	)
	rt.Subscribe(func(e Event) {
		switch e.(type) {
		case StartupProgress, FleetReady:
			mu.Lock()
			evs = append(evs, e)
			mu.Unlock()
		}
	})
	ready := make(chan FleetReady, 1)
	rt.Subscribe(func(e Event) {
		if e, ok := e.(FleetReady); ok {
			ready <- e
		}
	})
	stop := runUntil(t, rt)
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatalf("fleet not ready: %v\n%s", rt.Startup(), logs.String())
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	mu.Lock()
	defer mu.Unlock()
	if len(evs) < 3 {
		t.Fatalf("events %v: want progress before fleet-ready", evs)
	}
	if _, ok := evs[len(evs)-1].(FleetReady); !ok {
		t.Fatalf("last event %v, want fleet_ready", evs[len(evs)-1])
	}
	last, ok := evs[len(evs)-2].(StartupProgress)
	if !ok || last.Ready != shards || last.ETA != 0 || len(last.Late) != 0 || last.Window != shards/mc {
		t.Fatalf("event before fleet_ready %v, want the last progress: %d ready, window %d, no ETA", evs[len(evs)-2], shards, shards/mc)
	}
	var prev StartupProgress
	for i, e := range evs[:len(evs)-1] {
		p, ok := e.(StartupProgress)
		if !ok {
			t.Fatalf("event %d is %v, want progress", i, e)
		}
		if p.Shards != shards || p.Windows != shards/mc || p.MaxConcurrency != mc {
			t.Fatalf("event %d: %v, want %d shards in %d windows at max_concurrency %d", i, p, shards, shards/mc, mc)
		}
		if p.Ready < prev.Ready || p.Window < prev.Window || p.Elapsed < prev.Elapsed {
			t.Fatalf("event %d: %v after %v: counts went back", i, p, prev)
		}
		limit := time.Duration((shards-p.Ready+mc-1)/mc) * window
		if d := p.ETA - limit; d > window || d < -window {
			t.Fatalf("event %d: ETA %s, the physical limit for %d shards is %s", i, p.ETA, shards-p.Ready, limit)
		}
		// At most one per window: the timer counts from the previous
		// event (the last one comes when the last shard is ready).
		if i > 0 && p.Ready < shards && p.Elapsed-prev.Elapsed < window {
			t.Fatalf("event %d %s after the previous one, want at least a window (%s)", i, p.Elapsed-prev.Elapsed, window)
		}
		prev = p
	}
	t.Logf("%d progress events; the last: %v", len(evs)-1, last)
	if st := rt.Stats().Startup; st.Ready != shards || st.ETA != 0 || st.Elapsed != last.Elapsed {
		t.Fatalf("Stats().Startup %v, want the last progress %v", st, last)
	}
	out := logs.String()
	if n := strings.Count(out, "msg=\"fleet startup_progress\""); n != len(evs)-1 {
		t.Fatalf("%d progress lines at Info, want %d:\n%s", n, len(evs)-1, out)
	}
	if strings.Contains(out, "fleet shard_ready") || strings.Contains(out, "fleet shard_identify") {
		t.Fatalf("per-shard lines at Info:\n%s", out)
	}
}

// The progress is computed from the identify queue's rule in injected
// time: windows from the IDENTIFYs sent, an ETA from the shards not
// ready, late shards from when they identified.
func TestStartupProgressSteps(t *testing.T) {
	t0 := time.Unix(1000, 0)
	now := t0
	s := startup{clock: func() time.Time { return now }}
	at := func(d time.Duration) { now = t0.Add(d) }
	sec := time.Second
	s.plan(t0, 8, 2, sec) // 8 shards, max_concurrency 2: 4 windows of 1 s
	step := func(want StartupProgress) {
		t.Helper()
		got := s.snapshot()
		want.Shards, want.Windows, want.MaxConcurrency = 8, 4, 2
		if !slices.Equal(got.Late, want.Late) || got.Late == nil != (want.Late == nil) {
			t.Fatalf("at %s: late %v, want %v", now.Sub(t0), got.Late, want.Late)
		}
		got.Late, want.Late = nil, nil
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("at %s: %+v, want %+v", now.Sub(t0), got, want)
		}
	}
	if p := (&startup{}).snapshot(); p.Shards != 0 || p.ETA != 0 {
		t.Fatalf("before plan: %+v", p)
	}
	step(StartupProgress{Window: 0, ETA: 4 * sec})
	s.identified(0)
	s.identified(1)
	at(500 * time.Millisecond)
	step(StartupProgress{Window: 1, ETA: 4 * sec, Elapsed: 500 * time.Millisecond})
	at(600 * time.Millisecond)
	s.shardReady(0)
	at(700 * time.Millisecond)
	step(StartupProgress{Ready: 1, Window: 1, ETA: 4 * sec, Elapsed: 700 * time.Millisecond})
	at(1600 * time.Millisecond)
	s.identified(2)
	at(1700 * time.Millisecond)
	s.identified(1) // a second IDENTIFY counts once, from the first
	s.shardReady(2)
	// Shard 1 identified 2.5 windows ago and is not ready: late.
	at(2500 * time.Millisecond)
	step(StartupProgress{Ready: 2, Window: 2, ETA: 3 * sec, Elapsed: 2500 * time.Millisecond, Late: []int{1}})
	at(3 * sec)
	for _, id := range []int{1, 3, 4, 5, 6} {
		s.identified(id)
		if n, last := s.shardReady(id); last {
			t.Fatalf("shard %d (%d ready) reported last", id, n)
		}
	}
	step(StartupProgress{Ready: 7, Window: 4, ETA: sec, Elapsed: 3 * sec})
	at(3500 * time.Millisecond)
	s.identified(7)
	at(4 * sec)
	if n, last := s.shardReady(7); !last || n != 8 {
		t.Fatalf("the eighth shard: %d ready, last %v", n, last)
	}
	// Done: the elapsed time stops at the last READY.
	at(9 * sec)
	step(StartupProgress{Ready: 8, Window: 4, Elapsed: 4 * sec})
	if n, last := s.shardReady(7); last || n != 8 {
		t.Fatalf("a shard ready again after the start-up: %d, last %v", n, last)
	}
}

// A restarted cluster's ready duration counts from its new instance, not
// from Run.
func TestClusterReadyCountsFromItsInstance(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(2),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	cfg := testConfig(s)
	cfg.Clusters = 2
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	type seen struct {
		e  ClusterReady
		at time.Time
	}
	readies := make(chan seen, 8)
	rt.Subscribe(func(e Event) {
		if e, ok := e.(ClusterReady); ok {
			readies <- seen{e, time.Now()}
		}
	})
	runStart := time.Now()
	stop := runUntil(t, rt)
	defer stop()
	for range 2 {
		if r := waitEvent(t, readies); r.e.Took > r.at.Sub(runStart) {
			t.Fatalf("%v: took longer than the run so far (%s)", r.e, r.at.Sub(runStart))
		}
	}
	before := time.Now()
	if err := rt.Restart(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	r := waitEvent(t, readies)
	if r.e.Cluster != 0 {
		t.Fatalf("%v, want cluster 0 ready again", r.e)
	}
	// Since Run, it would be at least before − runStart longer.
	if r.e.Took <= 0 || r.e.Took > r.at.Sub(before) {
		t.Fatalf("%v: want at most the %s since the restart began (%s since Run)", r.e, r.at.Sub(before), r.at.Sub(runStart))
	}
}

// A shard whose READY does not come is named late in the progress events
// once two identify windows have passed, and the start-up finishes when
// it comes.
func TestStartupProgressNamesLateShards(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(5*time.Millisecond))
	defer s.Close()
	s.HoldShard(3)
	rt, err := New(testConfig(s))
	if err != nil {
		t.Fatal(err)
	}
	late := make(chan StartupProgress, 1)
	ready := make(chan FleetReady, 1)
	rt.Subscribe(func(e Event) {
		switch e := e.(type) {
		case StartupProgress:
			if slices.Contains(e.Late, 3) {
				select {
				case late <- e:
				default:
				}
			}
		case FleetReady:
			ready <- e
		}
	})
	stop := runUntil(t, rt)
	defer stop()
	p := waitEvent(t, late)
	// Others may be late too on a loaded machine: the window is 5 ms.
	if p.Ready == p.Shards || p.ETA <= 0 || !slices.IsSorted(p.Late) {
		t.Fatalf("%v, want shard 3 late and the start-up not done", p)
	}
	s.ReleaseShard(3)
	waitEvent(t, ready)
	if p := rt.Startup(); p.Ready != 4 || len(p.Late) != 0 {
		t.Fatalf("after the READY: %v", p)
	}
}
