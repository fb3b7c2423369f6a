package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/runtime"
)

// waitFor polls cond until it holds, and fails after limit with an error
// that names what it waited for and how far it got. cond returns whether
// the condition holds and a description of the current progress.
func waitFor(limit time.Duration, what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(limit)
	poll := 100 * time.Microsecond
	for {
		ok, progress := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waited %s for %s: %s", limit, what, progress)
		}
		time.Sleep(poll)
		poll = min(2*poll, 5*time.Millisecond)
	}
}

// waitSessionsReady waits until sessions sessions of s are READY with
// every GUILD_CREATE of their shard written, as the simulator's own Stats
// report it (not as a count of frames a client received). The bound
// grows with the identify windows the sessions need and the guilds to
// send: a second per window and per 10,000 guilds, plus 10 s.
func waitSessionsReady(s *discordtest.Server, sessions int) error {
	return waitSessionsReadyWithin(s, sessions, fleetReadyBound(s, sessions)+time.Duration(s.Guilds()/10_000)*time.Second)
}

// waitSessionsReadyWithin is waitSessionsReady with an explicit bound.
func waitSessionsReadyWithin(s *discordtest.Server, sessions int, limit time.Duration) error {
	return waitFor(limit, fmt.Sprintf("%d sessions READY with their guilds sent", sessions), func() (bool, string) {
		st := s.Stats()
		return st.ReadySessions >= sessions, fmt.Sprintf("%d ready, %d open connections, %d identifies, violations %v",
			st.ReadySessions, st.OpenConnections, st.Identifies, st.Violations)
	})
}

// eventsBound is how long a scenario waits for n events at no less than
// floor events per second, plus 10 s: a stalled run fails in seconds
// rather than minutes. floor is far below the rate the scenario expects.
func eventsBound(n int, floor float64) time.Duration {
	return 10*time.Second + time.Duration(float64(n)/floor*float64(time.Second))
}

// fleetReadyBound is how long a scenario waits for shards shards of s to
// become ready: 10 s plus, per identify window the shards need at the
// server's max_concurrency, the window and a second.
func fleetReadyBound(s *discordtest.Server, shards int) time.Duration {
	windows := (shards + s.MaxConcurrency() - 1) / s.MaxConcurrency()
	return 10*time.Second + time.Duration(windows)*(s.IdentifyWindow()+time.Second)
}

// loadAndWait sends events with s.Load at rate (0: as fast as the clients
// read) and waits until got has counted them, both bounded by
// eventsBound(events, floor); it returns the events per second from the
// start of the load to the last one counted. got is reset first.
func loadAndWait(s *discordtest.Server, got *atomic.Int64, events int, rate, floor float64) (float64, error) {
	got.Store(0)
	limit := eventsBound(events, floor)
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	start := time.Now()
	if _, err := s.Load(ctx, discordtest.Load{Events: events, Rate: rate}); err != nil {
		return 0, fmt.Errorf("load of %d events: %w (%d received)", events, err, got.Load())
	}
	err := waitFor(limit-time.Since(start), fmt.Sprintf("%d MESSAGE_CREATEs to reach user code", events), func() (bool, string) {
		n := got.Load()
		return n >= int64(events), fmt.Sprintf("%d arrived", n)
	})
	if err != nil {
		return 0, err
	}
	return float64(events) / time.Since(start).Seconds(), nil
}

// awaitFleet waits for a runtime's fleet to be ready or for its Run to
// end, bounded by fleetReadyBound, then for every session READY with its
// guilds sent.
func awaitFleet(s *discordtest.Server, shards int, rt *runtime.Runtime) error {
	bound := fleetReadyBound(s, shards)
	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case <-rt.Ready():
	case <-rt.Done():
		return fmt.Errorf("run: %w", rt.Err())
	case <-t.C:
		return fmt.Errorf("waited %s for the fleet_ready event of %d shards: %+v", bound, shards, s.Stats())
	}
	return waitSessionsReady(s, shards)
}
