package restproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/disgoorg/disgo/rest"

	"github.com/gofleet/fleet/internal/clock"
)

// ErrInvalidRequestLimit is returned, wrapped with the count, instead of
// sending a request while the invalid-request count is at the stop
// threshold (Config.InvalidRequestStop).
var ErrInvalidRequestLimit = errors.New("restproxy: too many invalid requests")

// Config configures a Limiter. Its zero value means Discord's defaults.
type Config struct {
	// GlobalLimit is how many requests the bot may send per GlobalWindow,
	// over all routes (Discord: 50 per second; Discord raises it for
	// large bots on request). Interaction routes do not count.
	GlobalLimit int
	// GlobalWindow is the global limit's window (default 1 s).
	GlobalWindow time.Duration
	// GlobalMargin lengthens GlobalWindow. Discord sends no header for the
	// global limit, so the limiter cannot see when Discord's window
	// starts; the margin absorbs the jitter between a send and its
	// arrival. Default GlobalWindow/20; negative means none.
	GlobalMargin time.Duration
	// Retries is how many times a request is retried after a 429, and
	// after a 5xx or a transport error when its method is idempotent
	// (GET, HEAD, OPTIONS, PUT, DELETE). Default 3; negative means never.
	Retries int
	// RetryBackoff is the wait before the first retry after a 5xx; it
	// doubles with each retry (default 250 ms). 429s wait for their
	// retry_after instead.
	RetryBackoff time.Duration
	// InvalidRequestLimit is Discord's ban threshold: 401, 403 and 429
	// responses (429s of scope shared excepted) per InvalidRequestWindow
	// (default 10,000). The limiter warns at 80 % of it.
	InvalidRequestLimit int
	// InvalidRequestWindow is the invalid-request window (default 10 min).
	InvalidRequestWindow time.Duration
	// InvalidRequestStop is the count at which requests fail fast with
	// ErrInvalidRequestLimit instead of risking a ban (default 95 % of
	// InvalidRequestLimit).
	InvalidRequestStop int
	// Logger gets warnings: 429s, and the invalid-request count nearing
	// the limit. Default: no logs.
	Logger *slog.Logger
	// Hooks observe the limiter, for metrics.
	Hooks Hooks
}

// Hooks are called on the limiter's events; any may be nil. They run in
// the requesting goroutine, outside the limiter's lock, and should be
// quick. Routes are templates with placeholders,
// "/channels/{channel.id}/messages": they never carry IDs or tokens.
type Hooks struct {
	// Response is called for each response: its route, method and
	// status, 0 when the request got no response.
	Response func(route, method string, status int)
	// RateLimited is called for each 429, with its scope: user, global,
	// shared, or cloudflare for a 429 without Discord's Via header.
	RateLimited func(route, scope string)
	// Queued is called when a request has to wait for its bucket or the
	// global limit.
	Queued func(route string)
	// Waited is called when a request leaves the limiter to be sent,
	// with the time it waited there.
	Waited func(route string, d time.Duration)
	// InvalidRequests is called with the window's count each time an
	// invalid response is counted.
	InvalidRequests func(n int)
}

// Stats is a snapshot of a Limiter's state.
type Stats struct {
	Buckets         int // buckets tracked
	Queued          int // requests waiting for their bucket or the global limit
	InFlight        int // requests let through and not answered yet
	InvalidRequests int // 401, 403 and non-shared 429 responses in the window
}

// Limiter is a REST rate limiter shared by any number of disgo clients,
// and by the proxy Server. It implements disgo's rest.RateLimiter. It is
// safe for concurrent use and starts no goroutine: buckets and windows
// advance lazily, and only a waiting request holds a timer.
type Limiter struct {
	cfg   Config // defaults applied
	log   *slog.Logger
	clock clock.Clock // the real clock; tests step a fake one

	mu       sync.Mutex        // guards every field below; the only lock
	routes   map[string]string // "METHOD route" -> X-RateLimit-Bucket
	buckets  map[bucketKey]*bucket
	pruneAt  int
	global   globalLimit
	pending  map[requestKey][]*ticket // disgo requests between WaitBucket and UnlockBucket
	front    map[requestKey]int       // disgo retries after a 429, served first
	queued   int
	inflight int
	invalid  slidingCount
	warned   bool
}

var _ rest.RateLimiter = (*Limiter)(nil)

// New returns a Limiter. It fails on a negative limit or window, or a
// stop threshold above Discord's limit, and says which field to change.
func New(cfg Config) (*Limiter, error) {
	switch {
	case cfg.GlobalLimit < 0:
		return nil, fmt.Errorf("restproxy: GlobalLimit (%d) < 0: use 0 for Discord's 50", cfg.GlobalLimit)
	case cfg.GlobalWindow < 0:
		return nil, fmt.Errorf("restproxy: GlobalWindow (%s) < 0: use 0 for 1s", cfg.GlobalWindow)
	case cfg.RetryBackoff < 0:
		return nil, fmt.Errorf("restproxy: RetryBackoff (%s) < 0: use 0 for 250ms", cfg.RetryBackoff)
	case cfg.InvalidRequestLimit < 0:
		return nil, fmt.Errorf("restproxy: InvalidRequestLimit (%d) < 0: use 0 for Discord's 10000", cfg.InvalidRequestLimit)
	case cfg.InvalidRequestWindow < 0:
		return nil, fmt.Errorf("restproxy: InvalidRequestWindow (%s) < 0: use 0 for 10m", cfg.InvalidRequestWindow)
	case cfg.InvalidRequestStop < 0:
		return nil, fmt.Errorf("restproxy: InvalidRequestStop (%d) < 0: use 0 for 95%% of InvalidRequestLimit", cfg.InvalidRequestStop)
	}
	if cfg.GlobalLimit == 0 {
		cfg.GlobalLimit = 50
	}
	if cfg.GlobalWindow == 0 {
		cfg.GlobalWindow = time.Second
	}
	switch {
	case cfg.GlobalMargin == 0:
		cfg.GlobalMargin = cfg.GlobalWindow / 20
	case cfg.GlobalMargin < 0:
		cfg.GlobalMargin = 0
	}
	switch {
	case cfg.Retries == 0:
		cfg.Retries = 3
	case cfg.Retries < 0:
		cfg.Retries = 0
	}
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff = 250 * time.Millisecond
	}
	if cfg.InvalidRequestLimit == 0 {
		cfg.InvalidRequestLimit = 10_000
	}
	if cfg.InvalidRequestWindow == 0 {
		cfg.InvalidRequestWindow = 10 * time.Minute
	}
	if cfg.InvalidRequestStop == 0 {
		cfg.InvalidRequestStop = max(1, cfg.InvalidRequestLimit*95/100)
	}
	if cfg.InvalidRequestStop > cfg.InvalidRequestLimit {
		return nil, fmt.Errorf("restproxy: InvalidRequestStop (%d) > InvalidRequestLimit (%d): lower InvalidRequestStop", cfg.InvalidRequestStop, cfg.InvalidRequestLimit)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Limiter{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "restproxy"),
		clock:   clock.Real{},
		routes:  map[string]string{},
		buckets: map[bucketKey]*bucket{},
		pruneAt: 4096,
		global:  globalLimit{limit: cfg.GlobalLimit, window: cfg.GlobalWindow + cfg.GlobalMargin},
		pending: map[requestKey][]*ticket{},
		front:   map[requestKey]int{},
		invalid: newSlidingCount(cfg.InvalidRequestWindow),
	}, nil
}

// ConfigOpt returns the disgo option that makes a REST client use l: as
// its rate limiter, and through its HTTP transport (see Transport) to
// retry idempotent requests after a 5xx. Give it after any
// rest.WithHTTPClient, whose client it copies and wraps:
//
//	client := rest.NewClient(token, rest.WithURL(url), l.ConfigOpt())
//
// The client's Timeout (disgo's default: 20 s) moves into the transport,
// which ends it when the response body has been read: disgo reads bodies
// but never closes them, and with http.Client.Timeout every request would
// keep a goroutine and a timer alive for the whole timeout.
func (l *Limiter) ConfigOpt() rest.ConfigOpt {
	return func(c *rest.Config) {
		c.RateLimiter = l
		hc := &http.Client{Timeout: 20 * time.Second}
		if c.HTTPClient != nil {
			cp := *c.HTTPClient
			hc = &cp
		}
		hc.Transport = l.transport(hc.Transport, hc.Timeout)
		hc.Timeout = 0
		c.HTTPClient = hc
	}
}

// Stats returns a snapshot of the limiter's state.
func (l *Limiter) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := make(map[*bucket]struct{}, len(l.buckets))
	for _, b := range l.buckets {
		seen[b] = struct{}{}
	}
	return Stats{
		Buckets:         len(seen),
		Queued:          l.queued,
		InFlight:        l.inflight,
		InvalidRequests: l.invalid.count(l.clock.Now()),
	}
}

// Config returns the limiter's configuration with the defaults New
// applied: the limits it enforces.
func (l *Limiter) Config() Config { return l.cfg }

// MaxRetries is the number of tries disgo makes after 429s: Retries plus
// the first.
func (l *Limiter) MaxRetries() int { return l.cfg.Retries + 1 }

// Close does nothing: the limiter has no goroutine to stop, and every
// disgo client sharing it calls Close when it closes, so it must outlive
// them. A waiting request is bounded by its own context.
func (l *Limiter) Close(context.Context) {}

// Reset does nothing. disgo's rest.NewClient calls it for each new client;
// the buckets describe Discord's state, which a new client does not
// change, and other clients may be using them.
func (l *Limiter) Reset() {}

// WaitBucket waits until the endpoint's bucket and the global limit let a
// request through, in arrival order per bucket, and takes a slot. It
// returns ctx's error if ctx ends first, or at once with
// context.DeadlineExceeded if the bucket cannot open before ctx's
// deadline; the slot is not taken then. It returns an error wrapping
// ErrInvalidRequestLimit while the invalid-request count is at the stop
// threshold.
func (l *Limiter) WaitBucket(ctx context.Context, ep *rest.CompiledEndpoint) error {
	key := requestKey{ep.Endpoint.Method, ep.URL}
	t := newTicket(ep.Endpoint.Method, ep.URL)
	l.mu.Lock()
	front := l.front[key] > 0
	if front {
		if l.front[key]--; l.front[key] == 0 {
			delete(l.front, key)
		}
	}
	l.mu.Unlock()
	if err := l.wait(ctx, t, front); err != nil {
		return err
	}
	l.mu.Lock()
	l.pending[key] = append(l.pending[key], t)
	l.mu.Unlock()
	return nil
}

// UnlockBucket gives back the slot WaitBucket took, and learns the
// bucket's limit, remaining requests and reset from Discord's headers. A
// 429 blocks the bucket (scope user or shared) or every request (scope
// global, or a Cloudflare ban) for its retry_after. rs is nil when the
// request got no response.
func (l *Limiter) UnlockBucket(ep *rest.CompiledEndpoint, rs *http.Response) error {
	key := requestKey{ep.Endpoint.Method, ep.URL}
	l.mu.Lock()
	t := l.popPendingLocked(key)
	if t != nil && rs != nil && rs.StatusCode == http.StatusTooManyRequests {
		if len(l.front) >= 1024 {
			clear(l.front)
		}
		l.front[key]++ // disgo retries it next; it keeps its place
	}
	l.mu.Unlock()
	if t != nil {
		l.done(t, rs, true)
	}
	return nil
}

// requestKey names a disgo request: its method and URL below /api/vN.
type requestKey struct{ method, url string }

// popPendingLocked removes and returns a ticket of key that no Transport
// is retrying. Tickets of one key are interchangeable: they share a
// bucket.
func (l *Limiter) popPendingLocked(key requestKey) *ticket {
	ts := l.pending[key]
	for i, t := range ts {
		if t.busy {
			continue
		}
		ts = append(ts[:i], ts[i+1:]...)
		if len(ts) == 0 {
			delete(l.pending, key)
		} else {
			l.pending[key] = ts
		}
		return t
	}
	return nil
}

// claimPending marks a held ticket of key as being retried by a
// Transport, or returns nil.
func (l *Limiter) claimPending(key requestKey) *ticket {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, t := range l.pending[key] {
		if !t.busy && t.held {
			t.busy = true
			return t
		}
	}
	return nil
}

func (l *Limiter) unclaim(t *ticket) {
	l.mu.Lock()
	t.busy = false
	l.mu.Unlock()
}

// guardLocked fails while the invalid-request count is at the stop
// threshold.
func (l *Limiter) guardLocked(now time.Time) error {
	n := l.invalid.count(now)
	if n < l.cfg.InvalidRequestStop {
		return nil
	}
	return fmt.Errorf("%w: %d responses were 401, 403 or 429 in the last %s (stop at %d, Discord bans at %d); requests fail until the count falls",
		ErrInvalidRequestLimit, n, l.cfg.InvalidRequestWindow, l.cfg.InvalidRequestStop, l.cfg.InvalidRequestLimit)
}

// idempotent reports whether a request may be sent twice.
func idempotent(method string) bool {
	switch strings.ToUpper(method) {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}
