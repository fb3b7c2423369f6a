package metrics

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gofleet/fleet/admin"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/services"
	"github.com/gofleet/fleet/shardgroup"
)

// Token is the admin token. It redacts itself in logs and formatted
// output.
type Token string

// String keeps the token out of formatted output.
func (Token) String() string { return "REDACTED" }

// GoString keeps the token out of %#v.
func (Token) GoString() string { return `"REDACTED"` }

// MarshalText keeps the token out of JSON and other encodings.
func (Token) MarshalText() ([]byte, error) { return []byte("REDACTED"), nil }

// LogValue keeps the token out of logs.
func (Token) LogValue() slog.Value { return slog.StringValue("REDACTED") }

// HandlerOptions configure Handler. The zero value serves /metrics,
// /healthz and /status, and no operation.
type HandlerOptions struct {
	// AdminToken enables the POST /admin/ operations, which then need
	// "Authorization: Bearer <AdminToken>". Empty: they answer 404.
	AdminToken Token
	// Operator performs the operations (default: the runtime). A
	// runtime.Client serves them for a runtime reached over its bus. An
	// operation it does not support returns an error wrapping
	// errors.ErrUnsupported, which the handler answers with 501.
	Operator runtime.Fleet
	// ResumeGrace is how long a shard may be resuming and still count as
	// healthy (default 30 s): a RESUME takes a moment, an outage longer.
	// Negative: resuming shards are always healthy.
	ResumeGrace time.Duration
	// OperationTimeout bounds an operation the handler waits for (default
	// 5 minutes). The long ones (a reshard, a rolling restart) are not
	// waited for.
	OperationTimeout time.Duration
	// Logger records the operations asked for and their results
	// (default: no logs).
	Logger *slog.Logger
}

// Handler returns the admin handler for the attached runtime (see
// Register): GET /metrics (from Register's registry when it is a
// prometheus.Gatherer; otherwise 404), GET /healthz, GET /status, and the
// POST /admin/ operations (see the package documentation). It binds
// nothing: mount it on a server of your own, on a loopback or private
// address. It panics if no runtime is attached.
func (m *Metrics) Handler(opts HandlerOptions) http.Handler {
	m.attachMu.Lock()
	rt := m.attached
	m.attachMu.Unlock()
	if rt == nil {
		panic("metrics: Handler with no runtime attached: use Register")
	}
	return newHandler(rt, m.gatherer, opts, m.down)
}

// Handler is Metrics.Handler for a runtime without collectors, or with a
// gatherer of your own: it subscribes to rt's events to learn when shards
// disconnect; build one per runtime. It panics if rt is nil.
func Handler(rt *runtime.Runtime, g prometheus.Gatherer, opts HandlerOptions) http.Handler {
	if rt == nil {
		panic("metrics: Handler with a nil runtime")
	}
	down := newDownTracker()
	rt.Subscribe(func(e runtime.Event) {
		if e, ok := e.(runtime.ShardDisconnected); ok {
			down.left(e.Shard, time.Now())
		}
	})
	return newHandler(rt, g, opts, down)
}

func newHandler(rt *runtime.Runtime, g prometheus.Gatherer, opts HandlerOptions, down *downTracker) http.Handler {
	if opts.ResumeGrace == 0 {
		opts.ResumeGrace = 30 * time.Second
	}
	if opts.OperationTimeout <= 0 {
		opts.OperationTimeout = 5 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	h := &handler{rt: rt, opts: opts, log: opts.Logger.With("component", "admin"), down: down}
	h.op = opts.Operator
	if h.op == nil {
		h.op = rt
	}
	if opts.AdminToken != "" {
		sum := sha256.Sum256([]byte(opts.AdminToken))
		h.token = sum[:]
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", h.index)
	if g != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("GET /healthz", h.healthz)
	mux.HandleFunc("GET /status", h.status)
	// The status page, with its operator controls when operations are on.
	page := admin.PageOptions{Logger: opts.Logger}
	if h.token != nil {
		page.Operations = "../admin/"
	}
	mux.Handle("/page/", http.StripPrefix("/page", admin.StatusPage(rt, page)))
	admin := http.NewServeMux()
	for _, route := range h.routes() {
		admin.HandleFunc(route.pattern, route.handle)
	}
	mux.Handle("/admin/", h.authorized(admin))
	return mux
}

// adminRoute is one admin operation: its pattern, the Fleet method it
// calls, and its handler.
type adminRoute struct {
	pattern, method string
	handle          http.HandlerFunc
}

// routes are the admin operations, named as the Fleet methods they call.
func (h *handler) routes() []adminRoute {
	return []adminRoute{
		{"POST /admin/clusters/{id}/soft-restart", "SoftRestart", h.clusterOp("soft_restart", h.op.SoftRestart)},
		{"POST /admin/clusters/{id}/restart", "Restart", h.clusterOp("restart", h.op.Restart)},
		{"POST /admin/clusters/{id}/shutdown", "ShutdownCluster", h.clusterOp("shutdown_cluster", h.op.ShutdownCluster)},
		{"POST /admin/clusters/soft-restart", "SoftRestartAll (202, an operation)", h.startAll("soft_restart_all", h.op.StartSoftRestartAll)},
		{"POST /admin/clusters/restart", "RestartAll (202, an operation)", h.startAll("restart_all", h.op.StartRestartAll)},
		{"POST /admin/reshard", `Reshard (202, an operation); body {"shards": n, "clusters": m}`, h.reshard},
		{"POST /admin/shutdown", "Shutdown", h.fleetOp("shutdown", h.op.Shutdown)},
		{"POST /admin/services/{name}/soft-restart", "SoftRestartService", h.serviceOp("soft_restart_service", h.op.SoftRestartService)},
		{"POST /admin/services/{name}/restart", "RestartService", h.serviceOp("restart_service", h.op.RestartService)},
		{"POST /admin/services/{name}/shutdown", "ShutdownService", h.serviceOp("shutdown_service", h.op.ShutdownService)},
		{"POST /admin/services/soft-restart", "SoftRestartAllServices", h.fleetOp("soft_restart_all_services", h.op.SoftRestartAllServices)},
		{"POST /admin/services/restart", "RestartAllServices", h.fleetOp("restart_all_services", h.op.RestartAllServices)},
		{"GET /admin/operations/{id}", "Operation", h.operation},
	}
}

type handler struct {
	rt    *runtime.Runtime
	op    runtime.Fleet
	opts  HandlerOptions
	log   *slog.Logger
	token []byte // SHA-256 of the admin token; nil: operations disabled
	down  *downTracker
}

// downTracker remembers when shards left ready.
type downTracker struct {
	mu sync.Mutex        // guards at
	at map[int]time.Time // shard -> when it left ready, or was first seen not ready
}

func newDownTracker() *downTracker { return &downTracker{at: map[int]time.Time{}} }

// left records that a shard left ready at t.
func (d *downTracker) left(shard int, t time.Time) {
	d.mu.Lock()
	d.at[shard] = t
	d.mu.Unlock()
}

func (h *handler) index(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "fleet admin\n\nGET /metrics\nGET /healthz\nGET /status\nGET /page/ (status page)\n")
	if h.token != nil && h.allowed(r) { // the operations are listed only to those who may use them
		io.WriteString(w, "\noperations (runtime.Fleet methods):\n")
		for _, route := range h.routes() {
			fmt.Fprintf(w, "%-42s %s\n", route.pattern, route.method)
		}
	}
}

// healthz answers 200 while every shard is ready, or resuming for less
// than ResumeGrace, and 503 otherwise, listing the shards that are not.
func (h *handler) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	now := time.Now()
	type shard struct {
		cluster int
		info    runtime.ShardStats
	}
	var all []shard
	for _, c := range h.rt.Clusters() {
		for _, in := range c.Shards {
			all = append(all, shard{c.ID, in})
		}
	}
	if len(all) == 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "unhealthy: no shards: the fleet is not running\n")
		return
	}
	var bad []string
	h.down.mu.Lock()
	present := make(map[int]bool, len(all))
	for _, s := range all {
		present[s.info.ID] = true
	}
	for id := range h.down.at {
		if !present[id] {
			delete(h.down.at, id) // resharded away
		}
	}
	for _, s := range all {
		if s.info.State == shardgroup.StateReady {
			delete(h.down.at, s.info.ID)
			continue
		}
		since, ok := h.down.at[s.info.ID]
		if !ok {
			since = now
			h.down.at[s.info.ID] = now
		}
		downFor := now.Sub(since).Round(time.Millisecond)
		if s.info.State == shardgroup.StateResuming && (h.opts.ResumeGrace < 0 || downFor < h.opts.ResumeGrace) {
			continue
		}
		bad = append(bad, fmt.Sprintf("shard %d (cluster %d): %s, not ready for %s", s.info.ID, s.cluster, s.info.State, downFor))
	}
	h.down.mu.Unlock()
	if len(bad) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "unhealthy: %d of %d shards not ready\n%s\n", len(bad), len(all), strings.Join(bad, "\n"))
		return
	}
	fmt.Fprintf(w, "ok: %d shards ready\n", len(all))
}

func (h *handler) status(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(h.rt.Stats()); err != nil {
		h.log.Warn("status not written", "err", err.Error())
	}
}

// authorized guards the operations: 404 while they are disabled, 401
// without the right bearer token.
func (h *handler) authorized(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h.token == nil {
			http.NotFound(w, r)
			return
		}
		if !h.allowed(r) {
			h.log.Warn("admin request refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="fleet admin"`)
			msg := "unauthorized: send Authorization: Bearer <admin token>"
			if strings.HasPrefix(r.Header.Get("Authorization"), "Bot ") {
				msg = "unauthorized: this looks like a bot token (Bot ...); the admin API takes the admin token as Authorization: Bearer <admin token>"
			}
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": msg})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// allowed reports whether r carries the admin token.
func (h *handler) allowed(r *http.Request) bool {
	if h.token == nil {
		return false
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	sum := sha256.Sum256([]byte(got))
	// Hashes have one length, so the comparison's time says nothing
	// about the token's length either.
	return subtle.ConstantTimeCompare(sum[:], h.token) == 1 && ok
}

func (h *handler) clusterOp(name string, do func(context.Context, int) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.Atoi(r.PathValue("id"))
		if err != nil || id < 0 {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "cluster id must be a number"})
			return
		}
		h.run(w, r, name, []any{"cluster", id}, func(ctx context.Context) error { return do(ctx, id) })
	}
}

func (h *handler) serviceOp(name string, do func(context.Context, string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		svc := r.PathValue("name")
		h.run(w, r, name, []any{"service", svc}, func(ctx context.Context) error { return do(ctx, svc) })
	}
}

func (h *handler) fleetOp(name string, do func(context.Context) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		h.run(w, r, name, nil, do)
	}
}

func (h *handler) reshard(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Shards   int `json:"shards"`
		Clusters int `json:"clusters"`
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		msg := "body must be {\"shards\": n, \"clusters\": m} (0: Discord's recommended shard count, the current cluster count)"
		if !errors.Is(err, io.EOF) {
			msg += ": " + err.Error()
		}
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": msg})
		return
	}
	if body.Shards < 0 || body.Clusters < 0 {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "shards and clusters must not be negative: use 0 for Discord's recommendation and the current cluster count"})
		return
	}
	opts := runtime.ReshardOptions{Shards: body.Shards, Clusters: body.Clusters}
	h.start(w, r, "reshard", []any{"shards", opts.Shards, "clusters", opts.Clusters},
		func(ctx context.Context) (runtime.Operation, error) { return h.op.StartReshard(ctx, opts) })
}

// startAll starts a rolling restart of every cluster.
func (h *handler) startAll(name string, begin func(context.Context) (runtime.Operation, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		h.start(w, r, name, nil, begin)
	}
}

// start begins a long operation and answers 202 with its URL, or 200
// with the operation when it had nothing to do (a reshard to the current
// count).
func (h *handler) start(w http.ResponseWriter, r *http.Request, name string, attrs []any, begin func(context.Context) (runtime.Operation, error)) {
	attrs = append([]any{"op", name, "remote", r.RemoteAddr}, attrs...)
	ctx, cancel := context.WithTimeout(r.Context(), h.opts.OperationTimeout)
	defer cancel()
	op, err := begin(ctx)
	if err != nil {
		code := errorStatus(err)
		h.log.Warn("admin operation refused", slices.Concat(attrs, []any{"status", code, "err", err.Error()})...)
		writeJSON(w, code, map[string]string{"error": err.Error()})
		return
	}
	// The URL keeps whatever prefix the handler is mounted under.
	prefix, _, _ := strings.Cut(r.URL.Path, "/admin/")
	loc := prefix + "/admin/operations/" + op.ID
	answer := struct {
		runtime.Operation
		URL string `json:"url"`
	}{op, loc}
	if op.State != runtime.OperationRunning {
		h.log.Info("admin operation done", slices.Concat(attrs, []any{"operation", op.ID, "result", op.Result})...)
		writeJSON(w, http.StatusOK, answer)
		return
	}
	h.log.Info("admin operation started", slices.Concat(attrs, []any{"operation", op.ID})...)
	w.Header().Set("Location", loc)
	writeJSON(w, http.StatusAccepted, answer)
}

// operation answers a long operation's state.
func (h *handler) operation(w http.ResponseWriter, r *http.Request) {
	op, err := h.op.Operation(r.Context(), r.PathValue("id"))
	if err != nil {
		msg := err.Error()
		if errors.Is(err, runtime.ErrUnknownOperation) {
			msg += " (never started, or finished long ago)"
		}
		writeJSON(w, errorStatus(err), map[string]string{"error": msg})
		return
	}
	writeJSON(w, http.StatusOK, op)
}

// run performs an operation, bounded by OperationTimeout and by the
// request, and answers with its outcome.
func (h *handler) run(w http.ResponseWriter, r *http.Request, name string, attrs []any, do func(context.Context) error) {
	ctx, cancel := context.WithTimeout(r.Context(), h.opts.OperationTimeout)
	defer cancel()
	attrs = append([]any{"op", name, "remote", r.RemoteAddr}, attrs...)
	h.log.Info("admin operation", attrs...)
	start := time.Now()
	err := do(ctx)
	if err != nil {
		code := errorStatus(err)
		h.log.Warn("admin operation failed", slices.Concat(attrs, []any{"status", code, "err", err.Error()})...)
		writeJSON(w, code, map[string]string{"error": err.Error()})
		return
	}
	h.log.Info("admin operation done", slices.Concat(attrs, []any{"duration", time.Since(start)})...)
	writeJSON(w, http.StatusOK, map[string]string{"result": "done", "duration": time.Since(start).String()})
}

func errorStatus(err error) int {
	switch {
	case errors.Is(err, errors.ErrUnsupported):
		return http.StatusNotImplemented
	case errors.Is(err, runtime.ErrCannotReshard):
		return http.StatusBadRequest
	case errors.Is(err, runtime.ErrUnknownCluster), errors.Is(err, services.ErrUnknownService), errors.Is(err, runtime.ErrUnknownOperation):
		return http.StatusNotFound
	case errors.Is(err, runtime.ErrNotRunning), errors.Is(err, services.ErrClosed):
		return http.StatusServiceUnavailable
	case errors.Is(err, runtime.ErrReshardInProgress), errors.Is(err, services.ErrNotReady):
		return http.StatusConflict
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // messages such as "Clusters (3) > Shards (2)" read as written
	enc.Encode(v)
}
