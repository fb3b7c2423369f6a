package restproxy_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/rest"
	"github.com/disgoorg/snowflake/v2"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/restproxy"
)

// seen is what an upstream got.
type seen struct {
	method, path, auth, secret string
	body                       int
}

// upstream serves handle and records what it got; handle nil answers
// 200 {}.
type upstream struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []seen
}

func newUpstream(t *testing.T, handle func(w http.ResponseWriter, r *http.Request, n int)) *upstream {
	t.Helper()
	u := &upstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		u.mu.Lock()
		u.reqs = append(u.reqs, seen{r.Method, r.URL.EscapedPath(), r.Header.Get("Authorization"), r.Header.Get(restproxy.SecretHeader), int(n)})
		u.mu.Unlock()
		w.Header().Set("Via", "1.1 google")
		w.Header().Set("Content-Type", "application/json")
		if handle != nil {
			handle(w, r, int(n))
			return
		}
		_, _ = w.Write([]byte(`{}`))
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) seen() []seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seen(nil), u.reqs...)
}

// do sends one request with the given headers and returns the status and
// body.
func do(t *testing.T, c *http.Client, method, url string, body io.Reader, header ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rs, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Body.Close()
	b, _ := io.ReadAll(rs.Body)
	return rs.StatusCode, string(b)
}

func TestRestProxyForeignTokensLeaveTheGuardAlone(t *testing.T) {
	srv := newSim(t, discordtest.WithGuilds(1), discordtest.WithRouteRateLimit(100, time.Second))
	l := newLimiter(t, restproxy.Config{InvalidRequestStop: 20, InvalidRequestLimit: 40})
	ps := newProxy(t, l, restproxy.ServerConfig{Upstream: "http://" + srv.Addr(), Token: srv.Token()})
	for i := range 20 {
		code, body := do(t, ps.Client(), http.MethodGet, ps.URL+"/api/v10/users/@me", nil, "Authorization", fmt.Sprintf("Bot foreign-%d", i))
		if code != http.StatusUnauthorized || strings.Contains(body, "foreign") {
			t.Fatalf("foreign token %d: %d %s, want 401 without the token", i, code, body)
		}
	}
	for _, auth := range []string{"Bearer " + srv.Token(), "Basic eDp5", srv.Token()} {
		if code, _ := do(t, ps.Client(), http.MethodGet, ps.URL+"/api/v10/users/@me", nil, "Authorization", auth); code != http.StatusUnauthorized {
			t.Errorf("Authorization %.6q...: %d, want 401", auth, code)
		}
	}
	var sent int
	for _, n := range srv.Stats().REST.Requests {
		sent += n
	}
	if sent != 0 || l.Stats().InvalidRequests != 0 {
		t.Fatalf("refused requests reached the simulator (%d) or the guard (%d)", sent, l.Stats().InvalidRequests)
	}
	// The bot's own clients: one with the token, as a disgo client of
	// Discord has it, and one without.
	for _, token := range []string{srv.Token(), ""} {
		c := newClient(t, ps.URL+"/api/v10", token, rest.WithRateLimiter(rest.NewNoopRateLimiter()))
		for range 5 {
			if me, err := c.GetCurrentUser(""); err != nil || !me.Bot {
				t.Fatalf("token %t: %v", token != "", err)
			}
		}
	}
	if n := l.Stats().InvalidRequests; n != 0 {
		t.Errorf("invalid-request count %d, want 0", n)
	}
}

func TestRestProxyTokenlessRoutes(t *testing.T) {
	const (
		botToken    = "the-bot-token"
		itoken      = "aW50ZXJhY3Rpb246c2VjcmV0"
		whToken     = "webhook-secret-token"
		appID       = snowflake.ID(77)
		failWebhook = snowflake.ID(666)
	)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		switch {
		case strings.HasPrefix(r.URL.Path, fmt.Sprintf("/api/v10/webhooks/%d/", failWebhook)):
			c, _, _ := http.NewResponseController(w).Hijack()
			_ = c.Close()
		case strings.HasSuffix(r.URL.Path, "/callback"):
			w.WriteHeader(http.StatusNoContent)
		case strings.HasPrefix(r.URL.Path, "/api/v10/webhooks/"):
			_, _ = w.Write([]byte(`{"id":"5","channel_id":"6","content":"hi"}`))
		case r.URL.Path == "/api/v10/gateway":
			_, _ = w.Write([]byte(`{"url":"wss://gateway.discord.gg"}`))
		default:
			_, _ = w.Write([]byte(`{"id":"77","username":"bot","bot":true}`))
		}
	})
	var (
		logs   syncBuffer
		mu     sync.Mutex
		routes []string
	)
	hook := func(route string) { mu.Lock(); routes = append(routes, route); mu.Unlock() }
	l := newLimiter(t, restproxy.Config{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Hooks: restproxy.Hooks{Response: func(route, _ string, _ int) { hook(route) }, Queued: hook, Waited: func(r string, _ time.Duration) { hook(r) }}})
	ps := newProxy(t, l, restproxy.ServerConfig{Upstream: up.URL, Token: botToken,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})

	// A disgo client with no token answers an interaction and follows up
	// through the proxy.
	c := newClient(t, ps.URL+"/api/v10", "", rest.WithRateLimiter(rest.NewNoopRateLimiter()))
	if err := c.CreateInteractionResponse(42, itoken, discord.InteractionResponse{Type: discord.InteractionResponseTypeDeferredCreateMessage}); err != nil {
		t.Fatalf("interaction callback: %v", err)
	}
	if _, err := c.CreateFollowupMessage(appID, itoken, discord.MessageCreate{Content: "hi"}); err != nil {
		t.Fatalf("follow-up: %v", err)
	}
	if _, err := c.CreateWebhookMessage(9, whToken, discord.WebhookMessageCreate{Content: "hi"}, true, 0); err != nil {
		t.Fatalf("webhook execution: %v", err)
	}
	if _, err := c.GetGateway(); err != nil {
		t.Fatalf("GET /gateway: %v", err)
	}
	if _, err := c.GetCurrentUser(""); err != nil {
		t.Fatalf("GET /users/@me: %v", err)
	}
	_, err := c.CreateWebhookMessage(failWebhook, whToken, discord.WebhookMessageCreate{Content: "hi"}, false, 0)
	if err == nil || strings.Contains(err.Error(), whToken) {
		t.Errorf("failing webhook: %v, want an error without the webhook token", err)
	}

	want := []seen{
		{method: "POST", path: "/api/v10/interactions/42/" + itoken + "/callback"},
		{method: "POST", path: fmt.Sprintf("/api/v10/webhooks/%d/%s", appID, itoken)},
		{method: "POST", path: "/api/v10/webhooks/9/" + whToken},
		{method: "GET", path: "/api/v10/gateway"},
		{method: "GET", path: "/api/v10/users/@me", auth: "Bot " + botToken},
	}
	got := up.seen()
	if len(got) != len(want)+1 {
		t.Fatalf("upstream got %d requests, want %d: %+v", len(got), len(want)+1, got)
	}
	for i, w := range want {
		if got[i].method != w.method || got[i].path != w.path || got[i].auth != w.auth {
			t.Errorf("request %d: upstream got %s %s Authorization %q; want %s %s %q", i, got[i].method, got[i].path, got[i].auth, w.method, w.path, w.auth)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, secret := range []string{itoken, whToken, botToken} {
		if strings.Contains(logs.String(), secret) || strings.Contains(strings.Join(routes, " "), secret) {
			t.Errorf("a token reached the logs or the hooks:\n%s\n%v", logs.String(), routes)
		}
	}
	if !strings.Contains(logs.String(), "upstream request failed") {
		t.Errorf("the failed upstream request is not logged:\n%s", logs.String())
	}
}

func TestRestProxyRefusesBadPaths(t *testing.T) {
	up := newUpstream(t, nil)
	ps := newProxy(t, newLimiter(t, restproxy.Config{}), restproxy.ServerConfig{Upstream: up.URL, Token: "tok"})
	for path, status := range map[string]int{
		"/api/../oauth2/authorize":            http.StatusBadRequest,
		"/api/%2e%2e/admin":                   http.StatusBadRequest,
		"/api/v10/channels/1/%2E/messages":    http.StatusBadRequest,
		"/api/v10/channels/1/./messages":      http.StatusBadRequest,
		"/api/v10/channels%2F1/messages":      http.StatusBadRequest,
		"/api/v10/channels%2f1%2fmessages":    http.StatusBadRequest,
		"/api/v10/channels/1%5Cmessages":      http.StatusBadRequest,
		"/api/v10//users/@me":                 http.StatusBadRequest,
		"/oauth2/authorize":                   http.StatusNotFound,
		"/api/users/@me":                      http.StatusNotFound,
		"/api/v10":                            http.StatusNotFound,
		"/api/v10/":                           http.StatusNotFound,
		"/api/vX/users/@me":                   http.StatusNotFound,
		"/apiv10/users/@me":                   http.StatusNotFound,
		"/api/v10/users/@me":                  http.StatusOK,
		"/api/v9/channels/1/messages/2?x=%2F": http.StatusOK,
	} {
		code, body := do(t, ps.Client(), http.MethodGet, ps.URL+path, nil)
		if code != status || (status != http.StatusOK && !strings.Contains(body, "restproxy: ")) {
			t.Errorf("%s: %d %s, want %d", path, code, body, status)
		}
	}
	for _, s := range up.seen() {
		if s.path != "/api/v10/users/@me" && s.path != "/api/v9/channels/1/messages/2" {
			t.Errorf("upstream got %s", s.path)
		}
	}
	if n := len(up.seen()); n != 2 {
		t.Errorf("upstream got %d requests, want 2", n)
	}
}

func TestRestProxySecret(t *testing.T) {
	up := newUpstream(t, nil)
	ps := newProxy(t, newLimiter(t, restproxy.Config{}), restproxy.ServerConfig{Upstream: up.URL, Token: "tok", Secret: "s3cret"})
	for _, h := range [][]string{nil, {restproxy.SecretHeader, "wrong"}, {"Authorization", "Bot tok"}} {
		code, body := do(t, ps.Client(), http.MethodGet, ps.URL+"/api/v10/users/@me", nil, h...)
		if code != http.StatusUnauthorized || !strings.Contains(body, restproxy.SecretHeader) {
			t.Errorf("headers %q: %d %s, want 401 naming %s", h, code, body, restproxy.SecretHeader)
		}
	}
	if len(up.seen()) != 0 {
		t.Fatalf("upstream got %+v", up.seen())
	}
	c := &http.Client{Transport: restproxy.SecretTransport(nil, "s3cret")}
	if code, _ := do(t, c, http.MethodGet, ps.URL+"/api/v10/users/@me", nil); code != http.StatusOK {
		t.Errorf("with the secret: %d", code)
	}
	c.CloseIdleConnections()
	// Probes need no secret.
	if code, _ := do(t, ps.Client(), http.MethodGet, ps.URL+"/healthz", nil); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}
	if s := up.seen(); len(s) != 1 || s[0].secret != "" || s[0].auth != "Bot tok" {
		t.Errorf("upstream got %+v; want the bot token and no secret", s)
	}
}

func TestRestProxyHealthAndMetrics(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
		w.WriteHeader(http.StatusUnauthorized) // the proxy's token was reset
	})
	l := newLimiter(t, restproxy.Config{InvalidRequestStop: 3, InvalidRequestLimit: 10})
	ps := newProxy(t, l, restproxy.ServerConfig{Upstream: up.URL, Token: "tok",
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "metrics here") })})
	if code, body := do(t, ps.Client(), http.MethodGet, ps.URL+"/metrics", nil); code != http.StatusOK || body != "metrics here" {
		t.Errorf("/metrics: %d %s", code, body)
	}
	if code, body := do(t, ps.Client(), http.MethodGet, ps.URL+"/healthz", nil); code != http.StatusOK || !strings.Contains(body, `"status":"ok"`) {
		t.Errorf("/healthz: %d %s", code, body)
	}
	for range 3 {
		if code, _ := do(t, ps.Client(), http.MethodGet, ps.URL+"/api/v10/users/@me", nil); code != http.StatusUnauthorized {
			t.Fatalf("upstream's 401: %d", code)
		}
	}
	if code, body := do(t, ps.Client(), http.MethodGet, ps.URL+"/api/v10/users/@me", nil); code != http.StatusServiceUnavailable || !strings.Contains(body, "too many invalid requests") {
		t.Errorf("past the guard: %d %s, want 503", code, body)
	}
	if code, body := do(t, ps.Client(), http.MethodGet, ps.URL+"/healthz", nil); code != http.StatusServiceUnavailable || !strings.Contains(body, `"invalid_requests":3`) {
		t.Errorf("/healthz past the guard: %d %s, want 503", code, body)
	}
	// Without a Metrics handler, /metrics is just a path Discord does not have.
	ps2 := newProxy(t, l, restproxy.ServerConfig{Upstream: up.URL, Token: "tok"})
	if code, _ := do(t, ps2.Client(), http.MethodGet, ps2.URL+"/metrics", nil); code != http.StatusNotFound {
		t.Errorf("/metrics without a handler: %d, want 404", code)
	}
}

func TestRestProxyCutsStalledBodies(t *testing.T) {
	up := newUpstream(t, nil)
	ps := newProxy(t, newLimiter(t, restproxy.Config{}), restproxy.ServerConfig{Upstream: up.URL, Token: "tok", BodyTimeout: 50 * time.Millisecond})
	for _, tc := range []struct {
		name   string
		length int // declared
		sent   int // sent, then the client stalls
	}{
		{"small body, kept for retries", 1000, 10},
		{"large body, streamed", 1 << 20, 200 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", ps.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "POST /api/v10/channels/1/messages HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", tc.length)
			if _, err := conn.Write(make([]byte, tc.sent)); err != nil {
				t.Fatal(err)
			}
			// Bounded, so that a proxy that waits forever fails the test
			// instead of hanging it.
			_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			rs, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("no answer to a stalled body: %v", err)
			}
			b, _ := io.ReadAll(rs.Body)
			rs.Body.Close()
			if rs.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(b), "stalled") {
				t.Errorf("%d %s, want 408", rs.StatusCode, b)
			}
		})
	}
	for _, s := range up.seen() {
		if s.body == 1000 || s.body == 1<<20 {
			t.Errorf("upstream got a whole body from a stalled client: %+v", s)
		}
	}
}

func TestRestProxyBodyLimit(t *testing.T) {
	up := newUpstream(t, nil)
	ps := newProxy(t, newLimiter(t, restproxy.Config{}), restproxy.ServerConfig{Upstream: up.URL, Token: "tok", MaxBodyBytes: 1 << 20})
	// Declared too large: refused before anything is read or sent.
	code, body := do(t, ps.Client(), http.MethodPost, ps.URL+"/api/v10/channels/1/messages", bytes.NewReader(make([]byte, 2<<20)))
	if code != http.StatusRequestEntityTooLarge || !strings.Contains(body, "1048576") {
		t.Errorf("2 MiB declared: %d %s, want 413 naming the limit", code, body)
	}
	if len(up.seen()) != 0 {
		t.Errorf("upstream got %+v", up.seen())
	}
	// Chunked, found too large while it streams.
	code, body = do(t, ps.Client(), http.MethodPost, ps.URL+"/api/v10/channels/1/messages", io.MultiReader(bytes.NewReader(make([]byte, 2<<20))))
	if code != http.StatusRequestEntityTooLarge {
		t.Errorf("2 MiB chunked: %d %s, want 413", code, body)
	}
	for _, s := range up.seen() {
		if s.body > 1<<20 {
			t.Errorf("upstream got %d bytes", s.body)
		}
	}
	// At the limit: through.
	if code, _ := do(t, ps.Client(), http.MethodPost, ps.URL+"/api/v10/channels/1/messages", bytes.NewReader(make([]byte, 1<<20))); code != http.StatusOK {
		t.Errorf("1 MiB: %d, want 200", code)
	}
}

func TestRestProxyRetriesOnlyReplayableRequests(t *testing.T) {
	var (
		mu    sync.Mutex
		fails = map[string]int{} // path -> failures left
	)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request, n int) {
		mu.Lock()
		left := fails[r.URL.Path]
		fails[r.URL.Path] = left - 1
		mu.Unlock()
		switch {
		case left > 0 && strings.Contains(r.URL.Path, "/429/"):
			w.Header().Set("X-RateLimit-Scope", "shared")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = w.Write([]byte(`{"message":"limited","retry_after":0.001,"global":false}`))
		case left > 0:
			w.WriteHeader(http.StatusBadGateway)
		default:
			fmt.Fprintf(w, `{"got":%d}`, n)
		}
	})
	ps := newProxy(t, newLimiter(t, restproxy.Config{RetryBackoff: time.Millisecond}), restproxy.ServerConfig{Upstream: up.URL, Token: "tok"})
	for _, tc := range []struct {
		method, path string
		size, status int
		tries        int
	}{
		{"PUT", "/api/v10/channels/1/5xx/small", 1000, http.StatusOK, 2},
		{"PUT", "/api/v10/channels/2/5xx/large", 100 << 10, http.StatusBadGateway, 1},
		{"POST", "/api/v10/channels/3/5xx/small", 1000, http.StatusBadGateway, 1}, // not idempotent
		{"POST", "/api/v10/channels/4/429/small", 1000, http.StatusOK, 2},
		{"POST", "/api/v10/channels/5/429/large", 100 << 10, http.StatusTooManyRequests, 1},
	} {
		mu.Lock()
		fails[tc.path] = 1
		mu.Unlock()
		before := len(up.seen())
		code, body := do(t, ps.Client(), tc.method, ps.URL+tc.path, bytes.NewReader(bytes.Repeat([]byte("x"), tc.size)))
		tries := len(up.seen()) - before
		if code != tc.status || tries != tc.tries {
			t.Errorf("%s %s (%d bytes): %d after %d tries, want %d after %d", tc.method, tc.path, tc.size, code, tries, tc.status, tc.tries)
		}
		if code == http.StatusOK && body != fmt.Sprintf(`{"got":%d}`, tc.size) {
			t.Errorf("%s %s: the retry sent another body: %s", tc.method, tc.path, body)
		}
	}
}

// zeros is a body of n zero bytes that allocates nothing.
type zeros struct{ n int64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.n <= 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), z.n)]
	clear(p)
	z.n -= int64(len(p))
	return len(p), nil
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func TestRestProxyStreamsLargeUploads(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 200 MiB")
	}
	const size = 200 << 20
	var (
		mu       sync.Mutex
		peak     uint64
		received int64
	)
	base := heapInUse()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 64<<10)
		var n, next int64
		for {
			m, err := r.Body.Read(buf)
			n += int64(m)
			if n >= next { // sample the heap every 16 MiB, while the body streams
				next += 16 << 20
				h := heapInUse()
				mu.Lock()
				peak = max(peak, h)
				mu.Unlock()
			}
			if err != nil {
				break
			}
		}
		mu.Lock()
		received = n
		mu.Unlock()
		w.Header().Set("Via", "1.1 google")
		_, _ = w.Write([]byte(`{}`))
	}))
	defer up.Close()
	ps := newProxy(t, newLimiter(t, restproxy.Config{}), restproxy.ServerConfig{Upstream: up.URL, Token: "tok", MaxBodyBytes: 256 << 20})

	req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, ps.URL+"/api/v10/channels/1/messages", &zeros{size})
	req.ContentLength = size
	req.Header.Set("Content-Type", "multipart/form-data; boundary=x")
	c := &http.Client{Transport: &http.Transport{}}
	defer c.CloseIdleConnections()
	rs, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, rs.Body)
	rs.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	if rs.StatusCode != http.StatusOK || received != size {
		t.Fatalf("%d, upstream got %d bytes; want 200 and %d", rs.StatusCode, received, size)
	}
	growth := int64(peak) - int64(base)
	t.Logf("heap: %.1f MiB before, peak %.1f MiB while 200 MiB streamed", float64(base)/(1<<20), float64(peak)/(1<<20))
	if growth > 8<<20 {
		t.Errorf("the heap grew by %.1f MiB while the body streamed; want at most 8 MiB", float64(growth)/(1<<20))
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }
