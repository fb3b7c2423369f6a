package restproxy

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

// SecretHeader is the header in which clients send the proxy's shared
// secret (ServerConfig.Secret). It is not Authorization, which carries
// Discord's token, and it is never forwarded to Discord.
const SecretHeader = "X-Restproxy-Secret"

// DefaultMaxBodyBytes is the default bound on a request body: 100 MiB,
// the largest upload Discord accepts from a bot (in a guild at boost
// level 3; most guilds allow 10 MiB), plus 1 MiB for the message's JSON
// and the multipart framing.
const DefaultMaxBodyBytes = 101 << 20

// replayMax is the largest body the proxy keeps in memory so that it can
// send it again after a 429, a 5xx or a transport error; larger bodies
// stream through once and are never retried.
const replayMax = 64 << 10

// ServerConfig configures a Server. Its zero fields mean defaults; only
// Token must be set.
type ServerConfig struct {
	// Upstream is where requests go: a scheme and host, and optionally
	// a path prefix; the request's path (/api/v10/...) is appended.
	// Default "https://discord.com". For discordtest:
	// "http://" + srv.Addr().
	Upstream string
	// Token is the bot token the proxy adds to every request that needs
	// one (with or without the "Bot " prefix). Required. One Server
	// serves one bot: its Limiter's buckets, global limit and
	// invalid-request guard are that bot's. Clients may leave out
	// Authorization (or send "Bot " with no token) or send this same
	// token; a request with another token, or another scheme (Bearer),
	// gets 401, is not forwarded and is not counted as an invalid
	// request.
	Token string
	// Secret, if set, must be sent by clients in the SecretHeader header;
	// requests without it get 401. /healthz and /metrics do not need it.
	Secret string
	// MaxBodyBytes bounds a request body (default DefaultMaxBodyBytes).
	// Bodies stream to Discord; a larger one gets 413.
	MaxBodyBytes int64
	// BodyTimeout is how long a request body may stall, and a client may
	// take to accept a piece of the response, before the proxy gives up
	// on it (default 30 s). The whole transfer has no time limit, so large
	// uploads on slow links pass.
	BodyTimeout time.Duration
	// Metrics, if set, is served at /metrics (the metrics package's REST
	// collectors through promhttp, in cmd/restproxy).
	Metrics http.Handler
	// Client sends the upstream requests. Default: a client that does not
	// follow redirects, leaves bodies compressed or not as Discord sends
	// them, and waits at most 60 s for a response's headers once the
	// request is sent. With the default, a request the proxy holds whole
	// (no body, or one of at most 64 KiB) is written and its answer read
	// on the handler's goroutine, over keep-alive HTTP/1.1 connections
	// that no other goroutine reads while in use; streamed bodies, and every
	// request where the environment names an HTTP proxy
	// (HTTPS_PROXY), go through a net/http Transport.
	Client *http.Client
	// Logger gets one debug line per request and warnings for upstream
	// failures; never a token. Default: no logs.
	Logger *slog.Logger
}

// Server is the limiter as an HTTP proxy, so that several processes or
// hosts share one limiter: clients send Discord REST calls (the path
// /api/v{N}/...) to it instead of to Discord, and it forwards them
// through the Limiter with the bot's token and passes back Discord's
// status, headers and body. A client needs no rate limiter and no token
// of its own (disgo: rest.WithURL("http://proxy:8080/api/v10"),
// rest.WithRateLimiter(rest.NewNoopRateLimiter())).
//
// Routes that Discord serves without a bot token (interaction callbacks
// and follow-ups, webhooks called with their token, GET /gateway) are
// forwarded without one, and limited by their own buckets. Paths with
// dot segments, empty segments or encoded slashes get 400; only paths
// under /api/v{N}/ reach Discord. /healthz reports the limiter's state.
//
// Bodies stream to Discord. The proxy retries 429s (but not Cloudflare's
// bans) and, for idempotent methods, 5xx answers and transport errors,
// within the Limiter's retry budget, but only requests it can send again:
// those without a body or with one of at most 64 KiB, which it keeps.
//
// Serve it with an http.Server that bounds slow clients, as cmd/restproxy
// does: ReadHeaderTimeout (10 s there), ReadTimeout covering the headers
// and a first body read (the handler then gives each body read
// BodyTimeout), and IdleTimeout (2 min).
type Server struct {
	l           *Limiter
	upstream    *url.URL
	auth        string // "Bot " + token
	token       []byte
	secret      []byte
	maxBody     int64
	bodyTimeout time.Duration
	metrics     http.Handler
	client      *http.Client
	own         *http.Transport // closed by Close when the Server made it
	up          *upstream       // with own: requests held whole; nil if unusable here
	log         *slog.Logger
}

// NewServer returns a proxy that sends through l. It fails, saying what
// to change, on a missing Limiter or Token, or a bad Upstream.
func NewServer(l *Limiter, cfg ServerConfig) (*Server, error) {
	if l == nil {
		return nil, errors.New("restproxy: NewServer needs a Limiter: pass the one from restproxy.New")
	}
	tok := strings.TrimSpace(cfg.Token)
	tok = strings.TrimSpace(strings.TrimPrefix(tok, "Bot "))
	if tok == "" || tok == "Bot" {
		return nil, errors.New("restproxy: ServerConfig.Token is empty: set the bot token the proxy adds to requests")
	}
	if strings.ContainsAny(tok, " \t\r\n") {
		return nil, errors.New("restproxy: ServerConfig.Token has white space inside: set the bare bot token")
	}
	switch {
	case cfg.MaxBodyBytes < 0:
		return nil, fmt.Errorf("restproxy: MaxBodyBytes (%d) < 0: use 0 for %d", cfg.MaxBodyBytes, DefaultMaxBodyBytes)
	case cfg.BodyTimeout < 0:
		return nil, fmt.Errorf("restproxy: BodyTimeout (%s) < 0: use 0 for 30s", cfg.BodyTimeout)
	}
	up := cfg.Upstream
	if up == "" {
		up = "https://discord.com"
	}
	u, err := url.Parse(up)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("restproxy: Upstream %q is not an http or https URL with a host", up)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	s := &Server{
		l: l, upstream: u, auth: "Bot " + tok, token: []byte(tok),
		maxBody: cfg.MaxBodyBytes, bodyTimeout: cfg.BodyTimeout,
		metrics: cfg.Metrics, client: cfg.Client, log: cfg.Logger,
	}
	if cfg.Secret != "" {
		s.secret = []byte(cfg.Secret)
	}
	if s.maxBody == 0 {
		s.maxBody = DefaultMaxBodyBytes
	}
	if s.bodyTimeout == 0 {
		s.bodyTimeout = 30 * time.Second
	}
	if s.client == nil {
		s.own = http.DefaultTransport.(*http.Transport).Clone()
		// Enough idle connections for every request a window lets go at
		// once (the default keeps 100 in all, and every request above
		// that opens a new connection); bodies pass through as Discord
		// sends them.
		s.own.MaxIdleConns = 1024
		s.own.MaxIdleConnsPerHost = 1024
		s.own.ResponseHeaderTimeout = 60 * time.Second
		s.own.DisableCompression = true
		s.client = &http.Client{
			Transport:     s.own,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
		s.up = newUpstream(u)
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("component", "restproxy.server")
	return s, nil
}

// Close closes the idle upstream connections of the client the Server
// made. Requests still running finish; call it after the http.Server
// serving s has shut down.
func (s *Server) Close() {
	if s.own != nil {
		s.own.CloseIdleConnections()
	}
	if s.up != nil {
		s.up.close()
	}
}

// SecretTransport returns a RoundTripper that sends secret in the
// SecretHeader header of every request, for clients of a proxy that has a
// ServerConfig.Secret. base nil means http.DefaultTransport. For disgo:
//
//	rest.WithHTTPClient(&http.Client{Timeout: 20 * time.Second,
//		Transport: restproxy.SecretTransport(nil, secret)})
func SecretTransport(base http.RoundTripper, secret string) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &secretTransport{base: base, secret: secret}
}

type secretTransport struct {
	base   http.RoundTripper
	secret string
}

func (t *secretTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(SecretHeader, t.secret)
	return t.base.RoundTrip(r)
}

// CloseIdleConnections closes the base transport's idle connections.
func (t *secretTransport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// hopHeaders are not forwarded in either direction (RFC 9110 7.6.1).
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func removeHopHeaders(h http.Header) {
	for _, f := range h.Values("Connection") {
		for _, k := range strings.Split(f, ",") {
			h.Del(strings.TrimSpace(k))
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}

// writeJSONError answers in Discord's error shape; message never holds a
// token.
func writeJSONError(w http.ResponseWriter, status int, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	b, _ := json.Marshal(struct {
		Message string `json:"message"`
		Code    int    `json:"code"`
	}{message, 0})
	_, _ = w.Write(b)
}

// checkPath returns the path below /api/v{N}, or the status and message
// that refuse the request.
func checkPath(u *url.URL) (string, int, string) {
	raw := u.EscapedPath()
	if i := strings.IndexByte(raw, '%'); i >= 0 {
		low := strings.ToLower(raw[i:])
		if strings.Contains(low, "%2f") || strings.Contains(low, "%5c") {
			return "", http.StatusBadRequest, "restproxy: encoded slash in the path: send / unencoded"
		}
	}
	p := u.Path
	if strings.IndexByte(p, '\\') >= 0 {
		return "", http.StatusBadRequest, "restproxy: backslash in the path"
	}
	last, i := strings.Count(p, "/"), 0
	for seg := range strings.SplitSeq(p, "/") {
		switch {
		case seg == "." || seg == "..":
			return "", http.StatusBadRequest, "restproxy: dot segment in the path: send the path resolved"
		case seg == "" && i > 0 && i < last:
			return "", http.StatusBadRequest, "restproxy: empty segment (//) in the path"
		}
		i++
	}
	rest, ok := strings.CutPrefix(p, "/api/v")
	n := 0
	for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	if !ok || n == 0 || n > 3 || len(rest) < n+2 || rest[n] != '/' {
		return "", http.StatusNotFound, "restproxy: only /api/v{N}/... is forwarded to Discord"
	}
	return rest[n:], 0, ""
}

// tokenless reports whether Discord serves the route without a bot
// token: interaction callbacks, webhooks called with their token (which
// interaction follow-ups are), and GET /gateway.
func tokenless(method, path string) bool {
	first, rest, more := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	switch first {
	case "interactions": // /interactions/{id}/{token}/...
		return strings.IndexByte(rest, '/') >= 0
	case "webhooks": // /webhooks/{id}/{token}[/...]
		_, tail, ok := strings.Cut(rest, "/")
		tok, _, _ := strings.Cut(tail, "/")
		return ok && tok != "" && !isSnowflake(tok)
	case "gateway":
		return !more && method == http.MethodGet
	}
	return false
}

// authorization returns the Authorization header to send upstream (""
// for none), or false when the client's header names another bot or
// another scheme.
func (s *Server) authorization(r *http.Request, path string) (string, bool) {
	vs := r.Header.Values("Authorization")
	switch len(vs) {
	case 0:
	case 1:
		// "Bot " alone is what disgo sends when given no token.
		// (Received as "Bot": header values lose trailing spaces.)
		v := strings.TrimSpace(vs[0])
		tok, ok := strings.CutPrefix(v, "Bot ")
		if v == "Bot" {
			tok, ok = "", true
		}
		tok = strings.TrimSpace(tok)
		if !ok || (tok != "" && subtle.ConstantTimeCompare([]byte(tok), s.token) != 1) {
			return "", false
		}
	default:
		return "", false
	}
	if tokenless(r.Method, path) {
		return "", true
	}
	return s.auth, true
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/healthz":
		s.serveHealth(w)
		return
	case "/metrics":
		if s.metrics != nil {
			s.metrics.ServeHTTP(w, r)
			return
		}
	}
	if s.secret != nil && subtle.ConstantTimeCompare([]byte(r.Header.Get(SecretHeader)), s.secret) != 1 {
		s.log.Debug("refused", "reason", "secret", "method", r.Method)
		writeJSONError(w, http.StatusUnauthorized, "restproxy: missing or wrong "+SecretHeader+" header: send the proxy's shared secret")
		return
	}
	path, status, msg := checkPath(r.URL)
	if status != 0 {
		s.log.Debug("refused", "reason", "path", "method", r.Method, "status", status)
		writeJSONError(w, status, msg)
		return
	}
	auth, ok := s.authorization(r, path)
	if !ok {
		// Not Discord's answer: not counted as an invalid request.
		s.log.Debug("refused", "reason", "token", "method", r.Method)
		writeJSONError(w, http.StatusUnauthorized, "restproxy: Authorization names another bot or scheme: send none, or this proxy's bot token")
		return
	}
	if r.ContentLength > s.maxBody {
		writeJSONError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("restproxy: request body of %d bytes is over the proxy's limit of %d", r.ContentLength, s.maxBody))
		return
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{}) // the body's reads set their own

	// A body of up to replayMax bytes is read now, so that a retry can
	// send it again; a larger one streams to Discord, once.
	var (
		body     *bodyReader
		stream   io.Reader
		kept     []byte
		length   = r.ContentLength
		hasBody  = r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
		replayOK = true
	)
	if hasBody {
		body = &bodyReader{r: http.MaxBytesReader(w, r.Body, s.maxBody), rc: rc, timeout: s.bodyTimeout}
		defer body.close()
		if length < 0 || length <= replayMax {
			buf, err := readAll(io.LimitReader(body, replayMax+1), length)
			switch {
			case err != nil:
				s.bodyFailed(w, r, body)
				return
			case len(buf) <= replayMax:
				kept, length = buf, int64(len(buf))
			default: // a chunked body larger than replayMax
				stream, replayOK = io.MultiReader(bytes.NewReader(buf), body), false
			}
		} else {
			stream, replayOK = body, false
		}
	}

	ctx := r.Context()
	t := newTicket(r.Method, path)
	// The upstream request is built once the limiter lets it go: a burst
	// of requests queues in the limiter first.
	var (
		targetURL string
		header    http.Header
	)
	for attempt := 0; ; attempt++ {
		if err := s.l.wait(ctx, t, attempt > 0); err != nil {
			if errors.Is(err, ErrInvalidRequestLimit) {
				writeJSONError(w, http.StatusServiceUnavailable, err.Error())
			} else if ctx.Err() == nil {
				writeJSONError(w, http.StatusServiceUnavailable, "restproxy: the rate limit does not open before the request's deadline")
			}
			return // or the client is gone
		}
		if header == nil {
			targetURL, header = s.outgoing(r, auth)
		}
		var rbody io.Reader
		switch {
		case kept != nil:
			rbody = bytes.NewReader(kept)
		case stream != nil:
			rbody = stream
		}
		out, err := http.NewRequestWithContext(ctx, r.Method, targetURL, rbody)
		if err != nil {
			s.l.done(t, nil, false)
			writeJSONError(w, http.StatusBadRequest, "restproxy: bad request URL")
			return
		}
		if attempt == 0 {
			out.Header = header
		} else {
			out.Header = header.Clone() // the transport may still hold the last one
		}
		if stream != nil {
			out.ContentLength = length
		}
		rs, err := s.send(out, stream != nil)
		if stream != nil {
			_ = rc.SetReadDeadline(time.Time{})
		}
		if err != nil {
			s.l.done(t, nil, true)
			if body != nil && body.failed() != nil {
				s.bodyFailed(w, r, body)
				return
			}
			if ctx.Err() != nil {
				return
			}
			var uerr *url.Error
			if errors.As(err, &uerr) {
				err = uerr.Err // the URL may hold a webhook token
			}
			s.log.Warn("upstream request failed", "method", r.Method, "route", t.route, "attempt", attempt+1, "err", err)
			if replayOK && idempotent(r.Method) && attempt < s.l.cfg.Retries && sleep(ctx, s.l.backoff(attempt)) == nil {
				continue
			}
			writeJSONError(w, http.StatusBadGateway, "restproxy: upstream request failed")
			return
		}
		scope := s.l.done(t, rs, true)
		retry := replayOK && attempt < s.l.cfg.Retries &&
			((rs.StatusCode == http.StatusTooManyRequests && scope != "cloudflare") ||
				(rs.StatusCode >= 500 && idempotent(r.Method)))
		if retry {
			drain(rs)
			if rs.StatusCode >= 500 && sleep(ctx, s.l.backoff(attempt)) != nil {
				return
			}
			continue
		}
		if s.log.Enabled(ctx, slog.LevelDebug) {
			s.log.Debug("proxied", "method", r.Method, "route", t.route, "status", rs.StatusCode, "attempts", attempt+1)
		}
		h := w.Header()
		for k, v := range rs.Header {
			h[k] = v
		}
		removeHopHeaders(h)
		w.WriteHeader(rs.StatusCode)
		s.copyResponse(w, rc, rs.Body)
		_ = rs.Body.Close()
		return
	}
}

// readAll is io.ReadAll for a body of about size bytes (-1 if unknown):
// it reads into one buffer of that size, and grows it only for more.
func readAll(r io.Reader, size int64) ([]byte, error) {
	if size < 0 {
		size = 512
	}
	// One byte more, so that the read that ends with io.EOF finds room.
	b := make([]byte, 0, size+1)
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return b, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
	}
}

// outgoing returns the URL and the headers of r's upstream request, with
// auth ("" for none) as its Authorization.
func (s *Server) outgoing(r *http.Request, auth string) (string, http.Header) {
	target := *s.upstream
	target.Path = s.upstream.Path + r.URL.Path
	target.RawPath = s.upstream.EscapedPath() + r.URL.EscapedPath()
	target.RawQuery = r.URL.RawQuery
	header := r.Header.Clone()
	removeHopHeaders(header)
	header.Del(SecretHeader)
	header.Del("Authorization")
	if auth != "" {
		header.Set("Authorization", auth)
	}
	if header.Get("User-Agent") == "" {
		header.Set("User-Agent", "DiscordBot (https://github.com/gofleet/fleet, restproxy)")
	}
	return target.String(), header
}

// send sends an upstream request: one held whole through the Server's
// upstream client when it has one, else through its own transport when it
// made one (http.Client adds nothing to it but a copy of the headers for
// redirects, which it does not follow), else through Client.
func (s *Server) send(out *http.Request, streams bool) (*http.Response, error) {
	if s.up != nil && !streams {
		return s.up.roundTrip(out)
	}
	if s.own != nil {
		return s.own.RoundTrip(out)
	}
	return s.client.Do(out)
}

// bodyFailed answers a request whose body could not be read: too large,
// stalled, or cut.
func (s *Server) bodyFailed(w http.ResponseWriter, r *http.Request, b *bodyReader) {
	var tooLarge *http.MaxBytesError
	var nerr interface{ Timeout() bool }
	err := b.failed()
	switch {
	case errors.As(err, &tooLarge):
		writeJSONError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("restproxy: request body over the proxy's limit of %d bytes", s.maxBody))
	case errors.As(err, &nerr) && nerr.Timeout(), errors.Is(err, os.ErrDeadlineExceeded):
		s.log.Info("request body stalled", "method", r.Method, "timeout", s.bodyTimeout)
		writeJSONError(w, http.StatusRequestTimeout, fmt.Sprintf("restproxy: request body stalled for %s", s.bodyTimeout))
	default:
		writeJSONError(w, http.StatusBadRequest, "restproxy: request body could not be read")
	}
}

// bodyReader reads a request body with a deadline for each read, so that
// a stalled body is cut while a slow one goes on, and keeps the first
// error. It is read by one goroutine at a time: the handler's, then the
// upstream transport's, which may still hold it when the handler asks
// for the error.
type bodyReader struct {
	r       io.Reader
	rc      *http.ResponseController
	timeout time.Duration

	mu     sync.Mutex // guards err, closed
	err    error
	closed bool
}

// errBodyClosed ends reads of a body after the handler has answered: an
// upstream transport may still hold it then.
var errBodyClosed = errors.New("restproxy: request already answered")

func (b *bodyReader) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
}

func (b *bodyReader) Read(p []byte) (int, error) {
	b.mu.Lock()
	err, closed := b.err, b.closed
	b.mu.Unlock()
	switch {
	case closed:
		return 0, errBodyClosed
	case err != nil:
		return 0, err
	}
	_ = b.rc.SetReadDeadline(time.Now().Add(b.timeout))
	n, err := b.r.Read(p)
	if err == io.EOF {
		// The connection's reader goes on in the background, looking for
		// the client going away: without a deadline.
		_ = b.rc.SetReadDeadline(time.Time{})
	} else if err != nil {
		b.mu.Lock()
		b.err = err
		b.mu.Unlock()
	}
	return n, err
}

func (b *bodyReader) failed() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

var copyPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyResponse sends an upstream body to the client, giving each write
// BodyTimeout.
func (s *Server) copyResponse(w http.ResponseWriter, rc *http.ResponseController, body io.Reader) {
	bp := copyPool.Get().(*[]byte)
	defer copyPool.Put(bp)
	buf := *bp
	set := false
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			set = rc.SetWriteDeadline(time.Now().Add(s.bodyTimeout)) == nil
			if _, err := w.Write(buf[:n]); err != nil {
				return
			}
		}
		if rerr != nil {
			break
		}
	}
	if set {
		_ = rc.SetWriteDeadline(time.Time{})
	}
}

// health is what /healthz answers.
type health struct {
	Status          string `json:"status"` // ok, or invalid_request_limit while requests fail
	InvalidRequests int    `json:"invalid_requests"`
	InvalidStop     int    `json:"invalid_requests_stop"`
	Queued          int    `json:"queued"`
	InFlight        int    `json:"in_flight"`
	Buckets         int    `json:"buckets"`
}

// serveHealth answers 200 while the proxy forwards requests, and 503
// while the invalid-request guard fails them.
func (s *Server) serveHealth(w http.ResponseWriter) {
	st := s.l.Stats()
	h := health{Status: "ok", InvalidRequests: st.InvalidRequests, InvalidStop: s.l.cfg.InvalidRequestStop,
		Queued: st.Queued, InFlight: st.InFlight, Buckets: st.Buckets}
	code := http.StatusOK
	if st.InvalidRequests >= s.l.cfg.InvalidRequestStop {
		h.Status, code = "invalid_request_limit", http.StatusServiceUnavailable
	}
	b, _ := json.Marshal(h)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}
