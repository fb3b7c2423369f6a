package restproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// A ticket is one request's passage through the limiter: taken by wait,
// given back by done. Its fields are guarded by Limiter.mu.
type ticket struct {
	method   string
	route    string // template, for hooks and logs
	routeKey string // method + " " + route
	major    string // may hold a webhook token: never logged
	exempt   bool   // not counted against the global limit
	b        *bucket
	gen      uint64 // the bucket's generation when the slot was taken
	held     bool   // holds a slot of b
	busy     bool   // a Transport is retrying it
}

func newTicket(method, url string) *ticket {
	path, _, _ := strings.Cut(url, "?")
	route, major, exempt := classify(path)
	return &ticket{method: method, route: route, routeKey: method + " " + route, major: major, exempt: exempt}
}

// A waiter is a ticket in a queue: first its bucket's, then the global
// one's.
type waiter struct {
	t     *ticket
	stage int
	ready chan struct{} // capacity 1: a nudge to look again
}

const (
	stageBucket = iota
	stageGlobal
	stageDone
)

func nudge(w *waiter) {
	select {
	case w.ready <- struct{}{}:
	default:
	}
}

// bucket is the limiter's view of one Discord bucket: a route (or every
// route sharing an X-RateLimit-Bucket hash) and a major parameter.
//
// Windows are identified by X-RateLimit-Reset. When the local view of a
// window has expired, the bucket opens a new one on its own ("pending")
// and lets Limit requests go, less those still in flight from the old
// window, which may land in the new one; the first response from the new
// window then tells when it ends. Reset times are taken as the response's
// arrival plus Reset-After, which is never earlier than Discord's.
type bucket struct {
	limit     int // -1 until a response tells
	unlimited bool
	remaining int
	resetAt   time.Time
	window    float64       // X-RateLimit-Reset of the current window; 0 if none seen
	period    time.Duration // the longest Reset-After seen: about the window's length
	pending   bool          // opened locally; waiting for a response to date it
	gen       uint64        // bumped when a window opens
	inflight  int
	blocked   time.Time // no request before this: a 429's retry_after
	queue     []*waiter
}

// admit reports whether the bucket lets one more request go now, opening
// a new window when the last one has ended.
func (b *bucket) admit(now time.Time) bool {
	switch {
	case now.Before(b.blocked):
		return false
	case b.unlimited:
		return true
	case b.limit < 0:
		return b.inflight == 0 // one request finds out the limits
	}
	if !b.pending && !now.Before(b.resetAt) {
		b.pending = true
		b.gen++
		b.remaining = max(0, b.limit-b.inflight)
	}
	return b.remaining > 0
}

// wake is when the bucket may let a request go by itself; zero when only
// a response can change that.
func (b *bucket) wake(now time.Time) time.Time {
	switch {
	case now.Before(b.blocked):
		return b.blocked
	case b.unlimited || b.limit < 0 || b.pending:
		return time.Time{}
	}
	return b.resetAt
}

func (b *bucket) idle(now time.Time) bool {
	return b.inflight == 0 && len(b.queue) == 0 && !b.pending && !now.Before(b.resetAt) && !now.Before(b.blocked)
}

// globalLimit allows limit sends in any window: a sliding log of the last
// limit send times.
type globalLimit struct {
	limit   int
	window  time.Duration
	sends   []time.Time // ring; sends[next] is the oldest once full
	next    int
	blocked time.Time
	queue   []*waiter
}

func (g *globalLimit) admit(now time.Time) bool {
	if now.Before(g.blocked) {
		return false
	}
	return len(g.sends) < g.limit || !now.Before(g.sends[g.next].Add(g.window))
}

func (g *globalLimit) wake(now time.Time) time.Time {
	if now.Before(g.blocked) {
		return g.blocked
	}
	if len(g.sends) < g.limit {
		return now
	}
	return g.sends[g.next].Add(g.window)
}

func (g *globalLimit) record(now time.Time) {
	if len(g.sends) < g.limit {
		g.sends = append(g.sends, now)
		return
	}
	g.sends[g.next] = now
	g.next = (g.next + 1) % g.limit
}

// bucketKey names a bucket: a route key ("METHOD route") or, once known,
// its X-RateLimit-Bucket hash, and a major parameter.
type bucketKey struct{ route, major string }

// bucketLocked finds or makes the ticket's bucket.
func (l *Limiter) bucketLocked(t *ticket, now time.Time) *bucket {
	key := bucketKey{t.routeKey, t.major}
	if h, ok := l.routes[t.routeKey]; ok {
		rkey := key
		key.route = h
		if b := l.buckets[key]; b != nil {
			return b
		}
		// The hash was learned from another major parameter while this
		// one's first request was out: keep using its bucket.
		if b := l.buckets[rkey]; b != nil {
			l.buckets[key] = b
			return b
		}
	} else if b := l.buckets[key]; b != nil {
		return b
	}
	if len(l.buckets) >= l.pruneAt {
		for k, b := range l.buckets {
			if b.idle(now) {
				delete(l.buckets, k)
			}
		}
		l.pruneAt = max(4096, 2*len(l.buckets))
	}
	b := &bucket{limit: -1}
	l.buckets[key] = b
	return b
}

// wait queues the ticket on its bucket, then on the global limit, and
// returns once it holds a slot of both. front puts it at the head of its
// bucket's queue: a retry keeps its place.
func (l *Limiter) wait(ctx context.Context, t *ticket, front bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	start := time.Now()
	l.mu.Lock()
	if err := l.guardLocked(start); err != nil {
		l.mu.Unlock()
		return err
	}
	b := l.bucketLocked(t, start)
	t.b = b
	if len(b.queue) == 0 && b.admit(start) && (t.exempt || (len(l.global.queue) == 0 && l.global.admit(start))) {
		l.takeLocked(b, t)
		if !t.exempt {
			l.global.record(start)
		}
		l.mu.Unlock()
		if h := l.cfg.Hooks.Waited; h != nil {
			h(t.route, 0)
		}
		return nil
	}
	w := &waiter{t: t, ready: make(chan struct{}, 1)}
	if front && len(b.queue) > 0 {
		nudge(b.queue[0]) // it is no longer the head
		b.queue = slices.Insert(b.queue, 0, w)
	} else {
		b.queue = append(b.queue, w)
	}
	l.queued++
	l.pumpLocked(b, start)
	if w.stage == stageDone {
		l.mu.Unlock()
		if h := l.cfg.Hooks.Waited; h != nil {
			h(t.route, time.Since(start))
		}
		return nil
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for queued := false; w.stage != stageDone; {
		now := time.Now()
		var until time.Time
		switch {
		case w.stage == stageBucket && b.queue[0] == w:
			until = b.wake(now)
		case w.stage == stageGlobal && l.global.queue[0] == w:
			until = l.global.wake(now)
		}
		if deadline, ok := ctx.Deadline(); ok && until.After(deadline) {
			l.cancelLocked(w, now)
			l.mu.Unlock()
			return context.DeadlineExceeded
		}
		l.mu.Unlock()
		if !queued {
			queued = true
			if h := l.cfg.Hooks.Queued; h != nil {
				h(t.route)
			}
		}
		var tick <-chan time.Time
		if !until.IsZero() {
			if timer == nil {
				timer = time.NewTimer(until.Sub(now))
			} else {
				timer.Reset(until.Sub(now))
			}
			tick = timer.C
		}
		select {
		case <-ctx.Done():
			l.mu.Lock()
			l.cancelLocked(w, time.Now())
			l.mu.Unlock()
			return ctx.Err()
		case <-w.ready:
		case <-tick:
		}
		l.mu.Lock()
		if w.stage != stageDone {
			l.pumpLocked(b, time.Now())
		}
	}
	l.mu.Unlock()
	if h := l.cfg.Hooks.Waited; h != nil {
		h(t.route, time.Since(start))
	}
	return nil
}

// pumpLocked lets through as many waiters of b, then of the global queue,
// as the limits allow, and nudges each queue's new head so that it sets
// its timer.
func (l *Limiter) pumpLocked(b *bucket, now time.Time) {
	moved := false
	for len(b.queue) > 0 && b.admit(now) {
		w := b.queue[0]
		b.queue[0] = nil
		b.queue = b.queue[1:]
		moved = true
		l.takeLocked(b, w.t)
		if w.t.exempt {
			l.finishLocked(w)
			continue
		}
		w.stage = stageGlobal
		l.global.queue = append(l.global.queue, w)
	}
	if len(b.queue) == 0 {
		b.queue = nil // let the backing array go
	} else if moved {
		nudge(b.queue[0])
	}
	l.pumpGlobalLocked(now)
}

// takeLocked gives the ticket a slot of b; admit must have said yes.
func (l *Limiter) takeLocked(b *bucket, t *ticket) {
	if !b.unlimited && b.limit >= 0 {
		b.remaining--
	}
	b.inflight++
	l.inflight++
	t.gen, t.held = b.gen, true
}

func (l *Limiter) pumpGlobalLocked(now time.Time) {
	moved := false
	g := &l.global
	for len(g.queue) > 0 && g.admit(now) {
		w := g.queue[0]
		g.queue[0] = nil
		g.queue = g.queue[1:]
		moved = true
		g.record(now)
		l.finishLocked(w)
	}
	if len(g.queue) == 0 {
		g.queue = nil
	} else if moved {
		nudge(g.queue[0])
	}
}

func (l *Limiter) finishLocked(w *waiter) {
	w.stage = stageDone
	l.queued--
	nudge(w)
}

// cancelLocked takes a waiter out of the limiter, giving back the bucket
// slot it may hold: its request is not sent.
func (l *Limiter) cancelLocked(w *waiter, now time.Time) {
	b := w.t.b
	switch w.stage {
	case stageBucket:
		l.queued--
		i := slices.Index(b.queue, w)
		b.queue = slices.Delete(b.queue, i, i+1)
		if i == 0 && len(b.queue) > 0 {
			nudge(b.queue[0])
		}
	case stageGlobal:
		l.queued--
		g := &l.global
		i := slices.Index(g.queue, w)
		g.queue = slices.Delete(g.queue, i, i+1)
		if i == 0 && len(g.queue) > 0 {
			nudge(g.queue[0])
		}
		l.unsentLocked(w.t)
	case stageDone:
		l.unsentLocked(w.t)
	}
	w.stage = stageDone
	l.pumpLocked(b, now)
}

// unsentLocked gives back the slot of a ticket whose request was not sent.
func (l *Limiter) unsentLocked(t *ticket) {
	if !t.held {
		return
	}
	b := t.b
	t.held = false
	b.inflight--
	l.inflight--
	if t.gen == b.gen && b.limit > 0 && !b.unlimited {
		b.remaining = min(b.remaining+1, b.limit)
	}
	if len(b.queue) > 0 {
		nudge(b.queue[0])
	}
}

// Discord's rate-limit headers in net/http's canonical form: looking up
// any other spelling allocates its canonical copy first.
const (
	hdrBucket     = "X-Ratelimit-Bucket"
	hdrLimit      = "X-Ratelimit-Limit"
	hdrRemaining  = "X-Ratelimit-Remaining"
	hdrReset      = "X-Ratelimit-Reset"
	hdrResetAfter = "X-Ratelimit-Reset-After"
	hdrScope      = "X-Ratelimit-Scope"
	hdrGlobal     = "X-Ratelimit-Global"
)

// rateLimit is what a 429 says.
type rateLimit struct {
	scope string // user, global, shared or cloudflare
	retry time.Duration
}

// readRateLimit reads a 429's scope and retry_after, from the JSON body
// when there is one (it has decimals; Retry-After has whole seconds). The
// body is read and replaced, so the caller still sees it.
func readRateLimit(rs *http.Response) rateLimit {
	h := rs.Header
	rl := rateLimit{scope: h.Get(hdrScope)}
	var body struct {
		RetryAfter *float64 `json:"retry_after"`
		Global     bool     `json:"global"`
	}
	if rs.Body != nil && rs.Body != http.NoBody {
		data, _ := io.ReadAll(io.LimitReader(rs.Body, 64<<10))
		_ = rs.Body.Close()
		rs.Body = io.NopCloser(bytes.NewReader(data))
		_ = json.Unmarshal(data, &body)
	}
	secs := -1.0
	if body.RetryAfter != nil {
		secs = *body.RetryAfter
	} else if v, err := strconv.ParseFloat(h.Get("Retry-After"), 64); err == nil {
		secs = v
	} else if v, err := strconv.ParseFloat(h.Get(hdrResetAfter), 64); err == nil {
		secs = v
	}
	if secs < 0 {
		secs = 1
	}
	rl.retry = time.Duration(secs * float64(time.Second))
	switch {
	case h.Get("Via") == "":
		rl.scope = "cloudflare"
	case body.Global || rl.scope == "global" || (h.Get(hdrGlobal) != "" && h.Get(hdrGlobal) != "false"):
		rl.scope = "global"
	case rl.scope != "shared":
		rl.scope = "user"
	}
	return rl
}

// done gives back the ticket's slot once its request was answered (rs)
// or failed (rs nil; sent says whether it may have reached Discord), and
// learns from the answer. For a 429 it returns the scope.
func (l *Limiter) done(t *ticket, rs *http.Response, sent bool) (scope string) {
	now := time.Now()
	status := 0
	var rl rateLimit
	if rs != nil {
		status = rs.StatusCode
		if status == http.StatusTooManyRequests {
			rl = readRateLimit(rs)
		}
	}
	invalid := status == http.StatusUnauthorized || status == http.StatusForbidden ||
		(status == http.StatusTooManyRequests && rl.scope != "shared")
	n, warn := 0, false
	l.mu.Lock()
	if t.held {
		b := t.b
		if !sent {
			l.unsentLocked(t)
		} else {
			t.held = false
			b.inflight--
			l.inflight--
			if rs != nil {
				l.observeLocked(t, b, rs, rl, now)
			}
			if b.inflight == 0 && b.pending && b.remaining == 0 && b.limit > 0 {
				// Every request of the new window came back without
				// dating it: assume it started just now.
				b.pending = false
				b.resetAt = now.Add(b.period)
			}
			if len(b.queue) > 0 {
				nudge(b.queue[0])
			}
		}
		l.pumpLocked(b, now)
	}
	if invalid {
		n = l.invalid.add(now)
		warnAt := l.cfg.InvalidRequestLimit * 8 / 10
		if n >= warnAt && !l.warned {
			l.warned, warn = true, true
		} else if n < warnAt {
			l.warned = false
		}
	}
	l.mu.Unlock()

	if h := l.cfg.Hooks.Response; h != nil {
		h(t.route, t.method, status)
	}
	if status == http.StatusTooManyRequests {
		if h := l.cfg.Hooks.RateLimited; h != nil {
			h(t.route, rl.scope)
		}
		level := slog.LevelWarn
		if rl.scope == "shared" {
			level = slog.LevelInfo
		}
		l.log.Log(context.Background(), level, "rate limited", "route", t.route, "method", t.method, "scope", rl.scope, "retry_after", rl.retry)
	}
	if invalid {
		if h := l.cfg.Hooks.InvalidRequests; h != nil {
			h(n)
		}
	}
	if warn {
		l.log.Warn("invalid requests near the ban threshold", "count", n, "window", l.cfg.InvalidRequestWindow,
			"ban_at", l.cfg.InvalidRequestLimit, "stop_at", l.cfg.InvalidRequestStop)
	}
	return rl.scope
}

// observeLocked updates b from a response's headers.
func (l *Limiter) observeLocked(t *ticket, b *bucket, rs *http.Response, rl rateLimit, now time.Time) {
	h := rs.Header
	if hash := h.Get(hdrBucket); hash != "" && l.routes[t.routeKey] != hash {
		if len(l.routes) >= 4096 {
			clear(l.routes) // unusual paths; the hashes are learned again
		}
		l.routes[t.routeKey] = hash
		if key := (bucketKey{hash, t.major}); l.buckets[key] == nil {
			l.buckets[key] = b
		}
	}
	if rs.StatusCode == http.StatusTooManyRequests {
		until := now.Add(rl.retry)
		switch rl.scope {
		case "global", "cloudflare":
			if until.After(l.global.blocked) {
				l.global.blocked = until
			}
			if len(l.global.queue) > 0 {
				nudge(l.global.queue[0])
			}
		case "user":
			b.remaining = 0
			fallthrough
		default: // shared
			if until.After(b.blocked) {
				b.blocked = until
			}
		}
		return
	}
	if h.Get(hdrBucket) == "" {
		if rs.StatusCode < 400 && b.limit < 0 {
			b.unlimited = true // a route without limits
		}
		return
	}
	limit, err1 := strconv.Atoi(h.Get(hdrLimit))
	remaining, err2 := strconv.Atoi(h.Get(hdrRemaining))
	after, err3 := strconv.ParseFloat(h.Get(hdrResetAfter), 64)
	if err1 != nil || err2 != nil || err3 != nil || limit <= 0 {
		return
	}
	b.unlimited = false
	b.limit = limit
	resetAfter := time.Duration(after * float64(time.Second))
	b.period = max(b.period, resetAfter)
	reset, err := strconv.ParseFloat(h.Get(hdrReset), 64)
	if err != nil {
		reset = float64(now.UnixNano())/1e9 + after
	}
	tol := max(b.period.Seconds()/2, 0.001)
	switch {
	case b.window == 0 || reset > b.window+tol: // a newer window
		if b.pending {
			b.remaining = min(b.remaining, remaining)
		} else {
			// Unexpected: requests still in flight may land in it.
			b.remaining = max(0, remaining-b.inflight)
			b.gen++
		}
		b.window, b.resetAt, b.pending = reset, now.Add(resetAfter), false
	case reset >= b.window-tol: // the current window
		if b.pending {
			// A request of the old window landed in it: its slot in
			// the new one is free again.
			if t.gen < b.gen {
				b.remaining = min(b.remaining+1, b.limit)
			}
			return
		}
		b.remaining = min(b.remaining, remaining)
		if r := now.Add(resetAfter); r.Before(b.resetAt) {
			b.resetAt = r // every answer's reset is late; the earliest is closest
		}
	}
}
