package restproxy_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/disgoorg/disgo/rest"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/restproxy"
)

// newProxy serves a restproxy.Server for upstream on a loopback port.
func newProxy(t testing.TB, l *restproxy.Limiter, cfg restproxy.ServerConfig) *httptest.Server {
	t.Helper()
	p, err := restproxy.NewServer(l, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ps := httptest.NewServer(p)
	t.Cleanup(func() {
		ps.Close()
		p.Close()
	})
	return ps
}

func TestRestProxySharesLimitsAcrossClients(t *testing.T) {
	// Windows of 200 ms: long next to how late an answer is read under
	// -race on a loaded machine.
	const perClient, limit, window = 40, 10, 200 * time.Millisecond
	srv := newSim(t, discordtest.WithGuilds(1), discordtest.WithGuildShape(2, 2, 0),
		discordtest.WithRouteRateLimit(limit, window), discordtest.WithGlobalRateLimit(100_000, time.Second))
	l := newLimiter(t, restproxy.Config{GlobalLimit: 100_000})
	ps := newProxy(t, l, restproxy.ServerConfig{Upstream: "http://" + srv.Addr(), Token: srv.Token()})
	// Two processes, each with a plain disgo client that has no limiter
	// of its own: the proxy's is the only one.
	clients := []rest.Rest{
		newClient(t, ps.URL+"/api/v10", srv.Token(), rest.WithRateLimiter(rest.NewNoopRateLimiter())),
		newClient(t, ps.URL+"/api/v10", srv.Token(), rest.WithRateLimiter(rest.NewNoopRateLimiter())),
	}
	errs, elapsed := postAll(clients, perClient, channels(srv, 2))
	if len(errs) > 0 {
		t.Fatalf("%d requests failed, first: %v", len(errs), errs[0])
	}
	st := srv.Stats().REST
	if len(st.RateLimited) != 0 {
		t.Errorf("429s through the proxy: %v, want none", st.RateLimited)
	}
	if st.Requests[routeCreateMessage] != 2*perClient {
		t.Errorf("simulator got %d requests, want %d", st.Requests[routeCreateMessage], 2*perClient)
	}
	t.Logf("%d messages through the proxy in %s; the limits allow %s", 2*perClient, elapsed, minTime(perClient, limit, window))
}

func TestRestProxyPassesAnswersThrough(t *testing.T) {
	var got struct {
		method, path, query, auth, contentType string
		body                                   []byte
	}
	body := []byte(`{"message": "Unknown Channel", "code": 10003}`)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.method, got.path, got.query = r.Method, r.URL.Path, r.URL.RawQuery
		got.auth, got.contentType = r.Header.Get("Authorization"), r.Header.Get("Content-Type")
		got.body, _ = io.ReadAll(r.Body)
		h := w.Header()
		h.Set("Via", "1.1 google")
		h.Set("Content-Type", "application/json")
		h.Set("X-RateLimit-Limit", "5")
		h.Set("X-RateLimit-Remaining", "4")
		h.Set("X-RateLimit-Reset", "1700000000.123")
		h.Set("X-RateLimit-Reset-After", "1.000")
		h.Set("X-RateLimit-Bucket", "abcd1234")
		h.Add("X-Custom", "one")
		h.Add("X-Custom", "two")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write(body)
	}))
	defer upstream.Close()
	ps := newProxy(t, newLimiter(t, restproxy.Config{}), restproxy.ServerConfig{Upstream: upstream.URL, Token: "secret-token"})

	sent := []byte(`{"content":"hi"}`)
	req, _ := http.NewRequest(http.MethodPost, ps.URL+"/api/v10/channels/123/messages?x=1&y=%20z", bytes.NewReader(sent))
	req.Header.Set("Authorization", "Bot secret-token")
	req.Header.Set("Content-Type", "application/json")
	rs, err := ps.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Body.Close()
	gotBody, _ := io.ReadAll(rs.Body)
	if rs.StatusCode != http.StatusNotFound || !bytes.Equal(gotBody, body) {
		t.Errorf("got %d %q, want 404 %q", rs.StatusCode, gotBody, body)
	}
	for _, k := range []string{"Via", "Content-Type", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-RateLimit-Reset-After", "X-RateLimit-Bucket"} {
		if rs.Header.Get(k) == "" {
			t.Errorf("header %s lost", k)
		}
	}
	if v := rs.Header.Values("X-Custom"); len(v) != 2 || v[0] != "one" || v[1] != "two" {
		t.Errorf("X-Custom %q, want [one two]", v)
	}
	if got.method != http.MethodPost || got.path != "/api/v10/channels/123/messages" || got.query != "x=1&y=%20z" ||
		got.auth != "Bot secret-token" || got.contentType != "application/json" || !bytes.Equal(got.body, sent) {
		t.Errorf("upstream got %+v", got)
	}
}

func TestRestNewServerValidates(t *testing.T) {
	l := newLimiter(t, restproxy.Config{})
	for _, up := range []string{"discord.com", "ftp://discord.com", "http://"} {
		if _, err := restproxy.NewServer(l, restproxy.ServerConfig{Upstream: up, Token: "t"}); err == nil {
			t.Errorf("Upstream %q accepted", up)
		}
	}
	for _, cfg := range []restproxy.ServerConfig{
		{}, {Token: "Bot "}, {Token: "a b"},
		{Token: "t", MaxBodyBytes: -1}, {Token: "t", BodyTimeout: -time.Second},
	} {
		_, err := restproxy.NewServer(l, cfg)
		if err == nil || strings.Count(err.Error(), "restproxy:") != 1 {
			t.Errorf("%+v: %v, want one error saying what to change", cfg, err)
		}
	}
	if _, err := restproxy.NewServer(nil, restproxy.ServerConfig{Token: "t"}); err == nil {
		t.Error("nil Limiter accepted")
	}
}
