package restproxy_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/rest"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/restproxy"
)

// The workload: 8 clusters each post 200 messages to the same 5
// channels at once.
const (
	clusters   = 8
	perCluster = 200
	nChannels  = 5
)

// postFromClusters runs the workload against a simulator with the given
// route limit, the clusters sharing one Limiter or each having its own.
func postFromClusters(t *testing.T, shared bool, perCluster, limit int, window time.Duration, cfg restproxy.Config) (errs []error, elapsed time.Duration, st discordtest.RESTStats) {
	srv := newSim(t, discordtest.WithGuilds(1), discordtest.WithGuildShape(2, nChannels, 0),
		discordtest.WithRouteRateLimit(limit, window), discordtest.WithGlobalRateLimit(100_000, time.Second))
	cfg.GlobalLimit = 100_000
	l := newLimiter(t, cfg)
	clients := make([]rest.Rest, clusters)
	for i := range clients {
		if !shared {
			l = newLimiter(t, cfg)
		}
		clients[i] = newClient(t, srv.RESTURL(), srv.Token(), l.ConfigOpt())
	}
	errs, elapsed = postAll(clients, perCluster, channels(srv, nChannels))
	return errs, elapsed, srv.Stats().REST
}

func TestRestSharedLimiterEightClustersNo429s(t *testing.T) {
	const limit, window = 50, 100 * time.Millisecond
	errs, elapsed, st := postFromClusters(t, true, perCluster, limit, window, restproxy.Config{})
	if len(errs) > 0 {
		t.Fatalf("%d requests failed, first: %v", len(errs), errs[0])
	}
	if n := st.RateLimited["user"] + st.RateLimited["global"]; n != 0 {
		t.Errorf("simulator counted %d 429s of user or global scope, want 0 (%v)", n, st.RateLimited)
	}
	if got := st.Requests[routeCreateMessage]; got != clusters*perCluster {
		t.Errorf("simulator got %d requests, want %d", got, clusters*perCluster)
	}
	least := minTime(clusters*perCluster/nChannels, limit, window)
	// How close to the limits the run came is a speed, which the bench
	// measures (go run ./bench -scenario rest); here it is only logged.
	t.Logf("%d messages in %s; the limits allow %s (ratio %.2f)", clusters*perCluster, elapsed, least, least.Seconds()/elapsed.Seconds())
}

// TestIndependentLimitersGet429s has each cluster post one message to the
// same channel, whose limit is half the clusters per window, first with a
// limiter per cluster, then with one shared. A limiter sends its first
// request of a bucket before it knows the limit, so limiters that do not
// share buckets overrun it however slowly the machine runs, as long as
// the first requests land in one window (2 s); one shared limiter does
// not.
func TestRestIndependentLimitersGet429s(t *testing.T) {
	const perCluster, limit, window = 1, clusters / 2, 2 * time.Second
	noRetry := restproxy.Config{Retries: -1}
	_, _, st := postFromClusters(t, false, perCluster, limit, window, noRetry)
	if st.RateLimited["user"] == 0 {
		t.Fatalf("8 limiters that do not share buckets caused no 429; the shared-limiter test proves nothing (%v)", st.RateLimited)
	}
	errs, _, shared := postFromClusters(t, true, perCluster, limit, window, noRetry)
	if len(errs) > 0 || len(shared.RateLimited) > 0 {
		t.Errorf("shared limiter: %d errors, 429s %v; want none", len(errs), shared.RateLimited)
	}
	t.Logf("%d clusters x %d messages: a limiter each caused %d 429s, one shared limiter %d",
		clusters, perCluster, st.RateLimited["user"], shared.RateLimited["user"])
}

// TestRestGlobalLimitSaturated sends three global windows of requests
// over buckets that never bind. The limiter cannot see when the server's
// window starts: its margin must cover how much later one request leaves
// than another let go at the same time, which under -race on a loaded
// machine reaches hundreds of milliseconds. The margin here is 1 s.
func TestRestGlobalLimitSaturated(t *testing.T) {
	const n, global, win = 60, 20, 250 * time.Millisecond
	srv := newSim(t, discordtest.WithGuilds(1), discordtest.WithGuildShape(2, 25, 0),
		discordtest.WithRouteRateLimit(1000, time.Second), discordtest.WithGlobalRateLimit(global, win))
	l := newLimiter(t, restproxy.Config{GlobalLimit: global, GlobalWindow: win, GlobalMargin: 4 * win})
	clients := []rest.Rest{
		newClient(t, srv.RESTURL(), srv.Token(), l.ConfigOpt()),
		newClient(t, srv.RESTURL(), srv.Token(), l.ConfigOpt()),
	}
	errs, elapsed := postAll(clients, n/2, channels(srv, 25))
	if len(errs) > 0 {
		t.Fatalf("%d requests failed, first: %v", len(errs), errs[0])
	}
	st := srv.Stats().REST
	if st.RateLimited["global"] != 0 || st.RateLimited["user"] != 0 {
		t.Errorf("429s %v, want none", st.RateLimited)
	}
	t.Logf("%d requests over 25 buckets in %s; the global limit allows %s", n, elapsed, minTime(n, global, win))
}

func TestRestSharedScope429IsRetriedAndNotInvalid(t *testing.T) {
	srv := newSim(t, discordtest.WithGuilds(1), discordtest.WithRouteRateLimit(5, 20*time.Millisecond))
	var rec recorder
	l := newLimiter(t, restproxy.Config{Hooks: rec.hooks()})
	c := newClient(t, srv.RESTURL(), srv.Token(), l.ConfigOpt())
	srv.SharedRateLimitNext(routeCreateMessage, 1)
	if _, err := c.CreateMessage(channels(srv, 1)[0], discord.MessageCreate{Content: "x"}); err != nil {
		t.Fatal(err)
	}
	st := srv.Stats().REST
	if st.RateLimited["shared"] != 1 || st.Requests[routeCreateMessage] != 2 {
		t.Errorf("shared 429s %d, requests %d; want 1 and 2", st.RateLimited["shared"], st.Requests[routeCreateMessage])
	}
	if st.Invalid != 0 || l.Stats().InvalidRequests != 0 {
		t.Errorf("invalid requests: simulator %d, limiter %d; want 0 (shared scope does not count)", st.Invalid, l.Stats().InvalidRequests)
	}
	if rec.scopes["shared"] != 1 {
		t.Errorf("RateLimited hook got %v, want shared once", rec.scopes)
	}
}

func TestRestServerErrorRetriedForIdempotentOnly(t *testing.T) {
	srv := newSim(t, discordtest.WithGuilds(1))
	l := newLimiter(t, restproxy.Config{RetryBackoff: time.Millisecond})
	c := newClient(t, srv.RESTURL(), srv.Token(), l.ConfigOpt())
	ch := channels(srv, 1)[0]

	srv.FailNextREST("GET /channels/{id}", http.StatusInternalServerError, 1)
	got, err := c.GetChannel(ch)
	if err != nil {
		t.Fatalf("GET after one 500: %v", err)
	}
	if got.ID() != ch {
		t.Errorf("channel %s, want %s", got.ID(), ch)
	}
	if n := srv.Stats().REST.Requests["GET /channels/{id}"]; n != 2 {
		t.Errorf("GET sent %d times, want 2 (a 500, then the retry)", n)
	}

	srv.FailNextREST(routeCreateMessage, http.StatusInternalServerError, 1)
	_, err = c.CreateMessage(ch, discord.MessageCreate{Content: "x"})
	var rerr rest.Error
	if !errors.As(err, &rerr) || rerr.Response.StatusCode != http.StatusInternalServerError {
		t.Fatalf("POST after a 500: err %v, want the 500 (POST is not idempotent)", err)
	}
	if n := srv.Stats().REST.Requests[routeCreateMessage]; n != 1 {
		t.Errorf("POST sent %d times, want 1", n)
	}
	if s := l.Stats(); s.InFlight != 0 || s.Queued != 0 {
		t.Errorf("limiter left %+v", s)
	}
}

func TestRestContextCancelledWhileQueued(t *testing.T) {
	srv := newSim(t, discordtest.WithGuilds(1), discordtest.WithRouteRateLimit(1, time.Minute))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := newLimiter(t, restproxy.Config{Hooks: restproxy.Hooks{Queued: func(string) { cancel() }}})
	c := newClient(t, srv.RESTURL(), srv.Token(), l.ConfigOpt())
	ch := channels(srv, 1)[0]
	if _, err := c.CreateMessage(ch, discord.MessageCreate{Content: "first"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := c.CreateMessage(ch, discord.MessageCreate{Content: "queued"}, rest.WithCtx(ctx))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("returned after %s; the bucket resets in a minute, it should return at once", d)
	}

	// A deadline the bucket cannot meet fails without waiting for it.
	dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer dcancel()
	_, err = c.CreateMessage(ch, discord.MessageCreate{Content: "late"}, rest.WithCtx(dctx))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want context.DeadlineExceeded", err)
	}
	if n := srv.Stats().REST.Requests[routeCreateMessage]; n != 1 {
		t.Errorf("simulator got %d requests, want 1: nothing queued may be sent", n)
	}
	if s := l.Stats(); s.InFlight != 0 || s.Queued != 0 {
		t.Errorf("limiter left %+v", s)
	}
}

func TestRestInvalidRequestGuard(t *testing.T) {
	srv := newSim(t, discordtest.WithGuilds(1))
	var logs bytes.Buffer
	var rec recorder
	l := newLimiter(t, restproxy.Config{
		InvalidRequestLimit: 10, InvalidRequestStop: 9,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)), Hooks: rec.hooks(),
	})
	const badToken = "MTIz.bad.token-that-must-not-leak"
	c := newClient(t, srv.RESTURL(), badToken, l.ConfigOpt())
	for i := range 9 {
		_, err := c.GetCurrentUser("")
		var rerr rest.Error
		if !errors.As(err, &rerr) || rerr.Response.StatusCode != http.StatusUnauthorized {
			t.Fatalf("request %d: %v, want a 401", i+1, err)
		}
	}
	_, err := c.GetCurrentUser("")
	if !errors.Is(err, restproxy.ErrInvalidRequestLimit) {
		t.Fatalf("10th request: %v, want ErrInvalidRequestLimit", err)
	}
	if !strings.Contains(err.Error(), "9 responses were 401, 403 or 429") {
		t.Errorf("error %q does not say why", err)
	}
	if n := srv.Stats().REST.Requests["GET /users/@me"]; n != 9 {
		t.Errorf("simulator got %d requests, want 9: the guard must not send", n)
	}
	if rec.invalid != 9 || l.Stats().InvalidRequests != 9 {
		t.Errorf("invalid count: hook %d, stats %d; want 9", rec.invalid, l.Stats().InvalidRequests)
	}
	if !strings.Contains(logs.String(), "invalid requests near the ban threshold") {
		t.Errorf("no warning at 80%%; logs:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), badToken) || strings.Contains(err.Error(), badToken) {
		t.Error("the token leaked into logs or errors")
	}
}

func TestRestNewValidates(t *testing.T) {
	for _, cfg := range []restproxy.Config{
		{GlobalLimit: -1},
		{GlobalWindow: -time.Second},
		{InvalidRequestLimit: 10, InvalidRequestStop: 11},
	} {
		if _, err := restproxy.New(cfg); err == nil || !strings.HasPrefix(err.Error(), "restproxy: ") {
			t.Errorf("New(%+v) = %v, want a restproxy: error", cfg, err)
		}
	}
}

func TestRestUser429FromAnotherSenderIsRetried(t *testing.T) {
	srv := newSim(t, discordtest.WithGuilds(1), discordtest.WithRouteRateLimit(2, 200*time.Millisecond))
	var rec recorder
	l := newLimiter(t, restproxy.Config{Hooks: rec.hooks()})
	c := newClient(t, srv.RESTURL(), srv.Token(), l.ConfigOpt())
	ch := channels(srv, 1)[0]
	if _, err := c.CreateMessage(ch, discord.MessageCreate{Content: "1"}); err != nil {
		t.Fatal(err)
	}
	// Something outside the limiter takes the bucket's last request.
	other := newClient(t, srv.RESTURL(), srv.Token(), rest.WithRateLimiter(rest.NewNoopRateLimiter()))
	if _, err := other.CreateMessage(ch, discord.MessageCreate{Content: "outsider"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateMessage(ch, discord.MessageCreate{Content: "2"}); err != nil {
		t.Fatalf("after a user 429: %v, want the retry to succeed", err)
	}
	if rec.scopes["user"] != 1 || srv.Stats().REST.RateLimited["user"] != 1 {
		t.Errorf("429s: hook %v, simulator %v; want one of scope user", rec.scopes, srv.Stats().REST.RateLimited)
	}
}

func TestRestGlobal429BlocksEveryBucket(t *testing.T) {
	// 20 requests at once against 5 per window: the window is long enough
	// for more than 5 of them to arrive in it on a loaded machine.
	srv := newSim(t, discordtest.WithGuilds(1), discordtest.WithGuildShape(2, 5, 0),
		discordtest.WithRouteRateLimit(100, time.Second), discordtest.WithGlobalRateLimit(5, 500*time.Millisecond))
	var rec recorder
	// The limiter believes in a higher global limit than the server's:
	// the server's global 429s must hold every bucket back.
	l := newLimiter(t, restproxy.Config{GlobalLimit: 1000, Retries: 10, Hooks: rec.hooks()})
	c := newClient(t, srv.RESTURL(), srv.Token(), l.ConfigOpt())
	errs, _ := postAll([]rest.Rest{c}, 20, channels(srv, 5))
	if len(errs) > 0 {
		t.Fatalf("%d requests failed, first: %v", len(errs), errs[0])
	}
	if rec.scopes["global"] == 0 {
		t.Fatalf("no global 429 seen (%v); the test proves nothing", rec.scopes)
	}
	if rec.scopes["user"] != 0 {
		t.Errorf("429s %v, want global ones only", rec.scopes)
	}
}
