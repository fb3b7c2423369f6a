package restproxy

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// newTestUpstream returns the upstream client of srv (TLS ones trusted),
// closed when the test ends.
func newTestUpstream(t *testing.T, srv *httptest.Server) *upstream {
	t.Helper()
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	up := newUpstream(u)
	if up == nil {
		t.Skip("no upstream client on this platform")
	}
	if srv.TLS != nil {
		pool := x509.NewCertPool()
		pool.AddCert(srv.Certificate())
		up.tls.RootCAs = pool
		up.tls.ServerName = "example.com" // httptest's certificate
	}
	t.Cleanup(up.close)
	return up
}

// get sends a request through up and returns the answer's status and
// body.
func get(t *testing.T, up *upstream, ctx context.Context, method, target, body string) (int, string, error) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, r)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := up.roundTrip(req)
	if err != nil {
		return 0, "", err
	}
	b, err := io.ReadAll(rs.Body)
	_ = rs.Body.Close()
	return rs.StatusCode, string(b), err
}

// countConns counts the connections srv accepts.
func countConns(srv *httptest.Server) *atomic.Int64 {
	var n atomic.Int64
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			n.Add(1)
		}
	}
	return &n
}

// modes runs test with idle connections watched and peeked at.
func modes(t *testing.T, test func(t *testing.T, watch bool)) {
	for _, watch := range []bool{true, false} {
		name := "peek"
		if watch {
			name = "watch"
		}
		t.Run(name, func(t *testing.T) { test(t, watch) })
	}
}

func TestUpstreamReusesConnections(t *testing.T) { modes(t, testUpstreamReusesConnections) }

func testUpstreamReusesConnections(t *testing.T, watch bool) {
	for _, tc := range []struct {
		name  string
		start func(*httptest.Server)
	}{{"http", (*httptest.Server).Start}, {"https", (*httptest.Server).StartTLS}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.Path, b)
			}))
			conns := countConns(srv)
			tc.start(srv)
			defer srv.Close()
			up := newTestUpstream(t, srv)
			up.watch = watch
			for i := range 20 {
				status, body, err := get(t, up, context.Background(), http.MethodPost, srv.URL+"/api/v10/x", fmt.Sprint(i))
				if want := fmt.Sprintf("POST /api/v10/x %d", i); err != nil || status != 200 || body != want {
					t.Fatalf("request %d: %d %q %v; want 200 %q", i, status, body, err, want)
				}
			}
			if n := conns.Load(); n != 1 {
				t.Errorf("20 requests one after another opened %d connections, want 1", n)
			}
		})
	}
}

// TestUpstreamSkipsConnectionsClosedWhileIdle has the server close each
// connection after its answer, without saying so: the next request, a
// POST that must not be sent twice, finds the connection closed before
// it writes, and goes on a new one.
func TestUpstreamSkipsConnectionsClosedWhileIdle(t *testing.T) {
	modes(t, testUpstreamSkipsConnectionsClosedWhileIdle)
}

func testUpstreamSkipsConnectionsClosedWhileIdle(t *testing.T, watch bool) {
	var requests atomic.Int64
	closed := make(chan struct{}, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("Content-Length", "2")
		_, _ = io.WriteString(w, "ok")
		w.(http.Flusher).Flush()
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			_ = c.Close()
		}
		closed <- struct{}{}
	}))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()
	up := newTestUpstream(t, srv)
	up.watch = watch
	for i := range 3 {
		if status, body, err := get(t, up, context.Background(), http.MethodPost, srv.URL+"/api/v10/x", "m"); err != nil || status != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q %v", i, status, body, err)
		}
		<-closed
		// The close reaches the idle connection's socket a moment later.
		// (A request taking it before would fail, as with the Transport.)
		waitClosed(t, up)
	}
	if n := requests.Load(); n != 3 {
		t.Errorf("the server got %d requests, want 3 (none sent twice)", n)
	}
	if n := conns.Load(); n != 3 {
		t.Errorf("%d connections, want 3", n)
	}
}

// waitClosed waits until the idle connection of up reads its end: its
// watch says so (and leaves what it read for get), or its socket then
// keeps saying so.
func waitClosed(t *testing.T, up *upstream) {
	t.Helper()
	up.mu.Lock()
	c := up.idle[len(up.idle)-1]
	up.mu.Unlock()
	if !up.watch {
		_ = c.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.br.Peek(1); err != io.EOF {
			t.Fatalf("idle connection: %v, want EOF", err)
		}
		_ = c.nc.SetReadDeadline(time.Time{})
		return
	}
	select {
	case err := <-c.seen:
		c.seen <- err
		if err != io.EOF {
			t.Fatalf("idle connection: %v, want EOF", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the idle connection did not read its end within 30s")
	}
}

func TestUpstreamSkipsInformationalAnswers(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</x>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, "made")
	}))
	defer srv.Close()
	up := newTestUpstream(t, srv)
	for i := range 2 {
		if status, body, err := get(t, up, context.Background(), http.MethodPost, srv.URL+"/x", "b"); err != nil || status != 201 || body != "made" {
			t.Fatalf("request %d: %d %q %v; want 201 \"made\"", i, status, body, err)
		}
	}
}

// TestUpstreamCallerGoneClosesConnection: a request whose context ends
// while Discord has not answered returns the context's error and closes
// its connection, which the server sees.
func TestUpstreamCallerGoneClosesConnection(t *testing.T) {
	arrived, gone := make(chan struct{}), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		select {
		case <-r.Context().Done():
			close(gone)
		case <-time.After(time.Minute):
		}
	}))
	defer srv.Close()
	up := newTestUpstream(t, srv)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, _, err := get(t, up, ctx, http.MethodGet, srv.URL+"/x", "")
		errc <- err
	}()
	<-arrived
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the request did not end within 30s of its context")
	}
	select {
	case <-gone:
	case <-time.After(30 * time.Second):
		t.Fatal("the server did not see the connection close within 30s")
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	if len(up.idle) != 0 {
		t.Errorf("%d idle connections after a cancelled request, want 0", len(up.idle))
	}
}

// TestUpstreamKeepsOnlyFinishedConnections: a connection goes back to the
// pool only when its answer was read to the end and Discord did not ask
// to close it.
func TestUpstreamKeepsOnlyFinishedConnections(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
		}
		_, _ = io.WriteString(w, strings.Repeat("x", 10<<10))
	}))
	defer srv.Close()
	up := newTestUpstream(t, srv)
	idle := func() int {
		up.mu.Lock()
		defer up.mu.Unlock()
		return len(up.idle)
	}
	if _, _, err := get(t, up, context.Background(), http.MethodGet, srv.URL+"/read", ""); err != nil || idle() != 1 {
		t.Fatalf("answer read: err %v, %d idle; want 1", err, idle())
	}
	if _, _, err := get(t, up, context.Background(), http.MethodGet, srv.URL+"/close", ""); err != nil || idle() != 0 {
		t.Fatalf("Connection: close: err %v, %d idle; want 0", err, idle())
	}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/unread", nil)
	rs, err := up.roundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = bufio.NewReader(rs.Body).Peek(10)
	_ = rs.Body.Close()
	if idle() != 0 {
		t.Errorf("answer closed unread: %d idle, want 0", idle())
	}
	if _, err := rs.Body.Read(make([]byte, 1)); err == nil {
		t.Error("a closed body still reads")
	}
}

func TestUpstreamAddress(t *testing.T) {
	for _, tc := range []struct {
		url, addr, name string
	}{
		{"https://discord.com", "discord.com:443", "discord.com"},
		{"http://127.0.0.1:8000/prefix", "127.0.0.1:8000", ""},
		{"http://[::1]", "[::1]:80", ""},
	} {
		u, _ := url.Parse(tc.url)
		up := newUpstream(u)
		if up == nil {
			t.Skip("no upstream client here (platform, or a proxy in the environment)")
		}
		name := ""
		if up.tls != nil {
			name = up.tls.ServerName
		}
		if up.addr != tc.addr || name != tc.name {
			t.Errorf("%s: address %q, TLS server name %q; want %q, %q", tc.url, up.addr, name, tc.addr, tc.name)
		}
	}
}
