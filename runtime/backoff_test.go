package runtime

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofleet/fleet/internal/clock"
	"github.com/gofleet/fleet/shardgroup"
)

// superviseStep is one row of a supervision step table. The clock moves
// to the pending back-off's end plus extra; then Setup has been called
// setups times in all, and either nothing more happened, or (restart > 0)
// the cluster was restarted as the restart-th within the window after a
// back-off of base to base+25 % jitter, or (failed) the cluster has used
// up its budget and Run has returned.
type superviseStep struct {
	extra   time.Duration
	setups  int32
	restart int
	base    time.Duration
	failed  bool
}

// TestRestartBackoffSteps drives a cluster whose Setup always fails
// through its restart budget in made-up time: MaxRestarts 3 per minute,
// back-off from 1 s doubling.
func TestRestartBackoffSteps(t *testing.T) {
	s := smallServer()
	defer s.Close()
	var setups atomic.Int32
	cfg := testConfig(s)
	cfg.Bot = func(int) Bot {
		return BotFunc(func(context.Context, *shardgroup.Group) error {
			setups.Add(1)
			return errors.New("database down")
		})
	}
	cfg.MaxRestarts, cfg.RestartWindow, cfg.RestartBackoff = 3, time.Minute, time.Second
	rt, err := New(cfg)
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

	steps := []superviseStep{
		{setups: 1, restart: 1, base: time.Second}, // the first start fails
		{extra: -1, setups: 1},                     // 1 ns before the back-off ends: still waiting
		{setups: 2, restart: 2, base: 2 * time.Second},
		{extra: time.Minute, setups: 3, restart: 1, base: 4 * time.Second}, // both restarts have left the window; the back-off goes on doubling
		{setups: 4, restart: 2, base: 8 * time.Second},
		{extra: -time.Millisecond, setups: 4},
		{setups: 5, restart: 3, base: 16 * time.Second},
		{setups: 6, failed: true}, // a fourth restart within the minute: none
	}
	for i, st := range steps {
		if i > 0 {
			pending := fake.Timers()
			if len(pending) != 1 {
				t.Fatalf("step %d: pending timers %v, want the back-off's", i, pending)
			}
			fake.Advance(pending[0] + st.extra)
		}
		switch {
		case st.restart > 0:
			// The supervisor announces the restart, then waits on the clock.
			pending, err := fake.WaitTimers(ctx, 1)
			if err != nil {
				t.Fatalf("step %d: no back-off began: %v", i, err)
			}
			restarts := rec.of(EventClusterRestarted)
			e := restarts[len(restarts)-1].(ClusterRestarted)
			if e.Restarts != st.restart || e.MaxRestarts != 3 || e.Backoff < st.base || e.Backoff > st.base+st.base/4 ||
				pending[0] != e.Backoff || !strings.Contains(e.Err.Error(), "database down") {
				t.Fatalf("step %d: restart %d of %d after %s (timer %s, err %v); want restart %d after %s to %s",
					i, e.Restarts, e.MaxRestarts, e.Backoff, pending[0], e.Err, st.restart, st.base, st.base+st.base/4)
			}
			if n := len(restarts); n != int(st.setups) {
				t.Fatalf("step %d: %d restart events after %d Setups", i, n, st.setups)
			}
		case st.failed:
			select {
			case err := <-errc:
				if err == nil || !strings.Contains(err.Error(), "no cluster could start") || !strings.Contains(err.Error(), "database down") {
					t.Fatalf("step %d: Run = %v, want it to say no cluster could start and why", i, err)
				}
			case <-ctx.Done():
				t.Fatalf("step %d: Run did not return once the budget was used up", i)
			}
			if f := rec.of(EventClusterFailed); len(f) != 1 {
				t.Fatalf("step %d: %d cluster_failed events, want 1", i, len(f))
			}
		}
		if n := setups.Load(); n != st.setups {
			t.Fatalf("step %d: Setup called %d times, want %d", i, n, st.setups)
		}
	}
}
