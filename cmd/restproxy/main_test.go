package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/gofleet/fleet/discordtest"
)

func TestMain(m *testing.M) {
	setProcs = func(int) {} // GOMAXPROCS is the test binary's
	goleak.VerifyTestMain(m)
}

// syncBuffer is a bytes.Buffer safe for the logger and the test.
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

// env is a fake environment.
func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

// start runs the command in the background until the test ends and
// returns the address it serves.
func start(t *testing.T, args []string, getenv func(string) string, logs io.Writer) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, getenv, logs, ready) }()
	select {
	case addr := <-ready:
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		})
		return addr
	case err := <-done:
		cancel()
		t.Fatalf("run: %v", err)
		return ""
	}
}

func TestRestProxyCommand(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(1))
	defer srv.Close()
	var logs syncBuffer
	addr := start(t, []string{"-addr", "127.0.0.1:0", "-debug"},
		env("RESTPROXY_UPSTREAM", "http://"+srv.Addr(), "RESTPROXY_TOKEN", srv.Token()), &logs)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	get := func(path, auth string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		rs, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Body.Close()
		b, _ := io.ReadAll(rs.Body)
		return rs.StatusCode, string(b)
	}
	// No token: the proxy adds its own.
	if code, body := get("/api/v10/users/@me", ""); code != http.StatusOK || !strings.Contains(body, `"bot":true`) {
		t.Errorf("through the proxy: %d %s", code, body)
	}
	if code, _ := get("/api/v10/users/@me", "Bot "+srv.Token()); code != http.StatusOK {
		t.Errorf("with the bot's own token: %d, want 200", code)
	}
	if code, _ := get("/api/v10/users/@me", "Bot someone-else"); code != http.StatusUnauthorized {
		t.Errorf("with another token: %d, want 401", code)
	}
	if code, body := get("/healthz", ""); code != http.StatusOK || !strings.Contains(body, `"status":"ok"`) {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if code, body := get("/metrics", ""); code != http.StatusOK || !strings.Contains(body, `fleet_rest_requests_total{method="GET",route="/users/@me",status="200"} 2`) ||
		strings.Contains(body, "fleet_shards") {
		t.Errorf("/metrics: %d\n%s", code, body)
	}
	client.CloseIdleConnections()
	t.Cleanup(func() {
		l := logs.String()
		if strings.Contains(l, srv.Token()) || !strings.Contains(l, "proxied") || !strings.Contains(l, "global_limit=50") {
			t.Errorf("logs must show the requests and the limits in force, and not the token:\n%s", l)
		}
	})
}

func TestRestProxyCommandHelp(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"-h"}, env(), &out, nil)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("run -h: %v, want flag.ErrHelp (exit 0)", err)
	}
	for _, want := range []string{"Usage: restproxy", "-token-file", "env RESTPROXY_TOKEN_FILE", "env RESTPROXY_SECRET",
		"env RESTPROXY_ALLOW_UNAUTHENTICATED", "env RESTPROXY_ADDR", "env RESTPROXY_MAX_BODY"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("usage lacks %q:\n%s", want, out.String())
		}
	}
}

func TestRestProxyCommandRefuses(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		env  func(string) string
		want string
	}{
		{"no token", []string{"-addr", "127.0.0.1:0"}, env(), "RESTPROXY_TOKEN"},
		{"two tokens", []string{"-addr", "127.0.0.1:0", "-token-file", empty}, env("RESTPROXY_TOKEN", "t"), "keep one"},
		{"empty token file", []string{"-addr", "127.0.0.1:0", "-token-file", empty}, env(), "is empty"},
		{"bad env value", []string{"-addr", "127.0.0.1:0"}, env("RESTPROXY_TOKEN", "t", "RESTPROXY_GLOBAL_LIMIT", "many"), "RESTPROXY_GLOBAL_LIMIT"},
		{"open address without a secret", []string{"-addr", "0.0.0.0:0"}, env("RESTPROXY_TOKEN", "t"), "-allow-unauthenticated"},
		{"all interfaces without a secret", []string{"-addr", ":0"}, env("RESTPROXY_TOKEN", "t"), "-allow-unauthenticated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(context.Background(), tc.args, tc.env, io.Discard, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "restproxy: restproxy:") {
				t.Errorf("run: %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

func TestRestProxyCommandOpenAddress(t *testing.T) {
	for _, tc := range []struct {
		addr, secret string
		allow, ok    bool
	}{
		{"127.0.0.1:8080", "", false, true},
		{"[::1]:8080", "", false, true},
		{"localhost:8080", "", false, true},
		{":8080", "", false, false},
		{"0.0.0.0:8080", "", false, false},
		{"[::]:8080", "", false, false},
		{"10.1.2.3:8080", "", false, false},
		{"0.0.0.0:8080", "s3cret", false, true},
		{"0.0.0.0:8080", "", true, true},
	} {
		o := options{addr: tc.addr, secret: tc.secret, allowOpen: tc.allow}
		host, _, _ := net.SplitHostPort(tc.addr)
		var err error
		if !loopbackHost(host) {
			err = o.checkOpen(tc.addr)
		}
		if (err == nil) != tc.ok {
			t.Errorf("%s secret=%q allow=%t: %v, want ok=%t", tc.addr, tc.secret, tc.allow, err, tc.ok)
		}
	}
}

func TestRestProxyCommandFlagsInREADME(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	_ = run(context.Background(), []string{"-h"}, env(), &out, nil)
	n := 0
	for _, line := range strings.Split(out.String(), "\n") {
		name, ok := strings.CutPrefix(strings.TrimSpace(line), "env ")
		if !ok {
			continue
		}
		n++
		if !strings.Contains(string(readme), "`"+name+"`") {
			t.Errorf("README does not document %s", name)
		}
	}
	if n < 15 {
		t.Errorf("usage lists %d environment variables, want one per flag:\n%s", n, out.String())
	}
}

func TestRestProxyCommandErrorHasOnePrefix(t *testing.T) {
	err := run(context.Background(), []string{"-global-limit", "-1"}, env("RESTPROXY_TOKEN", "t"), io.Discard, nil)
	if err == nil {
		t.Fatal("a negative global limit was accepted")
	}
	for _, e := range []error{err, errors.New("listen tcp: address in use")} {
		if line := errorLine(e); strings.Count(line, "restproxy:") != 1 || !strings.HasPrefix(line, "restproxy: ") {
			t.Errorf("%q, want one prefix", line)
		}
	}
}

func TestRestProxyCommandProcs(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		want int
	}{
		{"default", nil, nil, 1},
		{"flag", []string{"-procs", "4"}, nil, 4},
		{"variable", nil, []string{"RESTPROXY_PROCS", "2"}, 2},
		{"go's default", []string{"-procs", "0"}, nil, 0},
		{"GOMAXPROCS kept", nil, []string{"GOMAXPROCS", "3"}, 0},
		{"flag over GOMAXPROCS", []string{"-procs", "2"}, []string{"GOMAXPROCS", "3"}, 2},
		{"variable over GOMAXPROCS", nil, []string{"GOMAXPROCS", "3", "RESTPROXY_PROCS", "1"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parse(tc.args, env(append([]string{"RESTPROXY_TOKEN", "t"}, tc.env...)...), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if o.procs != tc.want {
				t.Errorf("procs %d, want %d", o.procs, tc.want)
			}
		})
	}
	if _, err := parse([]string{"-procs", "-1"}, env("RESTPROXY_TOKEN", "t"), io.Discard); err == nil || !strings.Contains(err.Error(), "-procs") {
		t.Errorf("-procs -1: %v, want an error naming -procs", err)
	}

	// run applies it before serving.
	var got []int
	setProcs = func(n int) { got = append(got, n) }
	t.Cleanup(func() { setProcs = func(int) {} })
	srv := discordtest.NewServer(discordtest.WithGuilds(1))
	defer srv.Close()
	start(t, []string{"-addr", "127.0.0.1:0"}, env("RESTPROXY_UPSTREAM", "http://"+srv.Addr(), "RESTPROXY_TOKEN", srv.Token()), io.Discard)
	if len(got) != 1 || got[0] != 1 {
		t.Errorf("GOMAXPROCS set to %v, want [1]", got)
	}
}
