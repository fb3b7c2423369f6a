package restproxy_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/rest"
	"github.com/disgoorg/snowflake/v2"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/restproxy"
)

const routeCreateMessage = "POST /channels/{id}/messages"

var quiet = slog.New(slog.DiscardHandler)

func newSim(t testing.TB, opts ...discordtest.Option) *discordtest.Server {
	t.Helper()
	srv := discordtest.NewServer(opts...)
	t.Cleanup(srv.Close)
	return srv
}

func newLimiter(t testing.TB, cfg restproxy.Config) *restproxy.Limiter {
	t.Helper()
	l, err := restproxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// newClient returns a disgo REST client of srv, closed when the test ends.
func newClient(t testing.TB, url, token string, opts ...rest.ConfigOpt) rest.Rest {
	t.Helper()
	c := rest.NewClient(token, append([]rest.ConfigOpt{rest.WithURL(url), rest.WithLogger(quiet)}, opts...)...)
	t.Cleanup(func() { c.Close(context.Background()) })
	return rest.New(c)
}

func channels(srv *discordtest.Server, n int) []snowflake.ID {
	ids := make([]snowflake.ID, n)
	for i := range ids {
		ids[i] = snowflake.ID(srv.ChannelID(0, i))
	}
	return ids
}

// postAll has every client post perClient messages, spread over chans,
// all at once, and returns the errors and the time it took.
func postAll(clients []rest.Rest, perClient int, chans []snowflake.ID) ([]error, time.Duration) {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	gate := make(chan struct{})
	var ready sync.WaitGroup
	for _, c := range clients {
		for i := range perClient {
			ready.Add(1)
			wg.Go(func() {
				ready.Done()
				<-gate
				_, err := c.CreateMessage(chans[i%len(chans)], discord.MessageCreate{Content: "hello"})
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
	}
	ready.Wait()
	start := time.Now()
	close(gate)
	wg.Wait()
	return errs, time.Since(start)
}

// minTime is the least time n requests need through windows of limit per
// window, when the first window opens with the first request.
func minTime(n, limit int, window time.Duration) time.Duration {
	return time.Duration((n+limit-1)/limit-1) * window
}

// recorder collects hook calls.
type recorder struct {
	mu      sync.Mutex
	scopes  map[string]int
	status  map[int]int
	queued  int
	invalid int
}

func (r *recorder) hooks() restproxy.Hooks {
	r.scopes, r.status = map[string]int{}, map[int]int{}
	return restproxy.Hooks{
		Response: func(_, _ string, status int) { r.mu.Lock(); r.status[status]++; r.mu.Unlock() },
		RateLimited: func(_, scope string) {
			r.mu.Lock()
			r.scopes[scope]++
			r.mu.Unlock()
		},
		Queued:          func(string) { r.mu.Lock(); r.queued++; r.mu.Unlock() },
		InvalidRequests: func(n int) { r.mu.Lock(); r.invalid = n; r.mu.Unlock() },
	}
}
