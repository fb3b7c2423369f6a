package main

import (
	"fmt"
	"time"

	"github.com/gofleet/fleet/discordtest"
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
	windows := (sessions + s.MaxConcurrency() - 1) / s.MaxConcurrency()
	limit := 10*time.Second + time.Duration(windows)*(s.IdentifyWindow()+time.Second) +
		time.Duration(s.Guilds()/10_000)*time.Second
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
