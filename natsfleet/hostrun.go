package natsfleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/disgoorg/disgo/rest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/restproxy"
	"github.com/gofleet/fleet/runtime"
)

// HostConfig configures a [Host]. Zero fields take the defaults given.
type HostConfig struct {
	// Fleet names the fleet: every host of a fleet uses the same name,
	// which prefixes its key-value buckets and bus subjects (so that two
	// fleets can share one NATS). Required.
	Fleet string
	// ID names this host in the fleet (letters, digits, - and _);
	// default <hostname>-<pid>.
	ID string
	// Weight is this host's share of the balanced clusters relative to
	// the other hosts' (default 1).
	Weight int
	// Clusters, if set, are the clusters this host asks for (static
	// assignment, as eris-fleet's shard slices): it runs those and no
	// others. Empty: it takes its weight's share of the clusters no host
	// asks for.
	Clusters []int
	// Runtime is the bot's configuration as for a single process: Token,
	// Bot, Intents, ClientOptions, GatewayURL, RESTURL,
	// CheckpointInterval... Shards (0: GET /gateway/bot), Clusters or
	// ShardsPerCluster and MaxConcurrencyOverride make the fleet's plan
	// on the first leader only. The host sets Bus, IdentifyQueue,
	// SessionStore and Member; Services must be empty.
	Runtime runtime.Config
	// LeaseTTL is how long a cluster's lease lasts without renewal
	// (default 10 s): a host that stops renewing loses its clusters after
	// it, and another host takes them after LeaseTTL + LeaseMargin.
	LeaseTTL time.Duration
	// LeaseMargin is added to LeaseTTL before a lease is taken from a
	// silent host, against the hosts' clocks running at different speeds
	// (default LeaseTTL/10).
	LeaseMargin time.Duration
	// RenewInterval is how often leases and the heartbeat are renewed
	// (default LeaseTTL/3).
	RenewInterval time.Duration
	// RESTProxy is the URL of the fleet's REST proxy (restproxy's HTTP
	// form, served by one process): every cluster of every host sends its
	// REST calls there, so that the fleet obeys one set of buckets and one
	// global limit. Empty: the proxy published in the fleet's store with
	// PublishRESTProxy, if any; otherwise the clusters of this host share
	// one limiter (Runtime.RESTLimiter, or one made from
	// Runtime.RESTLimiterConfig), and hosts do not share limits.
	RESTProxy string
	// Logger receives the host's records (default: discarded).
	Logger *slog.Logger
}

// Host is one machine's (or process's) part of a fleet spread over
// several: it joins the fleet through NATS, takes part in electing the
// leader that plans the fleet and assigns clusters, runs the clusters it
// holds the lease of (each as a runtime.Runtime serving that cluster
// only), and hands them over or takes them over as hosts come and go.
// Create it with [NewHost]; Run runs it.
type Host struct {
	cfg      HostConfig
	nc       *nats.Conn
	core     *hostCore
	sessions jetstream.KeyValue // the fleet's sessions bucket
	store    *KVStore           // the fleet's central store
	restOpts []rest.ConfigOpt   // through the fleet's REST proxy; nil: Runtime.RESTLimiter

	mu     sync.Mutex // guards shared
	shared *hostShared
	revs   revisionSessions // the sessions buckets of later plan revisions
}

// hostShared is what the clusters of a host share, made once the plan is
// known.
type hostShared struct {
	bus   *bus.Bus
	tr    *Transport
	queue *IdentifyQueue
}

// NewHost validates cfg and opens the fleet's buckets on nc; nothing
// runs until Run.
func NewHost(ctx context.Context, nc *nats.Conn, cfg HostConfig) (*Host, error) {
	if cfg.Fleet == "" {
		return nil, errors.New("natsfleet: HostConfig.Fleet is empty: name the fleet (the same on every host)")
	}
	if cfg.ID == "" {
		cfg.ID = defaultHostID()
	}
	if !hostIDPattern.MatchString(cfg.ID) {
		return nil, fmt.Errorf("natsfleet: HostConfig.ID %q: use letters, digits, - and _ only", cfg.ID)
	}
	if cfg.Weight < 0 || cfg.LeaseTTL < 0 || cfg.LeaseMargin < 0 || cfg.RenewInterval < 0 {
		return nil, errors.New("natsfleet: HostConfig: Weight, LeaseTTL, LeaseMargin and RenewInterval must be >= 0 (0 for the default)")
	}
	for _, c := range cfg.Clusters {
		if c < 0 {
			return nil, fmt.Errorf("natsfleet: HostConfig.Clusters has %d: cluster IDs start at 0", c)
		}
	}
	if len(cfg.Runtime.Services) > 0 {
		return nil, errors.New("natsfleet: HostConfig.Runtime.Services is set: a host runs clusters only; serve services from a process of their own on the fleet's bus")
	}
	if cfg.Runtime.TotalShards != 0 {
		return nil, errors.New("natsfleet: HostConfig.Runtime.TotalShards is set: a fleet of hosts plans its shards itself; set Runtime.Shards (or leave it 0 for Discord's count) and HostConfig.Clusters to pin clusters to this host")
	}
	if cfg.Runtime.Token == "" || cfg.Runtime.Bot == nil {
		return nil, errors.New("natsfleet: HostConfig.Runtime needs Token and Bot, as a single-process runtime does")
	}
	if cfg.Weight == 0 {
		cfg.Weight = 1
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 10 * time.Second
	}
	if cfg.LeaseMargin == 0 {
		cfg.LeaseMargin = cfg.LeaseTTL / 10
	}
	if cfg.RenewInterval == 0 {
		cfg.RenewInterval = cfg.LeaseTTL / 3
	}
	if cfg.RenewInterval >= cfg.LeaseTTL {
		return nil, fmt.Errorf("natsfleet: HostConfig.RenewInterval (%v) >= LeaseTTL (%v): renew at least twice per TTL", cfg.RenewInterval, cfg.LeaseTTL)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Logger = cfg.Logger.With("fleet", cfg.Fleet, "host", cfg.ID)
	h := &Host{cfg: cfg, nc: nc}
	core, err := newHostCore(ctx, nc, coreConfig{fleet: cfg.Fleet, id: cfg.ID, weight: cfg.Weight, static: cfg.Clusters,
		ttl: cfg.LeaseTTL, margin: cfg.LeaseMargin, interval: cfg.RenewInterval, log: cfg.Logger,
		run: h.runMember, plan: h.makePlan, replan: h.replan})
	if err != nil {
		return nil, err
	}
	h.core = core
	if h.sessions, err = keyValue(ctx, nc, cfg.Fleet, "sessions", jetstream.FileStorage); err != nil {
		return nil, err
	}
	if h.store, err = NewKVStore(ctx, nc, cfg.Fleet); err != nil {
		return nil, err
	}
	proxy := RESTProxy{URL: cfg.RESTProxy}
	if proxy.URL == "" {
		if p, err := LookupRESTProxy(ctx, h.store); err == nil {
			proxy = p
		}
	}
	switch {
	case proxy.URL != "":
		if h.restOpts, err = proxy.ClientOpts(); err != nil {
			return nil, fmt.Errorf("%w: set HostConfig.RESTProxy to the proxy's http(s)://host:port", err)
		}
		cfg.Logger.Info("REST calls go through the fleet's proxy", "url", proxy.URL)
	case h.cfg.Runtime.RESTLimiter == nil && !h.cfg.Runtime.NoSharedRESTLimiter:
		lc := h.cfg.Runtime.RESTLimiterConfig
		if lc.Logger == nil {
			lc.Logger = cfg.Logger
		}
		if h.cfg.Runtime.RESTLimiter, err = restproxy.New(lc); err != nil {
			return nil, fmt.Errorf("natsfleet: HostConfig.Runtime.RESTLimiterConfig: %w", err)
		}
	}
	return h, nil
}

// ID returns the host's ID in the fleet.
func (h *Host) ID() string { return h.cfg.ID }

// Store returns the fleet's central store, shared by every host.
func (h *Host) Store() *KVStore { return h.store }

// hostAddress is the bus address of a host's operations endpoint.
func hostAddress(id string) bus.Address { return bus.Service("host." + id) }

// Bus commands of a host's endpoint; the payload is the cluster ID.
const (
	cmdHostSoftRestart = "soft_restart"
	cmdHostRestart     = "restart"
)

// Run joins the fleet and runs this host's part of it until ctx ends;
// then it hands its clusters over (shards closed resumably, sessions
// saved, leases released) and leaves the fleet. It returns early with an
// error if a cluster fails.
func (h *Host) Run(ctx context.Context) error {
	tr, err := NewTransport(h.nc, TransportConfig{Prefix: h.cfg.Fleet, Logger: h.cfg.Logger})
	if err != nil {
		return err
	}
	b := bus.New(bus.Options{Transport: tr, Logger: h.cfg.Logger, DefaultTimeout: h.cfg.Runtime.RequestTimeout})
	sh := &hostShared{bus: b, tr: tr}
	h.mu.Lock()
	h.shared = sh
	h.mu.Unlock()
	defer func() {
		b.Close()
		tr.Close()
		h.mu.Lock()
		q := sh.queue
		h.mu.Unlock()
		if q != nil {
			qctx, cancel := context.WithTimeout(context.Background(), h.cfg.RenewInterval)
			q.Close(qctx)
			cancel()
		}
	}()
	ep, err := b.Register(hostAddress(h.cfg.ID))
	if err != nil {
		return fmt.Errorf("natsfleet: host %s: %w (is another host running with the same ID?)", h.cfg.ID, err)
	}
	bus.Handle(ep, cmdHostSoftRestart, func(ctx context.Context, c int) (struct{}, error) {
		return struct{}{}, h.local(ctx, c, clusterOps.SoftRestart)
	})
	bus.Handle(ep, cmdHostRestart, func(ctx context.Context, c int) (struct{}, error) {
		return struct{}{}, h.local(ctx, c, clusterOps.Restart)
	})
	stopTimeout := h.cfg.Runtime.ShutdownTimeout
	if stopTimeout == 0 {
		stopTimeout = 10 * time.Second
	}
	err = h.core.runLoop(ctx, stopTimeout+h.cfg.RenewInterval)
	cctx, cancel := context.WithTimeout(context.Background(), h.cfg.RenewInterval)
	defer cancel()
	_ = ep.Close(cctx)
	return err
}

// local runs op on a cluster this host runs.
func (h *Host) local(ctx context.Context, cluster int, op func(clusterOps, context.Context, int) error) error {
	h.core.mu.Lock()
	o := h.core.ops[cluster]
	h.core.mu.Unlock()
	if o == nil {
		return fmt.Errorf("natsfleet: host %s does not run cluster %d (it may have moved): ask again", h.cfg.ID, cluster)
	}
	return op(o, ctx, cluster)
}

// SoftRestart soft-restarts a cluster of the fleet wherever it runs: here,
// or on the host that owns it, over the bus.
func (h *Host) SoftRestart(ctx context.Context, cluster int) error {
	return h.route(ctx, cluster, cmdHostSoftRestart, clusterOps.SoftRestart)
}

// Restart hard-restarts a cluster of the fleet wherever it runs.
func (h *Host) Restart(ctx context.Context, cluster int) error {
	return h.route(ctx, cluster, cmdHostRestart, clusterOps.Restart)
}

func (h *Host) route(ctx context.Context, cluster int, cmd string, op func(clusterOps, context.Context, int) error) error {
	s, _ := h.core.snapshot()
	lv, ok := s.Leases[cluster]
	if !ok || lv.Owner == "" {
		return fmt.Errorf("natsfleet: cluster %d has no owner now (unknown, or moving): try again", cluster)
	}
	if lv.Owner == h.cfg.ID {
		return h.local(ctx, cluster, op)
	}
	h.mu.Lock()
	sh := h.shared
	h.mu.Unlock()
	if sh == nil {
		return errors.New("natsfleet: the host is not running: call Run first")
	}
	_, err := bus.Request[int, struct{}](ctx, sh.bus, hostAddress(lv.Owner), cmd, cluster)
	if err != nil {
		return fmt.Errorf("natsfleet: %s of cluster %d on host %s: %w", cmd, cluster, lv.Owner, err)
	}
	return nil
}

// Drain hands every cluster of this host to other hosts (shards closed
// resumably, exact sessions saved, leases released, and the new owners
// resume them: nothing lost, nothing repeated, no IDENTIFY) and returns
// once it runs none. The host stays in the fleet, taking no cluster,
// until Run ends. It fails when ctx ends first, e.g. when no other host
// is there to take them.
func (h *Host) Drain(ctx context.Context) error {
	if err := h.core.drainRefused(); err != nil {
		return err
	}
	h.core.startDrain()
	err := h.core.waitFor(ctx, func(s fleetSnapshot) bool { return s.Draining && len(s.Owned) == 0 })
	if err != nil {
		s, _ := h.core.snapshot()
		return fmt.Errorf("natsfleet: drain of host %s: clusters %v still here: %w (is another host live and not draining?)", h.cfg.ID, s.Owned, err)
	}
	return nil
}

// Owned returns the clusters running on this host now, sorted.
func (h *Host) Owned() []int {
	s, _ := h.core.snapshot()
	return slices.Clone(s.Owned)
}

// FleetStatus is the fleet as one host sees it.
type FleetStatus struct {
	Fleet    string          `json:"fleet"`
	Host     string          `json:"host"` // the host answering
	Leader   string          `json:"leader"`
	Shards   int             `json:"shards"`
	Hosts    []HostStatus    `json:"hosts"`
	Clusters []ClusterStatus `json:"clusters"`
	// PlanRevision counts the fleet's plans: 1 for the first, one more
	// for each reshard asked since (an aborted one included).
	PlanRevision int `json:"plan_revision"`
	// Reshard is the last reshard of the fleet, running or ended; nil
	// when there was none.
	Reshard *ReshardStatus `json:"reshard,omitempty"`
}

// HostStatus is one host of the fleet.
type HostStatus struct {
	ID       string `json:"id"`
	Weight   int    `json:"weight"`
	Live     bool   `json:"live"`
	Draining bool   `json:"draining,omitempty"`
	Clusters []int  `json:"clusters"`
	// HeartbeatAge is how long ago the answering host saw its heartbeat.
	HeartbeatAge time.Duration `json:"heartbeat_age_ns"`
}

// ClusterStatus is one cluster of the fleet.
type ClusterStatus struct {
	ID       int    `json:"id"`
	Shards   []int  `json:"shards"`
	Owner    string `json:"owner"`    // "" when released or never taken
	Assigned string `json:"assigned"` // the host the leader wants it on
	Epoch    uint64 `json:"epoch"`    // times the lease changed hands
	// LeaseAge is how long ago the answering host saw the lease renewed.
	LeaseAge time.Duration `json:"lease_age_ns"`
	// CheckpointAge is the age of its oldest shard's last saved session
	// (-1: none saved).
	CheckpointAge time.Duration `json:"checkpoint_age_ns"`
}

// Healthy reports whether every cluster has a live owner, and why not.
func (s FleetStatus) Healthy() (bool, string) {
	live := map[string]bool{}
	for _, h := range s.Hosts {
		live[h.ID] = h.Live
	}
	var bad []string
	if len(s.Clusters) == 0 {
		bad = append(bad, "no plan yet")
	}
	for _, c := range s.Clusters {
		if c.Owner == "" || !live[c.Owner] {
			bad = append(bad, fmt.Sprintf("cluster %d has no live owner", c.ID))
		}
	}
	return len(bad) == 0, strings.Join(bad, "; ")
}

// Status describes the fleet: hosts, their clusters, leases and the age of
// each cluster's last checkpoint.
func (h *Host) Status(ctx context.Context) (FleetStatus, error) {
	s, _ := h.core.snapshot()
	out := FleetStatus{Fleet: h.cfg.Fleet, Host: h.cfg.ID, Leader: s.Leader, Reshard: s.Reshard.status()}
	for _, hv := range s.Hosts {
		out.Hosts = append(out.Hosts, HostStatus{ID: hv.ID, Weight: hv.Weight, Live: hv.Live, Draining: hv.Draining,
			Clusters: slices.Clone(hv.Clusters), HeartbeatAge: hv.HeartbeatAge})
	}
	slices.SortFunc(out.Hosts, func(a, b HostStatus) int { return strings.Compare(a.ID, b.ID) })
	if s.Plan == nil {
		return out, nil
	}
	out.Shards, out.PlanRevision = s.Plan.Shards, max(s.Plan.Revision, 1)
	saved := map[int]time.Time{}
	sessions, err := h.sessionsBucket(ctx, s.Plan.Revision)
	if err != nil {
		return out, err
	}
	recs, err := (&KVSessionStore{kv: sessions, owner: h.cfg.ID}).Records(ctx)
	if err != nil {
		return out, err
	}
	for _, r := range recs {
		saved[r.ShardID] = r.WrittenAt
	}
	now := time.Now()
	for id, shards := range s.Plan.Clusters {
		cs := ClusterStatus{ID: id, Shards: slices.Clone(shards), CheckpointAge: -1}
		if id < len(s.Assign) {
			cs.Assigned = s.Assign[id]
		}
		if lv, ok := s.Leases[id]; ok {
			cs.Owner, cs.Epoch, cs.LeaseAge = lv.Owner, lv.Epoch, lv.Age
		}
		var oldest time.Time
		for _, sh := range shards {
			t, ok := saved[sh]
			if !ok {
				oldest = time.Time{}
				break
			}
			if oldest.IsZero() || t.Before(oldest) {
				oldest = t
			}
		}
		if !oldest.IsZero() {
			cs.CheckpointAge = max(now.Sub(oldest), 0)
		}
		out.Clusters = append(out.Clusters, cs)
	}
	return out, nil
}

// Handler serves the fleet's view from this host: /status (FleetStatus
// as JSON) and /healthz (200 when every cluster has a live owner, 503
// with the reasons otherwise).
func (h *Host) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		st, err := h.Status(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		st, err := h.Status(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		if ok, why := st.Healthy(); !ok {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok: " + st.planNote() + "\n"))
	})
	return mux
}
