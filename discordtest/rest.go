package discordtest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// RESTStats are the REST counters.
type RESTStats struct {
	// Requests counts requests by route, "POST /channels/{id}/messages",
	// rate limited and refused ones included.
	Requests map[string]int
	// RateLimited counts 429s by scope: user, global, shared, and
	// cloudflare for the ban answered once the invalid-request limit is
	// passed.
	RateLimited map[string]int
	// Invalid is the number of 401, 403 and non-shared 429 responses in
	// the current invalid-request window. It is rate-limit state, so
	// ResetCounters leaves it alone.
	Invalid int
	// Statuses counts responses by HTTP status.
	Statuses map[int]int
	// BannedUntil is when the invalid-request ban ends; zero if there is
	// none.
	BannedUntil time.Time
}

// REST routes, as counted in RESTStats.Requests and named in FailNextREST
// and SharedRateLimitNext.
const (
	routeGateway       = "GET /gateway"
	routeGatewayBot    = "GET /gateway/bot"
	routeMe            = "GET /users/@me"
	routeApplication   = "GET /applications/@me"
	routeUser          = "GET /users/{id}"
	routeGuild         = "GET /guilds/{id}"
	routeMember        = "GET /guilds/{id}/members/{user}"
	routeChannel       = "GET /channels/{id}"
	routeCreateMessage = "POST /channels/{id}/messages"
)

// restRoutes gives every route its bucket hash: an opaque ID per route,
// the same for every major parameter, as Discord's X-RateLimit-Bucket.
var restRoutes = func() map[string]string {
	m := map[string]string{}
	for _, r := range restTable {
		sum := sha256.Sum256([]byte("discordtest " + r.route))
		m[r.route] = hex.EncodeToString(sum[:16])
	}
	return m
}()

// restState holds the REST API's state. It starts no goroutine: windows
// reset lazily when a request finds them expired.
type restState struct {
	cfg     *config
	latency atomic.Int64 // added before each request is judged, in ns

	mu          sync.Mutex // guards every field below
	closed      bool
	handlers    sync.WaitGroup // REST handlers running; Add only under mu while !closed
	requests    map[string]int
	limited     map[string]int
	statuses    map[int]int
	buckets     map[string]*restWindow // by route and major parameter
	pruneAt     int
	global      restWindow
	invalid     []time.Time // times of invalid responses, oldest first
	bannedUntil time.Time
	faults      map[string][]restFault // by route; "" matches any route
}

// restWindow is a fixed window that starts with its first request, as
// Discord's buckets do.
type restWindow struct {
	count   int
	resetAt time.Time
}

// restFault answers the next n requests of a route with a status.
type restFault struct {
	status int
	shared bool // a 429 of scope shared
	n      int
}

func newRESTState(cfg *config) *restState {
	r := &restState{
		cfg:      cfg,
		requests: map[string]int{},
		limited:  map[string]int{},
		statuses: map[int]int{},
		buckets:  map[string]*restWindow{},
		pruneAt:  1024,
		faults:   map[string][]restFault{},
	}
	return r
}

// close waits for the REST handlers still running; the HTTP server is
// closed already, so none can start.
func (r *restState) close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.handlers.Wait()
}

func (r *restState) reset() {
	r.mu.Lock()
	r.requests = map[string]int{}
	r.limited = map[string]int{}
	r.statuses = map[int]int{}
	r.mu.Unlock()
}

func (r *restState) stats() RESTStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := RESTStats{
		Requests:    make(map[string]int, len(r.requests)),
		RateLimited: make(map[string]int, len(r.limited)),
		Statuses:    make(map[int]int, len(r.statuses)),
		Invalid:     r.invalidLocked(time.Now()),
	}
	if time.Now().Before(r.bannedUntil) {
		st.BannedUntil = r.bannedUntil
	}
	for k, v := range r.requests {
		st.Requests[k] = v
	}
	for k, v := range r.limited {
		st.RateLimited[k] = v
	}
	for k, v := range r.statuses {
		st.Statuses[k] = v
	}
	return st
}

// invalidLocked drops invalid responses older than the window and returns
// how many are left.
func (r *restState) invalidLocked(now time.Time) int {
	cut := now.Add(-r.cfg.invalidWindow)
	i := 0
	for i < len(r.invalid) && !r.invalid[i].After(cut) {
		i++
	}
	if i > 0 {
		r.invalid = append(r.invalid[:0], r.invalid[i:]...)
	}
	return len(r.invalid)
}

// FailNextREST answers the next n requests of a route with status (400 to
// 599) and Discord's JSON error body, after they pass the rate limits and
// count against them, as a failure inside Discord would; 429 gives a
// rate limit of scope user. A route is named as in RESTStats.Requests
// ("GET /channels/{id}"); "" matches every route. 401, 403 and 429
// answers count as invalid requests. A route's own faults come before
// those queued for every route, each in the order queued. It panics on
// an unknown route or a status out of range.
func (s *Server) FailNextREST(route string, status, n int) {
	if status < 400 || status > 599 {
		panic(fmt.Sprintf("discordtest: FailNextREST status %d is not 400-599", status))
	}
	s.addRESTFault(route, restFault{status: status, n: n})
}

// SharedRateLimitNext answers the next n requests of a route with a 429 of
// scope shared (a limit on the resource, not on the bot): it carries the
// bucket's headers, and does not count as an invalid request. Routes are
// named as in FailNextREST.
func (s *Server) SharedRateLimitNext(route string, n int) {
	s.addRESTFault(route, restFault{status: http.StatusTooManyRequests, shared: true, n: n})
}

// ClearRESTFaults drops every fault FailNextREST and SharedRateLimitNext
// queued and has not answered yet.
func (s *Server) ClearRESTFaults() {
	s.rest.mu.Lock()
	s.rest.faults = map[string][]restFault{}
	s.rest.mu.Unlock()
}

func (s *Server) addRESTFault(route string, f restFault) {
	if _, ok := restRoutes[route]; !ok && route != "" {
		panic(fmt.Sprintf("discordtest: unknown REST route %q", route))
	}
	if f.n <= 0 {
		return
	}
	s.rest.mu.Lock()
	s.rest.faults[route] = append(s.rest.faults[route], f)
	s.rest.mu.Unlock()
}

// SetRESTLatency delays every REST request by d before it is judged and
// answered (0 removes the delay).
func (s *Server) SetRESTLatency(d time.Duration) { s.rest.latency.Store(int64(d)) }

// restCall is one parsed request.
type restCall struct {
	route string
	major string // "channel:<id>", "guild:<id>", "webhook:<id>/<token>", "interaction:<id>" or ""
	ids   [3]uint64
	strs  [2]string // {token} and {emoji} parameters, in order
	auth  bool      // needs the bot token
	// global: counts against the global limit (interaction callbacks and
	// webhooks with a token do not).
	global bool
}

// restRoute is one row of restTable. In pattern, {id} is a snowflake,
// {token} and {emoji} any segment.
type restRoute struct {
	method, pattern, route string
	segs                   []string // pattern split at /
	public                 bool     // no bot token: authorised by a token in the path
}

// restTable lists every route the simulator serves.
var restTable = func() []restRoute {
	var t []restRoute
	add := func(method, pattern string, public bool) {
		t = append(t, restRoute{method, pattern, method + " /" + pattern, strings.Split(pattern, "/"), public})
	}
	add("GET", "gateway", true)
	add("GET", "gateway/bot", false)
	add("GET", "users/@me", false)
	add("PATCH", "users/@me", false)
	add("GET", "users/@me/guilds", false)
	add("DELETE", "users/@me/guilds/{id}", false)
	add("GET", "users/{id}", false)
	add("GET", "applications/@me", false)
	add("GET", "oauth2/applications/@me", false)
	add("GET", "applications/{id}/commands", false)
	add("PUT", "applications/{id}/commands", false)
	add("POST", "applications/{id}/commands", false)
	add("GET", "applications/{id}/guilds/{id}/commands", false)
	add("PUT", "applications/{id}/guilds/{id}/commands", false)
	add("GET", "guilds/{id}", false)
	add("GET", "guilds/{id}/channels", false)
	add("GET", "guilds/{id}/roles", false)
	add("GET", "guilds/{id}/members", false)
	add("GET", "guilds/{id}/members/{user}", false)
	add("PATCH", "guilds/{id}/members/{user}", false)
	add("DELETE", "guilds/{id}/members/{user}", false)
	add("PUT", "guilds/{id}/members/{user}/roles/{id}", false)
	add("DELETE", "guilds/{id}/members/{user}/roles/{id}", false)
	add("GET", "channels/{id}", false)
	add("GET", "channels/{id}/messages", false)
	add("POST", "channels/{id}/messages", false)
	add("POST", "channels/{id}/messages/bulk-delete", false)
	add("GET", "channels/{id}/messages/{id}", false)
	add("PATCH", "channels/{id}/messages/{id}", false)
	add("DELETE", "channels/{id}/messages/{id}", false)
	add("PUT", "channels/{id}/messages/{id}/reactions/{emoji}/@me", false)
	add("DELETE", "channels/{id}/messages/{id}/reactions/{emoji}/@me", false)
	add("GET", "channels/{id}/messages/{id}/reactions/{emoji}", false)
	add("POST", "channels/{id}/typing", false)
	add("POST", "interactions/{id}/{token}/callback", true)
	add("POST", "webhooks/{id}/{token}", true)
	add("GET", "webhooks/{id}/{token}/messages/{id}", true)
	add("PATCH", "webhooks/{id}/{token}/messages/{id}", true)
	add("DELETE", "webhooks/{id}/{token}/messages/{id}", true)
	return t
}()

// matchREST parses a path below /api/v10. ok is false for an unknown path;
// methodOK is false when the path is known but not for that method.
func matchREST(method, path string) (c restCall, ok, methodOK bool) {
	seg := strings.Split(strings.Trim(path, "/"), "/")
	for _, r := range restTable {
		pat := r.segs
		if len(pat) != len(seg) || (pat[0] != seg[0]) {
			continue
		}
		var call restCall
		ni, ns, good := 0, 0, true
		for i, p := range pat {
			switch p {
			case "{id}", "{user}":
				// @original stands for an interaction's first answer.
				if p == "{id}" && seg[i] == "@original" && pat[0] == "webhooks" && i == 4 {
					ni++
					continue
				}
				v, err := strconv.ParseUint(seg[i], 10, 64)
				if err != nil || v == 0 {
					good = false
				} else {
					call.ids[ni] = v
					ni++
				}
			case "{token}", "{emoji}":
				if seg[i] == "" {
					good = false
				} else {
					v, err := url.PathUnescape(seg[i])
					if err != nil {
						good = false
					}
					call.strs[ns] = v
					ns++
				}
			default:
				good = good && p == seg[i]
			}
			if !good {
				break
			}
		}
		if !good {
			continue
		}
		ok = true
		if r.method != method {
			continue
		}
		call.route, call.auth, call.global = r.route, !r.public, !r.public
		switch seg[0] {
		case "channels":
			call.major = "channel:" + seg[1]
		case "guilds":
			call.major = "guild:" + seg[1]
		case "webhooks":
			call.major = "webhook:" + seg[1] + "/" + seg[2]
		case "interactions":
			call.major = "interaction:" + seg[1]
		}
		return call, true, true
	}
	return restCall{}, ok, false
}

// restJSONError is Discord's error body.
func restJSONError(code int, message string) []byte {
	return fmt.Appendf(nil, `{"message": %q, "code": %d}`, message, code)
}

func (s *Server) serveREST(w http.ResponseWriter, r *http.Request) {
	rs := s.rest
	rs.mu.Lock()
	if rs.closed {
		rs.mu.Unlock()
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	rs.handlers.Add(1)
	rs.mu.Unlock()
	defer rs.handlers.Done()

	h := w.Header()
	h.Set("Via", "1.1 google")
	h.Set("Content-Type", "application/json")
	path, ok := strings.CutPrefix(r.URL.Path, "/api/v10")
	if !ok {
		path, ok = strings.CutPrefix(r.URL.Path, "/api/v9")
	}
	if !ok {
		s.restReply(w, http.StatusBadRequest, restJSONError(50041, "Invalid API version provided"))
		return
	}
	call, ok, methodOK := matchREST(r.Method, path)
	if !ok {
		s.restReply(w, http.StatusNotFound, restJSONError(0, "404: Not Found"))
		return
	}
	if !methodOK {
		s.restReply(w, http.StatusMethodNotAllowed, restJSONError(0, "405: Method Not Allowed"))
		return
	}
	if d := time.Duration(rs.latency.Load()); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	if !s.admitREST(w, r, call) {
		return
	}
	s.handleREST(w, r, call)
}

// admitREST counts the request and judges it against the ban, the token,
// the global limit, the route's bucket and the queued faults. It writes
// the rate-limit headers, and the whole answer when the request does not
// go through.
func (s *Server) admitREST(w http.ResponseWriter, r *http.Request, c restCall) bool {
	rs := s.rest
	now := time.Now()
	h := w.Header()
	rs.mu.Lock()
	rs.requests[c.route]++
	if now.Before(rs.bannedUntil) {
		// Cloudflare answers, not Discord: no Via, no JSON.
		retry := rs.bannedUntil.Sub(now)
		rs.limited["cloudflare"]++
		rs.mu.Unlock()
		h.Del("Via")
		h.Set("Content-Type", "text/plain; charset=UTF-8")
		h.Set("Retry-After", retryAfterHeader(retry))
		s.restReply(w, http.StatusTooManyRequests, []byte("error code: 1015"))
		return false
	}
	rs.mu.Unlock()
	if c.auth && !s.checkToken(r.Header.Get("Authorization")) {
		s.restReply(w, http.StatusUnauthorized, restJSONError(0, "401: Unauthorized"))
		return false
	}
	if c.route == routeGateway {
		return true // no token, no limit: Discord serves it from its CDN
	}
	rs.mu.Lock()
	if !now.Before(rs.global.resetAt) {
		rs.global = restWindow{resetAt: now.Add(s.cfg.globalWindow)}
	}
	if c.global && rs.global.count >= s.cfg.globalLimit {
		retry := rs.global.resetAt.Sub(now)
		rs.limited["global"]++
		rs.mu.Unlock()
		h.Set("X-RateLimit-Global", "true")
		h.Set("X-RateLimit-Scope", "global")
		h.Set("Retry-After", retryAfterHeader(retry))
		s.restReply(w, http.StatusTooManyRequests, rateLimitBody(retry, true))
		return false
	}
	limit, window := s.cfg.routeLimit, s.cfg.routeWindow
	key := c.route + " " + c.major
	b := rs.buckets[key]
	if b == nil {
		if len(rs.buckets) >= rs.pruneAt {
			for k, v := range rs.buckets {
				if !now.Before(v.resetAt) {
					delete(rs.buckets, k)
				}
			}
			rs.pruneAt = max(1024, 2*len(rs.buckets))
		}
		b = &restWindow{}
		rs.buckets[key] = b
	}
	if !now.Before(b.resetAt) {
		*b = restWindow{resetAt: now.Add(window)}
	}
	if b.count >= limit {
		resetAt := b.resetAt // b is guarded by rs.mu: read it before unlocking
		retry := resetAt.Sub(now)
		rs.limited["user"]++
		rs.mu.Unlock()
		setBucketHeaders(h, c.route, limit, 0, resetAt, now)
		h.Set("X-RateLimit-Scope", "user")
		h.Set("Retry-After", retryAfterHeader(retry))
		s.restReply(w, http.StatusTooManyRequests, rateLimitBody(retry, false))
		return false
	}
	if c.global {
		rs.global.count++
	}
	b.count++
	remaining, resetAt := limit-b.count, b.resetAt
	var fault restFault
	for _, k := range [2]string{c.route, ""} {
		if q := rs.faults[k]; len(q) > 0 {
			fault = q[0]
			if q[0].n--; q[0].n == 0 {
				q = q[1:]
			}
			if len(q) == 0 {
				delete(rs.faults, k)
			} else {
				rs.faults[k] = q
			}
			break
		}
	}
	rs.mu.Unlock()
	setBucketHeaders(h, c.route, limit, remaining, resetAt, now)
	switch {
	case fault.status == http.StatusTooManyRequests:
		retry := resetAt.Sub(now)
		scope := "user"
		if fault.shared {
			scope = "shared"
		}
		rs.mu.Lock()
		rs.limited[scope]++
		rs.mu.Unlock()
		h.Set("X-RateLimit-Scope", scope)
		h.Set("Retry-After", retryAfterHeader(retry))
		s.restReply(w, http.StatusTooManyRequests, rateLimitBody(retry, false))
		return false
	case fault.status != 0:
		s.restReply(w, fault.status, restJSONError(0, fmt.Sprintf("%d: %s", fault.status, http.StatusText(fault.status))))
		return false
	}
	return true
}

// restReply writes an answer and counts it; 401, 403 and 429 answers other
// than bans and shared-scope limits are invalid requests.
func (s *Server) restReply(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	invalid := status == http.StatusUnauthorized || status == http.StatusForbidden ||
		(status == http.StatusTooManyRequests && h.Get("Via") != "" && h.Get("X-RateLimit-Scope") != "shared")
	rs := s.rest
	now := time.Now()
	rs.mu.Lock()
	rs.statuses[status]++
	if invalid {
		rs.invalid = append(rs.invalid, now)
		if rs.invalidLocked(now) >= s.cfg.invalidLimit && !now.Before(rs.bannedUntil) {
			rs.bannedUntil = rs.invalid[0].Add(s.cfg.invalidWindow)
			s.cfg.logger.Warn("discordtest: invalid-request limit reached, banning", "until", rs.bannedUntil)
		}
	}
	rs.mu.Unlock()
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// setBucketHeaders writes Discord's per-route rate-limit headers. Times
// are rounded up to the millisecond, so a client that waits for them is
// never early.
func setBucketHeaders(h http.Header, route string, limit, remaining int, resetAt, now time.Time) {
	h.Set("X-RateLimit-Limit", strconv.Itoa(limit))
	h.Set("X-RateLimit-Remaining", strconv.Itoa(remaining))
	h.Set("X-RateLimit-Reset", strconv.FormatFloat(ceilMillis(time.Duration(resetAt.UnixNano())), 'f', 3, 64))
	h.Set("X-RateLimit-Reset-After", strconv.FormatFloat(ceilMillis(resetAt.Sub(now)), 'f', 3, 64))
	h.Set("X-RateLimit-Bucket", restRoutes[route])
}

// ceilMillis returns d in seconds, rounded up to the millisecond.
func ceilMillis(d time.Duration) float64 {
	return math.Ceil(float64(max(d, 0))/float64(time.Millisecond)) / 1000
}

// retryAfterHeader is the Retry-After header: whole seconds, rounded up.
func retryAfterHeader(d time.Duration) string {
	return strconv.FormatInt(int64(math.Ceil(max(d, 0).Seconds())), 10)
}

func rateLimitBody(retry time.Duration, global bool) []byte {
	return fmt.Appendf(nil, `{"message": "You are being rate limited.", "retry_after": %.3f, "global": %t}`, ceilMillis(retry), global)
}

// gatewayBot encodes the GET /gateway/bot answer.
func (s *Server) gatewayBot() []byte {
	s.mu.Lock()
	remaining := s.remainingStartsLocked(time.Now())
	resetAfter := s.cfg.sessionReset - time.Since(s.startsAt)
	s.mu.Unlock()
	b := []byte(`{"url":"` + s.wsURL + `","shards":` + strconv.Itoa(s.RecommendedShards()) + `,"session_start_limit":{"total":`)
	b = strconv.AppendInt(b, int64(s.cfg.sessionStarts), 10)
	b = append(b, `,"remaining":`...)
	b = strconv.AppendInt(b, int64(max(remaining, 0)), 10)
	b = append(b, `,"reset_after":`...)
	b = strconv.AppendInt(b, resetAfter.Milliseconds(), 10)
	b = append(b, `,"max_concurrency":`...)
	b = strconv.AppendInt(b, int64(s.cfg.maxConcurrency), 10)
	return append(b, "}}"...)
}
