package discordtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
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

// restRoutes lists every route with its bucket hash: an opaque ID per
// route, the same for every major parameter, as Discord's
// X-RateLimit-Bucket.
var restRoutes = func() map[string]string {
	m := map[string]string{}
	for _, r := range []string{routeGateway, routeGatewayBot, routeMe, routeApplication, routeUser,
		routeGuild, routeMember, routeChannel, routeCreateMessage} {
		sum := sha256.Sum256([]byte("discordtest " + r))
		m[r] = hex.EncodeToString(sum[:16])
	}
	return m
}()

// restState holds the REST API's state. It starts no goroutine: windows
// reset lazily when a request finds them expired.
type restState struct {
	cfg     *config
	latency atomic.Int64  // added before each request is judged, in ns
	msgSeq  atomic.Uint64 // message IDs

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
	major string // "channel:<id>", "guild:<id>" or ""
	ids   [2]uint64
	auth  bool // needs the bot token and counts against the global limit
}

// matchREST parses a path below /api/v10. ok is false for an unknown path;
// method is false when the path is known but not for that method.
func matchREST(method, path string) (c restCall, ok, methodOK bool) {
	seg := strings.Split(strings.Trim(path, "/"), "/")
	id := func(i int) (uint64, bool) {
		v, err := strconv.ParseUint(seg[i], 10, 64)
		return v, err == nil && v > 0
	}
	c.auth = true
	want := http.MethodGet
	switch {
	case len(seg) == 1 && seg[0] == "gateway":
		c.route, c.auth = routeGateway, false
	case len(seg) == 2 && seg[0] == "gateway" && seg[1] == "bot":
		c.route = routeGatewayBot
	case len(seg) == 2 && seg[0] == "users" && seg[1] == "@me":
		c.route = routeMe
	case len(seg) == 2 && seg[0] == "applications" && seg[1] == "@me":
		c.route = routeApplication
	case len(seg) == 2 && seg[0] == "users":
		c.route = routeUser
	case len(seg) == 2 && seg[0] == "guilds":
		c.route = routeGuild
	case len(seg) == 4 && seg[0] == "guilds" && seg[2] == "members":
		c.route = routeMember
	case len(seg) == 2 && seg[0] == "channels":
		c.route = routeChannel
	case len(seg) == 3 && seg[0] == "channels" && seg[2] == "messages":
		c.route, want = routeCreateMessage, http.MethodPost
	default:
		return c, false, false
	}
	// Path parameters must be snowflakes, or the route does not match.
	for i, j := 1, 0; i < len(seg); i += 2 {
		if c.route == routeGatewayBot || seg[i] == "@me" {
			break
		}
		v, good := id(i)
		if !good {
			return c, false, false
		}
		c.ids[j] = v
		j++
	}
	switch seg[0] {
	case "channels":
		c.major = "channel:" + seg[1]
	case "guilds":
		c.major = "guild:" + seg[1]
	}
	return c, true, method == want
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
	if !c.auth {
		return true
	}
	rs.mu.Lock()
	if !now.Before(rs.global.resetAt) {
		rs.global = restWindow{resetAt: now.Add(s.cfg.globalWindow)}
	}
	if rs.global.count >= s.cfg.globalLimit {
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
		retry := b.resetAt.Sub(now)
		rs.limited["user"]++
		rs.mu.Unlock()
		setBucketHeaders(h, c.route, limit, 0, b.resetAt, now)
		h.Set("X-RateLimit-Scope", "user")
		h.Set("Retry-After", retryAfterHeader(retry))
		s.restReply(w, http.StatusTooManyRequests, rateLimitBody(retry, false))
		return false
	}
	rs.global.count++
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

// handleREST answers a request that went through the limits.
func (s *Server) handleREST(w http.ResponseWriter, r *http.Request, c restCall) {
	switch c.route {
	case routeGateway:
		s.restReply(w, http.StatusOK, []byte(`{"url":"`+s.wsURL+`"}`))
	case routeGatewayBot:
		s.restReply(w, http.StatusOK, s.gatewayBot())
	case routeMe:
		s.restReply(w, http.StatusOK, s.appendUser(nil, s.cfg.applicationID))
	case routeApplication:
		s.restReply(w, http.StatusOK, s.application())
	case routeUser:
		if !s.userExists(c.ids[0]) {
			s.restReply(w, http.StatusNotFound, restJSONError(10013, "Unknown User"))
			return
		}
		s.restReply(w, http.StatusOK, s.appendUser(nil, c.ids[0]))
	case routeGuild:
		g := s.guildOf(c.ids[0])
		if g < 0 {
			s.restReply(w, http.StatusNotFound, restJSONError(10004, "Unknown Guild"))
			return
		}
		b := s.appendGuildFields([]byte{'{'}, g)
		if r.URL.Query().Get("with_counts") == "true" {
			b = fmt.Appendf(b, `,"approximate_member_count":%d,"approximate_presence_count":0`, s.cfg.membersPerGuild)
		}
		s.restReply(w, http.StatusOK, append(b, '}'))
	case routeMember:
		g := s.guildOf(c.ids[0])
		if g < 0 {
			s.restReply(w, http.StatusNotFound, restJSONError(10004, "Unknown Guild"))
			return
		}
		m := s.memberIndex(g, c.ids[1])
		if m < 0 {
			s.restReply(w, http.StatusNotFound, restJSONError(10007, "Unknown Member"))
			return
		}
		s.restReply(w, http.StatusOK, s.appendMember(nil, g, m))
	case routeChannel:
		g, ch := s.channelOf(c.ids[0])
		if g < 0 {
			s.restReply(w, http.StatusNotFound, restJSONError(10003, "Unknown Channel"))
			return
		}
		s.restReply(w, http.StatusOK, s.appendChannel(nil, g, ch))
	case routeCreateMessage:
		s.createMessage(w, r, c.ids[0])
	}
}

// guildOf returns the index of the guild with this exact ID, or -1.
func (s *Server) guildOf(id uint64) int {
	g := s.guildIndex(id)
	if g < 0 || guildID(g) != id {
		return -1
	}
	return g
}

// channelOf returns the guild and index of a channel, or -1, -1.
func (s *Server) channelOf(id uint64) (g, c int) {
	g = s.guildIndex(id)
	kind, idx := idKind(id)
	if g < 0 || kind != kindChannel || idx >= s.cfg.channelsPerGuild || subID(g, kindChannel, idx) != id {
		return -1, -1
	}
	return g, idx
}

// memberIndex returns the index of a user among guild g's members, or -1.
func (s *Server) memberIndex(g int, user uint64) int {
	if user == s.cfg.applicationID {
		return 0
	}
	kind, m := idKind(user)
	if s.guildIndex(user) != g || kind != kindUser || m < 1 || m >= s.cfg.membersPerGuild || subID(g, kindUser, m) != user {
		return -1
	}
	return m
}

func (s *Server) userExists(id uint64) bool {
	g := s.guildIndex(id)
	return id == s.cfg.applicationID || (g >= 0 && s.memberIndex(g, id) > 0)
}

// application encodes GET /applications/@me.
func (s *Server) application() []byte {
	b := []byte(`{"id":`)
	b = appendID(b, s.cfg.applicationID)
	b = append(b, `,"name":"discordtest","icon":null,"description":"","rpc_origins":[],"bot_public":true,"bot_require_code_grant":false,"bot":`...)
	b = s.appendUser(b, s.cfg.applicationID)
	b = append(b, `,"verify_key":"`...)
	b = append(b, strings.Repeat("0", 64)...)
	b = append(b, `","team":null,"tags":[],"flags":0,"approximate_guild_count":`...)
	b = strconv.AppendInt(b, int64(s.cfg.guilds), 10)
	return append(b, `,"integration_types_config":{}}`...)
}

// createMessage handles POST /channels/{id}/messages: the bot's message is
// returned and dispatched as MESSAGE_CREATE to the shard owning the guild.
func (s *Server) createMessage(w http.ResponseWriter, r *http.Request, channel uint64) {
	g, _ := s.channelOf(channel)
	if g < 0 {
		s.restReply(w, http.StatusNotFound, restJSONError(10003, "Unknown Channel"))
		return
	}
	content, status, body := readMessageCreate(r)
	if status != 0 {
		s.restReply(w, status, body)
		return
	}
	msg := s.appendMessage(nil, g, channel, s.cfg.applicationID, s.rest.msgSeq.Add(1), content)
	_, _ = s.Dispatch(guildID(g), "MESSAGE_CREATE", msg)
	s.restReply(w, http.StatusOK, msg)
}

// messageCreate is the part of a message create body the server checks.
type messageCreate struct {
	Content    string            `json:"content"`
	Embeds     []json.RawMessage `json:"embeds"`
	StickerIDs []json.RawMessage `json:"sticker_ids"`
}

// readMessageCreate reads a JSON or multipart (payload_json) body. A
// status other than 0 is Discord's answer to a bad body.
func readMessageCreate(r *http.Request) (content string, status int, body []byte) {
	raw, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, 8<<20))
	if err != nil {
		return "", http.StatusRequestEntityTooLarge, restJSONError(40005, "Request entity too large")
	}
	if mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "multipart/form-data" {
		mr := multipart.NewReader(bytes.NewReader(raw), params["boundary"])
		raw = nil
		for {
			p, err := mr.NextPart()
			if err != nil {
				break
			}
			if p.FormName() == "payload_json" {
				raw, _ = io.ReadAll(p)
				break
			}
		}
	}
	var mc messageCreate
	if err := json.Unmarshal(raw, &mc); err != nil {
		return "", http.StatusBadRequest, restJSONError(50109, "The request body contains invalid JSON.")
	}
	if mc.Content == "" && len(mc.Embeds) == 0 && len(mc.StickerIDs) == 0 {
		return "", http.StatusBadRequest, restJSONError(50006, "Cannot send an empty message")
	}
	if utf8.RuneCountInString(mc.Content) > 2000 {
		return "", http.StatusBadRequest, []byte(`{"message": "Invalid Form Body", "code": 50035, "errors": {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]}}}`)
	}
	return mc.Content, 0, nil
}

// gatewayBot encodes the GET /gateway/bot answer.
func (s *Server) gatewayBot() []byte {
	s.mu.Lock()
	remaining := s.remainingStartsLocked(time.Now())
	resetAfter := s.cfg.sessionReset - time.Now().Sub(s.startsAt)
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
