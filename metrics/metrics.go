package metrics

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/restproxy"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/services"
)

// MaxLabelValues is the default cap on the distinct values of a label fed
// by names from outside the package (bus commands, service names, REST
// routes); further values count as "other".
const MaxLabelValues = 128

// other is the label value that stands for everything past a bound.
const other = "other"

// Metrics holds a fleet's Prometheus collectors. Its methods are safe for
// concurrent use.
type Metrics struct {
	events *eventCounter
	fleet  *fleetCollector

	identifies      *prometheus.CounterVec
	identifyWait    prometheus.Histogram
	resumes         *prometheus.CounterVec
	reconnects      *prometheus.CounterVec
	clusterRestarts *prometheus.CounterVec
	listenerPanics  *prometheus.CounterVec
	serviceRestarts *prometheus.CounterVec
	busRequests     *prometheus.CounterVec
	busLatency      *prometheus.HistogramVec
	restRequests    *prometheus.CounterVec
	restRateLimited *prometheus.CounterVec
	restQueued      prometheus.Counter
	restWait        prometheus.Histogram

	commands, services, routes *labelSet

	down     *downTracker        // when shards left ready, for the handler's /healthz
	gatherer prometheus.Gatherer // Register's registry, for Handler's /metrics

	attachMu    sync.Mutex       // guards attached, unsubscribe
	attached    *runtime.Runtime // the runtime observed
	unsubscribe func()           // from the attached runtime's events
}

type config struct {
	eventTypes     []string
	process        bool
	maxLabelValues int
	restOnly       bool // NewREST
}

// An Option configures New.
type Option func(*config) error

// WithEventTypes replaces the gateway event names counted under their own
// label value (default DefaultEventTypes()); others count as "other".
func WithEventTypes(names ...string) Option {
	return func(c *config) error {
		if len(names) > 1024 {
			return fmt.Errorf("metrics: WithEventTypes: %d names, at most 1024", len(names))
		}
		c.eventTypes = append([]string(nil), names...)
		return nil
	}
}

// WithoutProcessCollectors leaves out the Go and process collectors, for
// a registry that has its own.
func WithoutProcessCollectors() Option {
	return func(c *config) error {
		c.process = false
		return nil
	}
}

// WithMaxLabelValues sets the cap on distinct bus commands, service names
// and REST routes (default MaxLabelValues).
func WithMaxLabelValues(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("metrics: WithMaxLabelValues(%d): must be at least 1", n)
		}
		c.maxLabelValues = n
		return nil
	}
}

// New creates the fleet's collectors and registers them on reg, with the
// Go and process collectors (unless reg already has them, or
// WithoutProcessCollectors).
func New(reg prometheus.Registerer, opts ...Option) (*Metrics, error) {
	if reg == nil {
		return nil, errors.New("metrics: nil Registerer: pass prometheus.NewRegistry()")
	}
	cfg := config{eventTypes: defaultEventTypes, process: true, maxLabelValues: MaxLabelValues}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	m := &Metrics{
		events: newEventCounter(prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleet_gateway_events_total",
			Help: "Gateway dispatches received, by shard and event name (names outside the known set count as other).",
		}, []string{"shard", "event"}), cfg.eventTypes),
		fleet: newFleetCollector(),
		down:  newDownTracker(),
		identifies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleet_identifies_total",
			Help: "IDENTIFYs sent, by shard.",
		}, []string{"shard"}),
		identifyWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fleet_identify_queue_wait_seconds",
			Help:    "Time a shard waited in the identify queue before its IDENTIFY.",
			Buckets: []float64{0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300},
		}),
		resumes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleet_resumes_total",
			Help: "Sessions resumed, by shard.",
		}, []string{"shard"}),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleet_shard_reconnects_total",
			Help: "Gateway connections lost, by the close code the gateway sent (1006: dropped; zombie: closed for want of heartbeat ACKs).",
		}, []string{"code"}),
		clusterRestarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleet_cluster_restarts_total",
			Help: "Cluster restarts by the supervisor or a hard restart, by cluster.",
		}, []string{"cluster"}),
		listenerPanics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleet_listener_panics_total",
			Help: "Panics recovered from event listeners, by cluster.",
		}, []string{"cluster"}),
		serviceRestarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleet_service_restarts_total",
			Help: "Service restarts, by service.",
		}, []string{"service"}),
		busRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleet_bus_requests_total",
			Help: "Bus requests, by command and outcome.",
		}, []string{"command", "outcome"}),
		busLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fleet_bus_request_duration_seconds",
			Help:    "Bus request round trips, by command.",
			Buckets: []float64{1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1, 5, 10},
		}, []string{"command"}),
		restRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleet_rest_requests_total",
			Help: "REST responses through the shared limiter, by route template, method and status (0: no response).",
		}, []string{"route", "method", "status"}),
		restRateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleet_rest_rate_limited_total",
			Help: "REST 429 responses, by scope (user, global, shared, cloudflare).",
		}, []string{"scope"}),
		restQueued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fleet_rest_queued_requests_total",
			Help: "REST requests that had to wait for their bucket or the global limit.",
		}),
		restWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fleet_rest_limiter_wait_seconds",
			Help:    "Time REST requests spent waiting in the shared limiter.",
			Buckets: []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
		}),
		commands: newLabelSet(cfg.maxLabelValues),
		services: newLabelSet(cfg.maxLabelValues),
		routes:   newLabelSet(cfg.maxLabelValues),
	}
	cs := []prometheus.Collector{m.events.vec, m.fleet, m.identifies, m.identifyWait, m.resumes, m.reconnects,
		m.clusterRestarts, m.listenerPanics, m.serviceRestarts, m.busRequests, m.busLatency,
		m.restRequests, m.restRateLimited, m.restQueued, m.restWait}
	if cfg.restOnly {
		cs = []prometheus.Collector{m.restRequests, m.restRateLimited, m.restQueued, m.restWait, restGauges{m.fleet}}
	}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("metrics: register: %w", err)
		}
	}
	if cfg.process {
		for _, c := range []prometheus.Collector{collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
			var are prometheus.AlreadyRegisteredError
			if err := reg.Register(c); err != nil && !errors.As(err, &are) {
				for _, done := range cs {
					reg.Unregister(done)
				}
				return nil, fmt.Errorf("metrics: register: %w", err)
			}
		}
	}
	return m, nil
}

// Register creates the fleet's collectors on reg, as New does, and
// attaches them to rt (see Attach): the one step that wires a runtime's
// metrics. It may be called before or after rt.Run. In process mode it
// also registers the children's collector (natsfleet's), so that reg
// covers every child. With a reg that is
// also a prometheus.Gatherer (a *prometheus.Registry is), m.Handler
// serves its /metrics.
func Register(rt *runtime.Runtime, reg prometheus.Registerer, opts ...Option) (*Metrics, error) {
	if rt == nil {
		return nil, errors.New("metrics: Register with a nil runtime: pass the one runtime.New returned")
	}
	m, err := New(reg, opts...)
	if err != nil {
		return nil, err
	}
	// In process mode, the children's own metrics (their gateway events
	// by shard, their bus requests, their Go runtime and process) join
	// reg, labelled with their cluster and pid.
	if p, ok := rt.Processes().(interface{ Collector() prometheus.Collector }); ok {
		if err := reg.Register(p.Collector()); err != nil {
			return nil, fmt.Errorf("metrics: register the child processes' collector: %w", err)
		}
	}
	if g, ok := reg.(prometheus.Gatherer); ok {
		m.gatherer = g
	}
	m.Attach(rt)
	return m, nil
}

// Attach feeds the collectors from rt: it becomes rt's Observer (gateway
// dispatches, bus requests, and REST requests through the limiter rt
// built), its lifecycle events are counted (IDENTIFYs, resumes, closes,
// restarts, listener panics, service restarts), and the scrape-time
// gauges read its state (shards by state, heartbeat latencies, guilds and
// cache sizes per cluster, the start-up's progress, the REST limiter's
// state). Attaching another runtime replaces the first; nil detaches.
// Register does it for you.
func (m *Metrics) Attach(rt *runtime.Runtime) {
	m.attachMu.Lock()
	defer m.attachMu.Unlock()
	if m.unsubscribe != nil {
		m.unsubscribe()
		m.unsubscribe = nil
	}
	if m.attached != nil {
		m.attached.Observe(runtime.Observer{})
	}
	m.attached = rt
	m.fleet.rt.Store(rt)
	if rt != nil {
		rt.Observe(m.observer())
		m.unsubscribe = rt.Subscribe(m.runtimeEvent)
	}
}

// runtimeEvent counts what a lifecycle event says.
func (m *Metrics) runtimeEvent(e runtime.Event) {
	switch e := e.(type) {
	case runtime.ShardIdentify:
		m.identifies.WithLabelValues(strconv.Itoa(e.Shard)).Inc()
		m.identifyWait.Observe(e.Waited.Seconds())
	case runtime.ShardResumed:
		m.resumes.WithLabelValues(strconv.Itoa(e.Shard)).Inc()
	case runtime.ShardClosed:
		m.reconnects.WithLabelValues(closeCode(e.Code)).Inc()
	case runtime.ShardZombie:
		m.reconnects.WithLabelValues("zombie").Inc()
	case runtime.ShardDisconnected:
		m.down.left(e.Shard, time.Now())
	case runtime.ClusterRestarted:
		m.clusterRestarts.WithLabelValues(strconv.Itoa(e.Cluster)).Inc()
	case runtime.ListenerPanic:
		m.listenerPanics.WithLabelValues(strconv.Itoa(e.Cluster)).Inc()
	case services.Restarted:
		if e.Service != "" {
			m.ServiceRestarted(e.Service)
		}
	}
}

// observer is the hot paths' part: gateway dispatches, bus requests and
// REST requests.
func (m *Metrics) observer() runtime.Observer {
	return runtime.Observer{
		GatewayEvent: func(_, shard int, eventType string) { m.events.inc(shard, eventType) },
		BusRequest:   m.ObserveBusRequest,
		REST:         m.RESTHooks(),
	}
}

// RESTHooks returns the REST limiter hooks that feed the REST metrics.
// Attach gives them to the limiter the runtime builds; put them in the
// restproxy.Config of a limiter you build yourself.
func (m *Metrics) RESTHooks() restproxy.Hooks {
	return restproxy.Hooks{
		Response: func(route, method string, status int) {
			m.restRequests.WithLabelValues(m.routes.value(route), method, strconv.Itoa(status)).Inc()
		},
		RateLimited: func(_, scope string) { m.restRateLimited.WithLabelValues(rateLimitScope(scope)).Inc() },
		Queued:      func(string) { m.restQueued.Inc() },
		Waited:      func(_ string, d time.Duration) { m.restWait.Observe(d.Seconds()) },
		InvalidRequests: func(n int) {
			m.fleet.invalid.Store(int64(n))
		},
	}
}

// ObserveBusRequest records one bus request: its command, how long it
// took and its error, which sets the outcome label (ok, timeout,
// canceled, unknown_address, unknown_command, panic, closed, error).
func (m *Metrics) ObserveBusRequest(command string, d time.Duration, err error) {
	cmd := m.commands.value(command)
	m.busRequests.WithLabelValues(cmd, busOutcome(err)).Inc()
	m.busLatency.WithLabelValues(cmd).Observe(d.Seconds())
}

// ServiceRestarted counts a restart of the named service. An attached
// runtime's service restarts are counted without it.
func (m *Metrics) ServiceRestarted(name string) {
	m.serviceRestarts.WithLabelValues(m.services.value(name)).Inc()
}

func busOutcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, bus.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, bus.ErrUnknownAddress):
		return "unknown_address"
	case errors.Is(err, bus.ErrUnknownCommand):
		return "unknown_command"
	case errors.Is(err, bus.ErrHandlerPanic):
		return "panic"
	case errors.Is(err, bus.ErrClosed):
		return "closed"
	}
	return "error"
}

func rateLimitScope(s string) string {
	switch s {
	case "user", "global", "shared", "cloudflare":
		return s
	}
	return other
}

// closeCode is the label of a close code: Discord's gateway codes and the
// WebSocket ones a client meets, by number; the rest as "other".
func closeCode(code int) string {
	switch {
	case code >= 4000 && code <= 4014, code >= 1000 && code <= 1015:
		return strconv.Itoa(code)
	}
	return other
}

// labelSet bounds a label's values: the first max distinct values are
// kept, the rest become "other".
type labelSet struct {
	max  int
	mu   sync.Mutex // guards seen
	seen map[string]struct{}
}

func newLabelSet(max int) *labelSet { return &labelSet{max: max, seen: map[string]struct{}{}} }

func (s *labelSet) value(v string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.seen[v]; ok {
		return v
	}
	if len(s.seen) >= s.max {
		return other
	}
	s.seen[v] = struct{}{}
	return v
}

// eventCounter is fleet_gateway_events_total with its children resolved
// once per shard and event name: the hot path is a map lookup, two
// atomic loads and the counter's atomic add.
type eventCounter struct {
	vec   *prometheus.CounterVec
	index map[string]int // event name -> slot; read-only after New
	names []string       // slot -> label value; the last is "other"

	mu     sync.Mutex                       // serialises growing shards
	shards atomic.Pointer[[]*shardCounters] // by shard ID; copied on growth
}

type shardCounters struct {
	label string
	slots []atomic.Pointer[prometheus.Counter]
}

// maxShardSlot bounds the table; higher shard IDs take the slow path.
const maxShardSlot = 1 << 16

func newEventCounter(vec *prometheus.CounterVec, names []string) *eventCounter {
	e := &eventCounter{vec: vec, index: make(map[string]int, len(names))}
	for _, n := range names {
		if _, dup := e.index[n]; dup || n == other {
			continue
		}
		e.index[n] = len(e.names)
		e.names = append(e.names, n)
	}
	e.names = append(e.names, other)
	return e
}

func (e *eventCounter) inc(shard int, eventType string) {
	slot, ok := e.index[eventType]
	if !ok {
		slot = len(e.names) - 1
	}
	sc := e.shard(shard)
	if sc == nil {
		e.vec.WithLabelValues(strconv.Itoa(shard), e.names[slot]).Inc()
		return
	}
	c := sc.slots[slot].Load()
	if c == nil {
		v := e.vec.WithLabelValues(sc.label, e.names[slot])
		sc.slots[slot].CompareAndSwap(nil, &v)
		c = sc.slots[slot].Load()
	}
	(*c).Inc()
}

func (e *eventCounter) shard(id int) *shardCounters {
	if id < 0 || id >= maxShardSlot {
		return nil
	}
	if t := e.shards.Load(); t != nil && id < len(*t) && (*t)[id] != nil {
		return (*t)[id]
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var cur []*shardCounters
	if t := e.shards.Load(); t != nil {
		cur = *t
	}
	if id < len(cur) && cur[id] != nil {
		return cur[id]
	}
	next := make([]*shardCounters, max(len(cur), id+1))
	copy(next, cur)
	sc := &shardCounters{label: strconv.Itoa(id), slots: make([]atomic.Pointer[prometheus.Counter], len(e.names))}
	next[id] = sc
	e.shards.Store(&next)
	return sc
}
