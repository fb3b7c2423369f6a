package restproxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/disgoorg/disgo/rest"

	"github.com/gofleet/fleet/internal/clock"
)

// answer is a response to a request let through: 200 with a bucket's
// headers, or a 429.
type answer struct {
	req       string
	limit     int           // 200: X-RateLimit-Limit
	remaining int           // 200: X-RateLimit-Remaining
	after     time.Duration // 200: X-RateLimit-Reset-After; 429: retry_after
	scope     string        // 429: X-RateLimit-Scope (user, global, shared)
	tooMany   bool          // a 429
}

// limiterStep is one row of a Limiter step table: the clock moves to at,
// the answers arrive, the waits of cancel are given up, then the requests
// of send ask for a slot, in that order. A request's first letter is its
// channel, hence its bucket. By the end of the step exactly the requests
// of pass have been let through, and those of gaveUp have returned an
// error.
type limiterStep struct {
	at           time.Duration // since t0
	answer       []answer
	cancel, send []string
	pass, gaveUp []string
}

func runLimiterSteps(t *testing.T, l *Limiter, steps []limiterStep) {
	t.Helper()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fake := clock.NewFake(t0)
	l.clock = fake
	type result struct {
		req string
		err error
	}
	results := make(chan result, 64)
	cancels := map[string]context.CancelFunc{}
	defer func() {
		for _, cancel := range cancels {
			cancel()
		}
		synctest.Wait()
	}()
	endpoint := func(req string) *rest.CompiledEndpoint {
		return rest.CreateMessage.Compile(nil, 1000+int(req[0]))
	}
	for i, s := range steps {
		fake.Set(t0.Add(s.at))
		now := fake.Now()
		for _, a := range s.answer {
			if err := l.UnlockBucket(endpoint(a.req), a.response(now)); err != nil {
				t.Fatal(err)
			}
		}
		for _, req := range s.cancel {
			cancels[req]()
		}
		for _, req := range s.send {
			ctx, cancel := context.WithCancel(context.Background())
			cancels[req] = cancel
			go func() { results <- result{req, l.WaitBucket(ctx, endpoint(req))} }()
			synctest.Wait() // queued in the order listed
		}
		synctest.Wait()
		var pass, gaveUp []string
		for len(results) > 0 {
			r := <-results
			if r.err == nil {
				pass = append(pass, r.req)
			} else {
				gaveUp = append(gaveUp, r.req)
			}
		}
		slices.Sort(pass)
		slices.Sort(gaveUp)
		if !slices.Equal(pass, s.pass) || !slices.Equal(gaveUp, s.gaveUp) {
			t.Fatalf("step %d (at %s): passed %v and gave up %v; want %v and %v", i, s.at, pass, gaveUp, s.pass, s.gaveUp)
		}
	}
}

func (a answer) response(now time.Time) *http.Response {
	h := http.Header{}
	h.Set("Via", "1.1 google")
	if a.tooMany {
		h.Set("X-RateLimit-Scope", a.scope)
		body := fmt.Sprintf(`{"message":"You are being rate limited.","retry_after":%g,"global":%t}`, a.after.Seconds(), a.scope == "global")
		return &http.Response{StatusCode: http.StatusTooManyRequests, Header: h, Body: io.NopCloser(strings.NewReader(body))}
	}
	reset := now.Add(a.after)
	h.Set("X-RateLimit-Bucket", "create-message") // one hash for the route; the channel tells the buckets apart
	h.Set("X-RateLimit-Limit", strconv.Itoa(a.limit))
	h.Set("X-RateLimit-Remaining", strconv.Itoa(a.remaining))
	h.Set("X-RateLimit-Reset-After", strconv.FormatFloat(a.after.Seconds(), 'f', 3, 64))
	h.Set("X-RateLimit-Reset", strconv.FormatFloat(float64(reset.UnixMilli())/1000, 'f', 3, 64))
	return &http.Response{StatusCode: http.StatusOK, Header: h, Body: http.NoBody}
}

func TestLimiterSteps(t *testing.T) {
	const ms = time.Millisecond
	ok := func(req string, limit, remaining int, after time.Duration) answer {
		return answer{req: req, limit: limit, remaining: remaining, after: after}
	}
	synctest.Test(t, func(t *testing.T) {
		// 3 requests per second over every route; buckets per channel.
		l, err := New(Config{GlobalLimit: 3, GlobalWindow: time.Second, GlobalMargin: -1})
		if err != nil {
			t.Fatal(err)
		}
		runLimiterSteps(t, l, []limiterStep{
			{at: 0, send: []string{"a1", "a2"}, pass: []string{"a1"}},                                             // one request finds out the bucket's limits
			{at: 100 * ms, answer: []answer{ok("a1", 2, 1, 2000*ms)}, pass: []string{"a2"}},                       // 2 per window, 1 left
			{at: 100 * ms, send: []string{"a3"}},                                                                  // the bucket is empty until 2.1 s
			{at: 200 * ms, answer: []answer{ok("a2", 2, 0, 1900*ms)}, send: []string{"b1"}, pass: []string{"b1"}}, // the third send of the second
			{at: 300 * ms, send: []string{"c1"}},                                                                  // the global limit: 3 in [0, 1 s)
			{at: 999 * ms},
			{at: 1000 * ms, pass: []string{"c1"}},
			{at: 1000 * ms, answer: []answer{ok("b1", 5, 4, time.Second), ok("c1", 5, 4, time.Second)}, send: []string{"b2"}}, // sends at 0.1, 0.2, 1.0
			{at: 1099 * ms},
			{at: 1100 * ms, pass: []string{"b2"}},
			{at: 1100 * ms, send: []string{"c2", "b3"}},                     // the global limit, until 1.2 s
			{at: 1150 * ms, cancel: []string{"c2"}, gaveUp: []string{"c2"}}, // c2 gives its place back
			{at: 1200 * ms, pass: []string{"b3"}},
			{at: 2099 * ms},
			{at: 2100 * ms, pass: []string{"a3"}}, // a's window has reset
			{at: 2200 * ms, answer: []answer{{req: "a3", tooMany: true, scope: "user", after: 3 * time.Second}}, send: []string{"a4"}}, // a 429 blocks a's bucket for its retry_after
			{at: 5199 * ms},
			{at: 5200 * ms, pass: []string{"a4"}},
			{at: 5200 * ms, answer: []answer{{req: "b2", tooMany: true, scope: "global", after: 500 * ms}}, send: []string{"c3", "b4"}}, // a global 429 blocks every bucket
			{at: 5699 * ms},
			{at: 5700 * ms, pass: []string{"b4", "c3"}},
		})
	})
}
