package discordtest

import (
	"context"
	"fmt"
	"time"
)

// Load describes a stream of dispatches for benchmarks and soak tests.
type Load struct {
	// Events is how many events to send in all.
	Events int
	// Rate is the target in events per second; 0 sends as fast as the
	// clients read (dispatch blocks while a client is a replay buffer
	// behind).
	Rate float64
	// EventType is the dispatch name (default MESSAGE_CREATE).
	EventType string
	// Guilds spreads event i over guild i % Guilds (default: every guild).
	Guilds int
	// Payload returns the pre-encoded payload for a guild; it is called
	// once per guild before sending. Default: a MESSAGE_CREATE in the
	// guild, built when the load starts, so a guild's events share its
	// message ID (and the load costs no encoding per event).
	Payload func(guildID uint64) []byte
}

// LoadResult says what a load run did.
type LoadResult struct {
	Events     int           // events generated
	Dispatches int64         // dispatches queued to sessions (an event may go to several)
	Elapsed    time.Duration // from the first event to the last queued
}

// Load sends l.Events events spread over guilds, and so over shards, to
// the sessions that own them, in the caller's goroutine. It returns when
// every event is queued or ctx ends. Sessions that start during the run
// receive the events of the guilds they own from then on.
func (s *Server) Load(ctx context.Context, l Load) (LoadResult, error) {
	if l.Events < 0 || l.Rate < 0 {
		return LoadResult{}, fmt.Errorf("discordtest: Load needs Events >= 0 and Rate >= 0, got %d and %g", l.Events, l.Rate)
	}
	if s.cfg.guilds == 0 {
		return LoadResult{}, fmt.Errorf("discordtest: Load needs guilds; the server has none")
	}
	t := l.EventType
	if t == "" {
		t = "MESSAGE_CREATE"
	}
	g := l.Guilds
	if g <= 0 || g > s.cfg.guilds {
		g = s.cfg.guilds
	}
	payloads := make([][]byte, g)
	for i := range payloads {
		if l.Payload != nil {
			payloads[i] = l.Payload(guildID(i))
		} else {
			payloads[i] = s.MessageCreate(guildID(i), "load", i)
		}
	}
	routes := make([][]*session, g)
	ver := -1
	route := func() {
		sessions, v := s.liveSessions()
		if v == ver {
			return
		}
		ver = v
		for i := range routes {
			routes[i] = routes[i][:0]
			for _, ss := range sessions {
				if ss.owns(guildID(i)) {
					routes[i] = append(routes[i], ss)
				}
			}
		}
	}

	var res LoadResult
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	const chunk = 256
	for res.Events < l.Events {
		if err := ctx.Err(); err != nil {
			res.Elapsed = time.Since(start)
			return res, err
		}
		end := min(l.Events, res.Events+chunk)
		if l.Rate > 0 {
			due := int(l.Rate*time.Since(start).Seconds()) + 1
			if due <= res.Events {
				wait := time.Duration(float64(res.Events)/l.Rate*float64(time.Second)) - time.Since(start)
				timer.Reset(max(wait, 50*time.Microsecond))
				select {
				case <-timer.C:
				case <-ctx.Done():
					res.Elapsed = time.Since(start)
					return res, ctx.Err()
				}
				continue
			}
			end = min(end, due)
		}
		route()
		for i := res.Events; i < end; i++ {
			gi := i % g
			for _, ss := range routes[gi] {
				if ss.append(t, payloads[gi]) {
					res.Dispatches++
				}
			}
		}
		res.Events = end
	}
	res.Elapsed = time.Since(start)
	return res, nil
}
