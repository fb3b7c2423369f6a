package metrics

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/runtime"
)

const adminToken = "correct-horse-battery-staple"

func TestAdminOperations(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(2),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f := startFleet(t, s, 2, HandlerOptions{AdminToken: adminToken, Logger: log})
	done := make(chan runtime.EventKind, 8)
	f.rt.Subscribe(func(e runtime.Event) {
		switch e.(type) {
		case runtime.SoftRestartDone, runtime.ClusterRestarted:
			done <- e.Kind()
		}
	})

	cases := []struct {
		name, method, path, token string
		want                      int
	}{
		{"no token", http.MethodPost, "/admin/clusters/0/soft-restart", "", http.StatusUnauthorized},
		{"wrong token", http.MethodPost, "/admin/clusters/0/soft-restart", "wrong", http.StatusUnauthorized},
		{"token prefix", http.MethodPost, "/admin/clusters/0/soft-restart", adminToken[:5], http.StatusUnauthorized},
		{"GET", http.MethodGet, "/admin/clusters/0/soft-restart", adminToken, http.StatusMethodNotAllowed},
		{"bad id", http.MethodPost, "/admin/clusters/x/soft-restart", adminToken, http.StatusBadRequest},
		{"unknown cluster", http.MethodPost, "/admin/clusters/7/restart", adminToken, http.StatusNotFound},
		{"unknown op", http.MethodPost, "/admin/clusters/0/explode", adminToken, http.StatusNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if code, body := f.do(t, tc.method, tc.path, tc.token, ""); code != tc.want {
				t.Fatalf("%s %s: %d %s, want %d", tc.method, tc.path, code, body, tc.want)
			}
		})
	}
	if len(done) != 0 {
		t.Fatal("a refused request restarted a cluster")
	}

	if code, body := f.do(t, http.MethodPost, "/admin/clusters/0/soft-restart", adminToken, ""); code != http.StatusOK {
		t.Fatalf("soft restart: %d %s", code, body)
	}
	if k := next(t, done); k != runtime.EventSoftRestartDone {
		t.Fatalf("event %s after a soft restart", k)
	}
	if code, body := f.do(t, http.MethodPost, "/admin/clusters/1/restart", adminToken, ""); code != http.StatusOK {
		t.Fatalf("restart: %d %s", code, body)
	}
	// "done" means the new instance serves: every shard is ready again.
	if st := f.rt.Workers().Clusters[1].State; st != "ready" {
		t.Fatalf("cluster 1 is %s when its restart answered done", st)
	}
	if k := next(t, done); k != runtime.EventClusterRestarted {
		t.Fatalf("event %s after a restart", k)
	}
	if got := sum(f.scrape(t), "fleet_cluster_restarts_total", map[string]string{"cluster": "1"}); got != 1 {
		t.Fatalf("fleet_cluster_restarts_total{cluster=1} %v", got)
	}
	// The runtime restarts services too; the restarts are counted.
	for _, op := range []string{"restart", "soft-restart"} {
		if code, body := f.do(t, http.MethodPost, "/admin/services/store/"+op, adminToken, ""); code != http.StatusOK {
			t.Fatalf("service %s: %d %s", op, code, body)
		}
	}
	waitFor(t, "service restarts counted", func() bool {
		return sum(f.scrape(t), "fleet_service_restarts_total", map[string]string{"service": "store"}) == 2
	})
	if code, body := f.do(t, http.MethodPost, "/admin/services/nope/restart", adminToken, ""); code != http.StatusNotFound {
		t.Fatalf("restart of an unknown service: %d %s, want 404", code, body)
	}
	if strings.Contains(logs.String(), adminToken) {
		t.Fatal("the admin token is in the log")
	}
	if !strings.Contains(logs.String(), "admin request refused") || !strings.Contains(logs.String(), "op=soft_restart") {
		t.Fatalf("log:\n%s", logs.String())
	}
	if _, body := f.get(t, "/metrics"); strings.Contains(body, adminToken) {
		t.Fatal("the admin token is in /metrics")
	}
}

func next[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("nothing came in 10s")
	}
	panic("unreachable")
}

func TestAdminDisabledWithoutToken(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(4))
	defer s.Close()
	rt, err := runtime.New(runtime.Config{Token: runtime.Token(s.Token()), Bot: nopBot, RESTURL: s.RESTURL()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(Handler(rt, nil, HandlerOptions{}))
	defer srv.Close()
	for _, path := range []string{"/admin/clusters/0/soft-restart", "/admin/clusters/0/restart", "/admin/reshard", "/admin/services/store/restart"} {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+path, nil)
		req.Header.Set("Authorization", "Bearer anything")
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("POST %s with operations disabled: %d, want 404", path, resp.StatusCode)
		}
	}
	// Without a gatherer there is no /metrics; without a running fleet
	// /healthz says so.
	for path, want := range map[string]int{"/metrics": http.StatusNotFound, "/healthz": http.StatusServiceUnavailable, "/status": http.StatusOK} {
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
}

// fakeOperator records the operations and fails with err; the
// operations it does not define panic (the nil Fleet).
type fakeOperator struct {
	runtime.Fleet
	mu    sync.Mutex
	calls []string
	err   error
}

func (o *fakeOperator) record(s string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, s)
	return o.err
}

func (o *fakeOperator) SoftRestart(_ context.Context, c int) error {
	return o.record(fmt.Sprintf("soft %d", c))
}
func (o *fakeOperator) Restart(_ context.Context, c int) error {
	return o.record(fmt.Sprintf("hard %d", c))
}
func (o *fakeOperator) ShutdownCluster(_ context.Context, c int) error {
	return o.record(fmt.Sprintf("shutdown %d", c))
}
func (o *fakeOperator) Shutdown(context.Context) error { return o.record("shutdown") }
func (o *fakeOperator) StartReshard(_ context.Context, opts runtime.ReshardOptions) (runtime.Operation, error) {
	return runtime.Operation{ID: "reshard-1", State: runtime.OperationRunning}, o.record(fmt.Sprintf("reshard %d %d", opts.Shards, opts.Clusters))
}
func (o *fakeOperator) RestartService(_ context.Context, name string) error {
	return o.record("service restart " + name)
}
func (o *fakeOperator) SoftRestartService(_ context.Context, name string) error {
	return o.record("service soft " + name)
}
func (o *fakeOperator) ShutdownService(_ context.Context, name string) error {
	return o.record("service shutdown " + name)
}
func (o *fakeOperator) RestartAllServices(context.Context) error {
	return o.record("services restart")
}

func TestAdminOperatorAndErrors(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(4))
	defer s.Close()
	rt, err := runtime.New(runtime.Config{Token: runtime.Token(s.Token()), Bot: nopBot, RESTURL: s.RESTURL()})
	if err != nil {
		t.Fatal(err)
	}
	op := &fakeOperator{}
	srv := httptest.NewServer(Handler(rt, nil, HandlerOptions{AdminToken: adminToken, Operator: op}))
	defer srv.Close()
	post := func(path, body string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, srv.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		path, body string
		want       int
	}{
		{"/admin/reshard", `{"shards":8,"clusters":2}`, http.StatusAccepted},
		{"/admin/reshard", ``, http.StatusBadRequest},
		{"/admin/reshard", `{}`, http.StatusAccepted},
		{"/admin/reshard", `{"shards":-1}`, http.StatusBadRequest},
		{"/admin/reshard", `{"shard":8}`, http.StatusBadRequest},
		{"/admin/reshard", `{"shards":`, http.StatusBadRequest},
		{"/admin/services/store/restart", ``, http.StatusOK},
		{"/admin/services/store/soft-restart", ``, http.StatusOK},
		{"/admin/services/store/shutdown", ``, http.StatusOK},
		{"/admin/services/restart", ``, http.StatusOK},
		{"/admin/clusters/3/soft-restart", ``, http.StatusOK},
		{"/admin/clusters/3/restart", ``, http.StatusOK},
		{"/admin/clusters/3/shutdown", ``, http.StatusOK},
		{"/admin/shutdown", ``, http.StatusOK},
	} {
		if got := post(c.path, c.body); got != c.want {
			t.Fatalf("POST %s %s: %d, want %d", c.path, c.body, got, c.want)
		}
	}
	want := "[reshard 8 2 reshard 0 0 service restart store service soft store service shutdown store services restart soft 3 hard 3 shutdown 3 shutdown]"
	if got := fmt.Sprint(op.calls); got != want {
		t.Fatalf("calls %s, want %s", got, want)
	}
	for err, code := range map[error]int{
		fmt.Errorf("no: %w", errors.ErrUnsupported):            http.StatusNotImplemented,
		fmt.Errorf("x: %w", runtime.ErrUnknownCluster):         http.StatusNotFound,
		fmt.Errorf("%w: use 4 or 8", runtime.ErrCannotReshard): http.StatusBadRequest,
		runtime.ErrNotRunning:                                  http.StatusServiceUnavailable,
		runtime.ErrReshardInProgress:                           http.StatusConflict,
		fmt.Errorf("x: %w", context.DeadlineExceeded):          http.StatusGatewayTimeout,
		errors.New("boom"):                                     http.StatusInternalServerError,
	} {
		op.err = err
		if got := post("/admin/services/x/restart", ""); got != code {
			t.Fatalf("error %v: %d, want %d", err, got, code)
		}
	}
}

func TestTokenRedacted(t *testing.T) {
	tok := Token(adminToken)
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "token", tok)
	if s := fmt.Sprint(tok) + fmt.Sprintf("%v %s", tok, tok) + buf.String(); strings.Contains(s, adminToken) {
		t.Fatalf("token printed: %s", s)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestAdminLongOperationsAnswer202(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(2),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	f := startFleet(t, s, 2, HandlerOptions{AdminToken: adminToken})
	poll := func(url string) runtime.Operation {
		t.Helper()
		var op runtime.Operation
		waitFor(t, "operation done", func() bool {
			code, body := f.do(t, http.MethodGet, url, adminToken, "")
			if code != http.StatusOK {
				t.Fatalf("GET %s: %d %s", url, code, body)
			}
			if err := json.Unmarshal([]byte(body), &op); err != nil {
				t.Fatal(err)
			}
			return op.State != runtime.OperationRunning
		})
		return op
	}
	for _, tc := range []struct{ path, body, kind string }{
		{"/admin/reshard", `{"shards":4}`, runtime.OperationReshard},
		{"/admin/clusters/soft-restart", "", runtime.OperationSoftRestartAll},
	} {
		code, body := f.do(t, http.MethodPost, tc.path, adminToken, tc.body)
		var started struct {
			runtime.Operation
			URL string `json:"url"`
		}
		if err := json.Unmarshal([]byte(body), &started); err != nil || code != http.StatusAccepted ||
			started.Kind != tc.kind || started.URL != "/admin/operations/"+started.ID {
			t.Fatalf("POST %s: %d %s, want 202 with the operation's URL", tc.path, code, body)
		}
		if op := poll(started.URL); op.State != runtime.OperationDone || op.Done != op.Of || op.Of == 0 {
			t.Fatalf("%s: %+v, want done", tc.path, op)
		}
	}
	if code, _ := f.do(t, http.MethodGet, "/admin/operations/reshard-99", adminToken, ""); code != http.StatusNotFound {
		t.Fatalf("unknown operation: %d, want 404", code)
	}
}

// GET / lists the operations only to a caller with the admin token, and a
// bot token sent by mistake is refused with a 401 that says so.
func TestAdminIndexAndBotToken(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(4))
	defer s.Close()
	rt, err := runtime.New(runtime.Config{Token: runtime.Token(s.Token()), Bot: nopBot, RESTURL: s.RESTURL()})
	if err != nil {
		t.Fatal(err)
	}
	const adminToken = "admin-secret"
	srv := httptest.NewServer(Handler(rt, nil, HandlerOptions{AdminToken: adminToken}))
	defer srv.Close()
	get := func(method, path, auth string) (int, string) {
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if _, body := get(http.MethodGet, "/", ""); strings.Contains(body, "/admin/") {
		t.Errorf("GET / without the token lists the operations:\n%s", body)
	}
	if _, body := get(http.MethodGet, "/", "Bearer "+adminToken); !strings.Contains(body, "POST /admin/reshard") {
		t.Errorf("GET / with the token does not list the operations:\n%s", body)
	}
	code, body := get(http.MethodPost, "/admin/clusters/0/restart", "Bot "+s.Token())
	if code != http.StatusUnauthorized || !strings.Contains(body, "looks like a bot token") || strings.Contains(body, s.Token()) {
		t.Errorf("POST with a bot token: %d %s, want 401 saying it looks like a bot token, without the token", code, body)
	}
}

// The admin API answers what cannot be done with a 4xx and the runtime's
// message, whether its operator is the runtime or a runtime.Client on
// the runtime's bus; a reshard to the current count answers 200, says
// nothing changed, and identifies no shard.
func TestAdminAnswersBadRequestsAndUnchangedReshards(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(2),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(time.Millisecond),
		discordtest.WithSessionStartLimit(5, time.Hour),   // 3 left once the fleet runs
		discordtest.WithRouteRateLimit(1000, time.Second)) // each refused reshard asks GET /gateway/bot
	defer s.Close()
	f := startFleet(t, s, 2, HandlerOptions{AdminToken: adminToken})
	overBus := httptest.NewServer(Handler(f.rt, nil, HandlerOptions{AdminToken: adminToken, Operator: runtime.NewClient(f.rt.Bus())}))
	defer overBus.Close()
	for name, srv := range map[string]*httptest.Server{"runtime": f.srv, "client": overBus} {
		t.Run(name, func(t *testing.T) {
			g := &fleet{srv: srv}
			before := s.Stats().Identifies
			for _, c := range []struct {
				method, path, body string
				code               int
				want               string
			}{
				{http.MethodPost, "/admin/reshard", `{"shards":3}`, http.StatusBadRequest, "must be a multiple of 2 (max_concurrency 2): use 2 or 4"},
				{http.MethodPost, "/admin/reshard", `{"shards":8}`, http.StatusBadRequest, "needs 8 session starts but 3 remain today"},
				{http.MethodPost, "/admin/reshard", `{"shards":2,"clusters":3}`, http.StatusBadRequest, "Clusters (3) > Shards (2): lower Clusters"},
				{http.MethodPost, "/admin/reshard", `{"shards":2}`, http.StatusOK, "unchanged: the fleet already runs 2 shards in 2 clusters"},
				{http.MethodPost, "/admin/reshard", `{"shards":2,"clusters":2}`, http.StatusOK, "unchanged"},
				{http.MethodPost, "/admin/clusters/7/restart", ``, http.StatusNotFound, "unknown cluster 7"},
				{http.MethodPost, "/admin/clusters/7/shutdown", ``, http.StatusNotFound, "unknown cluster 7"},
				{http.MethodPost, "/admin/services/nope/restart", ``, http.StatusNotFound, `unknown service`},
				{http.MethodPost, "/admin/services/nope/shutdown", ``, http.StatusNotFound, `unknown service`},
				{http.MethodGet, "/admin/operations/reshard-99", ``, http.StatusNotFound, "unknown operation"},
			} {
				code, body := g.do(t, c.method, c.path, adminToken, c.body)
				if code != c.code || !strings.Contains(body, c.want) {
					t.Errorf("%s %s %s: %d %s, want %d saying %q", c.method, c.path, c.body, code, body, c.code, c.want)
				}
			}
			if n := s.Stats().Identifies; n != before {
				t.Errorf("%d IDENTIFYs during refused and unchanged reshards, want 0", n-before)
			}
		})
	}
}
