package restproxy

import (
	"bytes"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ServerConfig configures a Server. Its zero value forwards to Discord.
type ServerConfig struct {
	// Upstream is where requests go: a scheme and host, and optionally
	// a path prefix; the request's path (/api/v10/...) is appended.
	// Default "https://discord.com". For discordtest:
	// "http://" + srv.Addr().
	Upstream string
	// Token, if set, is the only bot token the server accepts (without
	// the "Bot " prefix); other tokens get 401. One Server serves one
	// bot: its Limiter's buckets and global limit are that bot's.
	Token string
	// Client sends the upstream requests. Default: a client with a 60 s
	// timeout that does not follow redirects.
	Client *http.Client
	// Logger gets one debug line per request and warnings for upstream
	// failures; never a token. Default: no logs.
	Logger *slog.Logger
}

// maxBody bounds a proxied request's body (Discord's largest uploads).
const maxBody = 128 << 20

// Server is the limiter as an HTTP proxy, so that several processes or
// hosts share one limiter: clients send Discord REST calls (the path
// /api/v10/..., the bot's Authorization header) to it instead of to
// Discord, and it forwards them through the Limiter and passes back
// Discord's status, headers and body. It retries 429s (but not
// Cloudflare's bans) and, for idempotent methods, 5xx answers and
// transport errors, within the Limiter's retry budget; a client needs no
// rate limiter of its own (disgo: rest.WithRateLimiter(rest.NewNoopRateLimiter())).
// Requests without "Authorization: Bot <token>" get 401 and are not
// forwarded.
type Server struct {
	l        *Limiter
	upstream *url.URL
	token    string
	client   *http.Client
	own      *http.Transport // closed by Close when the Server made it
	log      *slog.Logger
}

// NewServer returns a proxy that sends through l.
func NewServer(l *Limiter, cfg ServerConfig) (*Server, error) {
	if l == nil {
		return nil, errors.New("restproxy: NewServer needs a Limiter: pass the one from restproxy.New")
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
	s := &Server{l: l, upstream: u, token: cfg.Token, client: cfg.Client, log: cfg.Logger}
	if s.client == nil {
		s.own = http.DefaultTransport.(*http.Transport).Clone()
		s.own.MaxIdleConnsPerHost = 100
		s.client = &http.Client{
			Transport:     s.own,
			Timeout:       60 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
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

func writeJSONError(w http.ResponseWriter, status int, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, `{"message": %q, "code": 0}`, message)
}

// authorized checks for a bot token, and for the configured one if any.
func (s *Server) authorized(r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bot ")
	if !ok || strings.TrimSpace(tok) == "" {
		return false
	}
	return s.token == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(s.token)) == 1
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(r) {
		writeJSONError(w, http.StatusUnauthorized, "401: Unauthorized")
		return
	}
	if !strings.HasPrefix(r.URL.Path, "/api/") {
		writeJSONError(w, http.StatusNotFound, "404: Not Found")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeJSONError(w, http.StatusRequestEntityTooLarge, "restproxy: request body too large or unreadable")
		return
	}
	ctx := r.Context()
	t := newTicket(r.Method, apiPath(r.URL.Path))
	target := *s.upstream
	target.Path = s.upstream.Path + r.URL.Path
	target.RawPath = s.upstream.EscapedPath() + r.URL.EscapedPath()
	target.RawQuery = r.URL.RawQuery
	header := r.Header.Clone()
	removeHopHeaders(header)
	for attempt := 0; ; attempt++ {
		if err := s.l.wait(ctx, t, attempt > 0); err != nil {
			if errors.Is(err, ErrInvalidRequestLimit) {
				writeJSONError(w, http.StatusServiceUnavailable, err.Error())
			}
			return // the client is gone, or its deadline passed
		}
		out, err := http.NewRequestWithContext(ctx, r.Method, target.String(), bytes.NewReader(body))
		if err != nil {
			s.l.done(t, nil, false)
			writeJSONError(w, http.StatusBadRequest, "restproxy: bad request URL")
			return
		}
		out.Header = header.Clone()
		rs, err := s.client.Do(out)
		if err != nil {
			s.l.done(t, nil, true)
			if ctx.Err() != nil {
				return
			}
			var uerr *url.Error
			if errors.As(err, &uerr) {
				err = uerr.Err // the URL may hold a webhook token
			}
			s.log.Warn("upstream request failed", "method", r.Method, "route", t.route, "attempt", attempt+1, "err", err)
			if idempotent(r.Method) && attempt < s.l.cfg.Retries && sleep(ctx, s.l.backoff(attempt)) == nil {
				continue
			}
			writeJSONError(w, http.StatusBadGateway, "restproxy: upstream request failed")
			return
		}
		scope := s.l.done(t, rs, true)
		retry := attempt < s.l.cfg.Retries &&
			((rs.StatusCode == http.StatusTooManyRequests && scope != "cloudflare") ||
				(rs.StatusCode >= 500 && idempotent(r.Method)))
		if retry {
			drain(rs)
			if rs.StatusCode >= 500 && sleep(ctx, s.l.backoff(attempt)) != nil {
				return
			}
			continue
		}
		s.log.Debug("proxied", "method", r.Method, "route", t.route, "status", rs.StatusCode, "attempts", attempt+1)
		h := w.Header()
		for k, v := range rs.Header {
			h[k] = v
		}
		removeHopHeaders(h)
		w.WriteHeader(rs.StatusCode)
		_, _ = io.Copy(w, rs.Body)
		_ = rs.Body.Close()
		return
	}
}
