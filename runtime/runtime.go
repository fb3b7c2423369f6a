package runtime

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	goruntime "runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/cache"
	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/rest"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/restproxy"
	"github.com/gofleet/fleet/services"
	"github.com/gofleet/fleet/shardgroup"
)

// Runtime plans a bot's shards into clusters, starts them at Discord's
// identify limit, supervises them and stops them. It is eris-fleet's
// Admiral, with goroutines for processes.
type Runtime struct {
	cfg    Config
	events *events

	mu       sync.Mutex // guards the fields below
	running  bool
	clusters []*cluster
	env      *fleetEnv                  // set once Run has planned the fleet
	shutdown chan struct{}              // closed by Shutdown
	stopped  chan struct{}              // closed when Run returns
	planned  chan struct{}              // closed when env is set
	stopping chan struct{}              // closed when Run begins to stop
	kept     map[int]shardgroup.Session // sessions of stopped shards, to save

	bus      *bus.Bus
	ownBus   bool // the runtime made the bus and closes it
	busReqs  atomic.Int64
	busFails atomic.Int64
	busNanos atomic.Int64
	services *services.Manager

	gate       shardgroup.Gate // the generation whose groups deliver to listeners
	wg         sync.WaitGroup  // counts cluster supervisors
	stopFleet  chan struct{}   // closed when the fleet must stop
	resharding sync.Mutex      // one Reshard at a time
	ready      atomic.Int64
	everReady  sync.Map // shard ID -> true once it has been ready
	started    time.Time
	restarting sync.Mutex // one soft or hard restart at a time
}

// fleetEnv is what Run learned and built for every cluster.
type fleetEnv struct {
	total      int // the fleet's shard count
	shards     int // how many this runtime runs
	gatewayURL string
	queue      IdentifyQueue
	fatal      chan error
	groupCtx   context.Context // shards run on it; cancelled after every cluster stopped
	gen        int64           // generation: listeners hear a group while Runtime.gate holds it
	counting   bool            // the first generation: its READYs make the fleet ready
	onLoaded   func(shard int) // a shard received every guild of its READY (reshard)
}

// New validates cfg and returns a runtime; nothing starts until Run.
func New(cfg Config) (*Runtime, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if c.RESTLimiter == nil && !c.NoSharedRESTLimiter {
		lc := c.RESTLimiterConfig
		if lc.Logger == nil {
			lc.Logger = c.Logger
		}
		if c.RESTLimiter, err = restproxy.New(lc); err != nil {
			return nil, fmt.Errorf("runtime: RESTLimiterConfig: %w", err)
		}
	}
	r := &Runtime{cfg: c, events: newEvents(c.Logger.With("component", "fleet"), c.WhatToLog),
		shutdown: make(chan struct{}), stopped: make(chan struct{}), planned: make(chan struct{}),
		stopping: make(chan struct{})}
	r.bus = c.Bus
	if r.bus == nil {
		r.bus = bus.New(bus.Options{DefaultTimeout: c.RequestTimeout, Strict: c.StrictBus, Logger: c.Logger,
			Observe: r.observeBus})
		r.ownBus = true
	}
	specs := append(append([]services.Spec(nil), c.Services...), services.NewStore().Spec())
	r.services, err = services.NewManager(r.bus, services.ManagerConfig{
		Specs: specs, StartTimeout: c.ServiceTimeout, StartTogether: c.StartServicesTogether,
		MaxRestarts: c.MaxRestarts, RestartWindow: c.RestartWindow, RestartBackoff: c.RestartBackoff,
		ShutdownTimeout: c.ShutdownTimeout, Logger: c.Logger,
		OnEvent: func(e services.Event) {
			r.events.emit(Event{Kind: EventKind(e.Kind), Cluster: -1, Shard: -1, Service: e.Service, N: e.Attempt, Err: e.Err})
		},
	})
	if err != nil {
		return nil, fmt.Errorf("runtime: Services: %w", err)
	}
	return r, nil
}

// ErrUnauthorized means Discord refused the token.
var ErrUnauthorized = errors.New("runtime: Discord refused the token (401): check Config.Token")

// gatewayBot asks GET /gateway/bot, through the shared REST limiter so
// that it counts against the global limit with everything else.
func (r *Runtime) gatewayBot(ctx context.Context) (discord.GatewayBot, error) {
	var opts []rest.ConfigOpt
	if r.cfg.RESTURL != "" {
		opts = append(opts, rest.WithURL(r.cfg.RESTURL))
	}
	if l := r.cfg.RESTLimiter; l != nil {
		opts = append(opts, l.ConfigOpt())
	} else {
		opts = append(opts, rest.WithRateLimiter(rest.NewNoopRateLimiter()))
	}
	client := rest.NewClient(string(r.cfg.Token), opts...)
	defer client.Close(context.Background())
	gb, err := rest.NewGateway(client).GetGatewayBot(rest.WithCtx(ctx))
	var re rest.Error
	switch {
	case errors.As(err, &re) && re.Response != nil && re.Response.StatusCode == http.StatusUnauthorized:
		return discord.GatewayBot{}, ErrUnauthorized
	case err != nil:
		return discord.GatewayBot{}, fmt.Errorf("runtime: GET /gateway/bot: %w", err)
	}
	return *gb, nil
}

// Run asks Discord for the shard count and limits, starts every cluster,
// and supervises them until ctx ends or Shutdown is called (it then
// returns nil), or a fatal gateway close (it returns that error). With a
// SessionStore, the shards' sessions are resumed at start where they are
// still fresh, and kept and saved when Run stops.
func (r *Runtime) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.running {
		r.mu.Unlock()
		return errors.New("runtime: Run called twice")
	}
	r.running = true
	r.started = time.Now()
	r.mu.Unlock()
	defer close(r.stopped)

	gb, err := r.gatewayBot(ctx)
	if err != nil {
		return err
	}
	total, first, last, mc, err := r.resolve(gb)
	if err != nil {
		return err
	}
	queue := r.cfg.IdentifyQueue
	if queue == nil {
		q, err := NewLocalIdentifyQueue(mc, r.cfg.IdentifyInterval)
		if err != nil {
			return err
		}
		queue = q
	}
	defer queue.Close(context.Background())
	n := r.cfg.Clusters
	if n == 0 {
		n = min(goruntime.NumCPU(), last-first+1)
	}
	env := &fleetEnv{total: total, shards: last - first + 1, gatewayURL: r.cfg.GatewayURL, queue: queue,
		fatal: make(chan error, 1), counting: true}
	if env.gatewayURL == "" {
		env.gatewayURL = gb.URL
	}
	// Shards run on their own context, so that Run's ending can stop them
	// in order (keeping sessions if asked) before anything is cancelled.
	groupCtx, cancelGroups := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelGroups()
	env.groupCtx = groupCtx
	saved := r.loadSessions(ctx, total)

	// The bus and the services come first: clusters start only once every
	// service is ready, as in eris-fleet.
	defer func() {
		if r.ownBus {
			r.bus.Close()
		}
	}()
	if err := r.admiral(); err != nil {
		return err
	}
	if err := r.services.Start(ctx); err != nil {
		r.closeServices()
		return err
	}

	stop := make(chan struct{}) // closed when the fleet must stop
	r.mu.Lock()
	r.stopFleet = stop
	r.env = env
	for i, ids := range plan(first, last, n) {
		c := &cluster{id: i, shards: ids, ops: make(chan clusterOp)}
		r.clusters = append(r.clusters, c)
		sessions := map[int]shardgroup.Session{}
		for _, id := range ids {
			if sess, ok := saved[id]; ok {
				sessions[id] = sess
			}
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.supervise(c, env, sessions, stop, nil)
		}()
	}
	if r.cfg.StatsInterval > 0 {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.statsLoop(stop, r.cfg.StatsInterval)
		}()
	}
	close(r.planned)
	r.mu.Unlock()

	var runErr error
	select {
	case <-ctx.Done():
	case <-r.shutdown:
	case runErr = <-env.fatal:
		r.events.emit(Event{Kind: EventFatal, Cluster: -1, Shard: -1, Err: runErr})
	}
	close(r.stopping)   // a reshard under way gives up before its cut-over
	r.resharding.Lock() // and finishes before the fleet stops
	close(stop)
	r.resharding.Unlock()
	r.wg.Wait()
	cancelGroups()
	r.saveSessions()
	r.closeServices()
	r.events.emit(Event{Kind: EventShutdown, Cluster: -1, Shard: -1})
	return runErr
}

// resolve turns config and /gateway/bot into the fleet's shard count,
// this runtime's range and the identify concurrency.
func (r *Runtime) resolve(gb discord.GatewayBot) (total, first, last, mc int, err error) {
	mc = gb.SessionStartLimit.MaxConcurrency
	if r.cfg.MaxConcurrencyOverride > 0 {
		mc = r.cfg.MaxConcurrencyOverride
	}
	mc = max(mc, 1)
	switch {
	case r.cfg.TotalShards > 0:
		total = r.cfg.TotalShards
	case r.cfg.Shards > 0:
		total = r.cfg.Shards
	default:
		total = max(gb.Shards, 1)
		if r.cfg.GuildsPerShard > 0 {
			total = (gb.Shards*1000 + r.cfg.GuildsPerShard - 1) / r.cfg.GuildsPerShard
		}
		if mc > 1 {
			total = (total + mc - 1) / mc * mc
		}
	}
	if mc > 1 && total%mc != 0 {
		lo, hi := total/mc*mc, (total/mc+1)*mc
		return 0, 0, 0, 0, fmt.Errorf("runtime: Shards (%d) must be a multiple of %d for a bot with max_concurrency %d (Discord's large-bot sharding): use %d or %d",
			total, mc, mc, max(lo, mc), hi)
	}
	first, last = 0, total-1
	if r.cfg.TotalShards > 0 {
		first, last = r.cfg.FirstShardID, r.cfg.LastShardID
	}
	if n := last - first + 1; r.cfg.Clusters > n {
		return 0, 0, 0, 0, fmt.Errorf("runtime: Clusters (%d) > Shards (%d): lower Clusters", r.cfg.Clusters, n)
	}
	if rem := gb.SessionStartLimit.Remaining; gb.SessionStartLimit.Total > 0 && rem < last-first+1 {
		reset := time.Duration(gb.SessionStartLimit.ResetAfter) * time.Millisecond
		return 0, 0, 0, 0, fmt.Errorf("runtime: %d session starts remain today but %d shards must identify: wait until the limit resets in %s (at %s) or run fewer shards",
			rem, last-first+1, reset.Round(time.Second), time.Now().Add(reset).Format(time.RFC3339))
	}
	return total, first, last, mc, nil
}

// clientOptions are the options every cluster's disgo client gets: the
// REST base URL and the shared limiter, the caches (carried over from a
// previous instance, or new with Config.CacheFlags), then the user's.
func (r *Runtime) clientOptions(carried cache.Caches) []bot.ConfigOpt {
	var restOpts []rest.ConfigOpt
	if r.cfg.RESTURL != "" {
		restOpts = append(restOpts, rest.WithURL(r.cfg.RESTURL))
	}
	if r.cfg.RESTLimiter != nil {
		restOpts = append(restOpts, r.cfg.RESTLimiter.ConfigOpt())
	}
	flags := r.cfg.CacheFlags
	opts := []bot.ConfigOpt{
		bot.WithRestClientConfigOpts(restOpts...),
		bot.WithCacheConfigOpts(func(c *cache.Config) { c.CacheFlags = flags }),
	}
	opts = append(opts, r.cfg.ClientOptions...)
	if carried != nil {
		opts = append(opts, bot.WithCaches(carried))
	}
	return opts
}

// RESTLimiter is the limiter every cluster's REST client shares, or nil.
func (r *Runtime) RESTLimiter() *restproxy.Limiter { return r.cfg.RESTLimiter }

// Shutdown stops every cluster (their Shutdown hooks first, each bounded
// by ShutdownTimeout) and waits for Run to return, or for ctx.
func (r *Runtime) Shutdown(ctx context.Context) error {
	running := r.beginShutdown()
	if !running {
		return nil
	}
	select {
	case <-r.stopped:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("runtime: shutdown: %w", ctx.Err())
	}
}

// observeBus counts a request on the runtime's bus for Stats and passes
// it to the Observer.
func (r *Runtime) observeBus(command string, d time.Duration, err error) {
	r.busReqs.Add(1)
	r.busNanos.Add(int64(d))
	if err != nil {
		r.busFails.Add(1)
	}
	if f := r.cfg.Observer.BusRequest; f != nil {
		f(command, d, err)
	}
}

// busStats reads the bus counters.
func (r *Runtime) busStats() BusStats {
	st := BusStats{Requests: r.busReqs.Load(), Failures: r.busFails.Load()}
	if st.Requests > 0 {
		st.Latency = time.Duration(r.busNanos.Load() / st.Requests)
	}
	return st
}

// closeServices stops every service, each bounded by ShutdownTimeout.
func (r *Runtime) closeServices() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*r.cfg.ShutdownTimeout)
	defer cancel()
	if err := r.services.Close(ctx); err != nil {
		r.cfg.Logger.Warn("services did not all stop cleanly", "err", err.Error())
	}
}

// beginShutdown tells Run to stop; it reports whether Run was called.
func (r *Runtime) beginShutdown() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.shutdown:
	default:
		close(r.shutdown)
	}
	return r.running
}

// Groups returns the clusters' current groups, in cluster order.
func (r *Runtime) Groups() []*shardgroup.Group {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*shardgroup.Group, 0, len(r.clusters))
	for _, c := range r.clusters {
		c.mu.Lock()
		if c.group != nil {
			out = append(out, c.group)
		}
		c.mu.Unlock()
	}
	return out
}
