package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/cache"
	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/rest"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/internal/clock"
	"github.com/gofleet/fleet/internal/errwrap"
	"github.com/gofleet/fleet/restproxy"
	"github.com/gofleet/fleet/services"
	"github.com/gofleet/fleet/shardgroup"
)

// Runtime plans a bot's shards into clusters, starts them at Discord's
// identify limit, supervises them and stops them. It is eris-fleet's
// Admiral, with goroutines for processes.
type Runtime struct {
	cfg      Config
	events   *events
	observer atomic.Pointer[Observer] // Observe's; nil: none
	clock    clock.Clock              // times restart back-off and the restart budget; tests step a fake one

	mu       sync.Mutex // guards the fields below
	running  bool
	clusters []*cluster
	env      *fleetEnv                  // set once Run has planned the fleet
	shutdown chan struct{}              // closed by Shutdown
	stopped  chan struct{}              // closed when Run returns
	planned  chan struct{}              // closed when env is set
	stopping chan struct{}              // closed when Run begins to stop
	kept     map[int]shardgroup.Session // sessions of stopped shards, to save

	runErr     error         // what Run returned, once stopped is closed; guarded by mu
	fleetReady chan struct{} // closed when the fleet is first ready

	bus      *bus.Bus
	ownBus   bool // the runtime made the bus and closes it
	busReqs  atomic.Int64
	busFails atomic.Int64
	busNanos atomic.Int64
	services *services.Manager
	pool     ProcessPool  // process mode's children; nil in one process
	children atomic.Int64 // process mode: children started, to tell them apart

	gate        shardgroup.Gate // the generation whose groups deliver to listeners
	wg          sync.WaitGroup  // counts cluster supervisors
	stopFleet   chan struct{}   // closed when the fleet must stop
	opSlot      chan struct{}   // holds a token while an operation (restart, reshard...) runs
	reshardBusy atomic.Bool     // a Reshard is under way
	reshardOp   atomic.Bool     // a reshard operation is started (StartReshard)
	startup     startup
	everReady   sync.Map // shard ID -> true once it has been ready
	started     time.Time
	user        userCalls

	// Guarded by mu:
	life      context.Context // the fleet's: cancelled when Run begins to stop
	endLife   context.CancelFunc
	stopErr   error           // what did not stop, once Run has returned
	stopCtx   context.Context // bounds the stop, once it has begun
	stopErrs  []error         // what did not stop in time
	allFailed chan struct{}   // closed when every cluster has failed
	ops       operations
}

// fleetEnv is what Run learned and built for every cluster.
type fleetEnv struct {
	total      int // the fleet's shard count
	shards     int // how many this runtime runs
	gatewayURL string
	queue      IdentifyQueue
	pacer      *shardgroup.Pacer // nil: shards connect at once
	fatal      chan error
	groupCtx   context.Context // shards run on it; cancelled after every cluster stopped
	gen        int64           // generation: listeners hear a group while Runtime.gate holds it
	counting   bool            // the first generation: its READYs make the fleet ready
	onLoaded   func(shard int) // a shard received every guild of its READY (reshard)
	standby    bool            // process mode: a reshard's new children, which deliver nothing until the switch
}

// New validates cfg and returns a runtime; nothing starts until Run.
func New(cfg Config) (*Runtime, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &Runtime{cfg: c, events: newEvents(c.Logger.With("component", "fleet"), c.WhatToLog), clock: clock.Real{}, fleetReady: make(chan struct{}),
		shutdown: make(chan struct{}), stopped: make(chan struct{}), planned: make(chan struct{}),
		stopping: make(chan struct{}), opSlot: make(chan struct{}, 1), allFailed: make(chan struct{})}
	if c.RESTLimiter == nil && !c.NoSharedRESTLimiter {
		lc := c.RESTLimiterConfig
		if lc.Logger == nil {
			lc.Logger = c.Logger
		}
		lc.Hooks = r.observedREST(lc.Hooks)
		if r.cfg.RESTLimiter, err = restproxy.New(lc); err != nil {
			return nil, errwrap.Wrap("runtime: Config.RESTLimiterConfig", "restproxy", err)
		}
	}
	r.bus = c.Bus
	if r.bus == nil {
		opts := bus.Options{DefaultTimeout: c.RequestTimeout, Strict: c.StrictBus, Logger: c.Logger,
			Observe: r.observeBus}
		if c.Processes != nil {
			opts.Transport = c.Processes.Transport()
		}
		r.bus = bus.New(opts)
		r.ownBus = true
	}
	specs := append(append([]services.Spec(nil), c.Services...), services.NewStore().Spec())
	if c.Member != nil {
		specs = nil // the admiral serves the fleet's services and store
	}
	r.services, err = services.NewManager(r.bus, services.ManagerConfig{
		Specs: specs, StartTimeout: c.ServiceTimeout, StartTogether: c.StartServicesTogether,
		MaxRestarts: c.MaxRestarts, RestartWindow: c.RestartWindow, RestartBackoff: c.RestartBackoff,
		ShutdownTimeout: c.ShutdownTimeout, Logger: c.Logger,
		OnEvent: func(e services.Event) { r.events.emit(e) },
	})
	if err != nil {
		return nil, errwrap.Wrap("runtime: Config.Services", "services", err)
	}
	return r, nil
}

// ErrUnauthorized means Discord refused the token.
var ErrUnauthorized = errors.New("runtime: Discord refused the token (401): check Config.Token")

// gatewayBot asks GET /gateway/bot, through the shared REST limiter so
// that it counts against the global limit with everything else. disgo's
// REST client does not pass ctx to its HTTP request, so the request runs
// on a transport of its own whose connections close when ctx ends.
func (r *Runtime) gatewayBot(ctx context.Context) (discord.GatewayBot, error) {
	var (
		mu    sync.Mutex // guards conns
		conns = map[net.Conn]struct{}{}
	)
	dialer := &net.Dialer{Timeout: 30 * time.Second}
	tr := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: func(_ context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			return c, nil
		},
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	defer tr.CloseIdleConnections()
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			_ = c.Close()
		}
	})
	defer stop()
	opts := []rest.ConfigOpt{rest.WithHTTPClient(&http.Client{Transport: tr, Timeout: time.Minute})}
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
	case ctx.Err() != nil:
		return discord.GatewayBot{}, ctx.Err()
	case errors.As(err, &re) && re.Response != nil && re.Response.StatusCode == http.StatusUnauthorized:
		return discord.GatewayBot{}, ErrUnauthorized
	case err != nil:
		return discord.GatewayBot{}, fmt.Errorf("runtime: GET /gateway/bot: %w", err)
	}
	return *gb, nil
}

// Run asks Discord for the shard count and limits, starts every cluster,
// and supervises them until ctx ends or Shutdown is called (it then
// returns nil, however early: during the request to Discord too), a
// fatal gateway close or a Setup error wrapping ErrFatal (it returns that
// error), or every cluster has failed (it returns why). With a
// SessionStore, the shards' sessions are resumed at start where they are
// still fresh, and kept and saved when Run stops.
//
// Stopping takes at most ShutdownTimeout: what has not stopped by then
// (a Shutdown hook or Setup ignoring its ctx, a shard whose connection
// hangs) is named in the error Run and Shutdown return.
func (r *Runtime) Run(ctx context.Context) (err error) {
	r.mu.Lock()
	if r.running {
		r.mu.Unlock()
		return errors.New("runtime: Run called twice")
	}
	r.running = true
	r.started = time.Now()
	life, endLife := context.WithCancel(context.WithoutCancel(ctx))
	r.life, r.endLife = life, endLife
	r.mu.Unlock()
	defer endLife()
	// The start (the request to Discord, the services) also ends with
	// Shutdown; a start cut short that way returns nil.
	startCtx, cancelStart := context.WithCancel(ctx)
	defer cancelStart()
	watchDone := make(chan struct{})
	defer func() { cancelStart(); <-watchDone }()
	go func() {
		defer close(watchDone)
		select {
		case <-r.shutdown:
			cancelStart()
		case <-startCtx.Done():
		}
	}()
	defer func() {
		r.mu.Lock()
		r.runErr = err
		r.mu.Unlock()
		close(r.stopped)
	}()
	defer func() {
		if startCtx.Err() != nil && errors.Is(err, startCtx.Err()) {
			err = nil // stopped by the caller: not a failure
		}
	}()
	defer r.closeStopping() // once Run stops, whichever way

	if p := r.cfg.Processes; p != nil {
		var once sync.Once
		if child, err := p.Child(startCtx, r.cfg, func() { once.Do(func() { close(r.fleetReady) }) }); child {
			return err
		}
	}
	var gb discord.GatewayBot
	var total, first, last, mc int
	if m := r.cfg.Member; m != nil {
		gb.URL = r.cfg.GatewayURL
		total, mc = r.cfg.Shards, memberConcurrency(r.cfg)
		first, last = 0, memberShards(m)-1 // only their count matters: the plan is Member.Clusters
	} else {
		gb, err = r.gatewayBot(startCtx)
		if err != nil {
			return err
		}
		total, first, last, mc, err = r.resolve(gb)
		if err != nil {
			return err
		}
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
	n := r.cfg.clusterCount(last - first + 1)
	clusters := make([]ClusterPlan, 0, n)
	if m := r.cfg.Member; m != nil {
		for _, cp := range m.Clusters {
			clusters = append(clusters, ClusterPlan{ID: cp.ID, Shards: slices.Clone(cp.Shards)})
		}
	} else {
		for i, ids := range plan(first, last, n) {
			clusters = append(clusters, ClusterPlan{ID: i, Shards: ids})
		}
	}
	// The start-up is followed from here: in process mode, the pool may
	// identify shards from Start on.
	r.startup.plan(r.started, last-first+1, mc, r.cfg.IdentifyInterval)
	if p := r.cfg.Processes; p != nil {
		gwURL := r.cfg.GatewayURL
		if gwURL == "" {
			gwURL = gb.URL
		}
		pf := r.processFleet(total, mc, gwURL, clusters)
		if pf.Pacer, err = r.pacer(mc); err != nil {
			return err
		}
		pool, err := p.Start(startCtx, pf)
		if err != nil {
			return fmt.Errorf("runtime: process mode: %w", err)
		}
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), r.cfg.ShutdownTimeout)
			defer cancel()
			if err := pool.Close(ctx); err != nil {
				r.cfg.Logger.Warn("process mode did not stop cleanly", "err", err.Error())
			}
		}()
		r.mu.Lock()
		r.pool = pool
		r.mu.Unlock()
	}
	env := &fleetEnv{total: total, shards: last - first + 1, gatewayURL: r.cfg.GatewayURL, queue: queue,
		fatal: make(chan error, 1), counting: true}
	if env.pacer, err = r.pacer(mc); err != nil {
		return err
	}
	if env.gatewayURL == "" {
		env.gatewayURL = gb.URL
	}
	// Shards run on their own context, so that Run's ending can stop them
	// in order (keeping sessions if asked) before anything is cancelled.
	groupCtx, cancelGroups := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelGroups()
	env.groupCtx = groupCtx
	saved := r.loadSessions(startCtx, total, env.gatewayURL)

	// The bus and the services come first: clusters start only once every
	// service is ready, as in eris-fleet.
	defer func() {
		if r.ownBus {
			r.bus.Close()
		}
	}()
	if r.cfg.Member == nil {
		if err := r.admiral(); err != nil {
			return err
		}
	}
	if err := r.services.Start(startCtx); err != nil {
		r.closeServices()
		return err
	}

	stop := make(chan struct{}) // closed when the fleet must stop
	r.mu.Lock()
	r.stopFleet = stop
	r.env = env
	for _, cp := range clusters {
		ids := cp.Shards
		c := &cluster{id: cp.ID, shards: ids, ops: make(chan clusterOp)}
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
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.progressLoop(stop)
	}()
	if r.cfg.SessionStore != nil && r.cfg.CheckpointInterval > 0 {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.checkpointLoop(stop, r.cfg.CheckpointInterval)
		}()
	}
	close(r.planned)
	r.mu.Unlock()

	var runErr error
	select {
	case <-ctx.Done():
	case <-r.shutdown:
	case runErr = <-env.fatal:
		r.events.emit(Fatal{Err: runErr})
	case <-r.allFailed:
		runErr = r.failure()
		r.events.emit(Fatal{Err: runErr})
	}
	stopErr := r.stop(stop, cancelGroups)
	r.events.emit(FleetShutdown{})
	if runErr != nil {
		return runErr
	}
	return stopErr
}

// Ready is closed once every shard of the fleet has been ready (when
// EventFleetReady is emitted). It stays closed: a shard that disconnects
// later does not reopen it. If Run fails or is stopped before the fleet is
// ready, Ready is never closed; wait for Done too:
//
//	go rt.Run(ctx)
//	select {
//	case <-rt.Ready():
//	case <-rt.Done():
//		return rt.Err() // Run failed, or was stopped, before ready
//	}
func (r *Runtime) Ready() <-chan struct{} { return r.fleetReady }

// Done is closed when Run returns; Err is then what it returned. It is
// never closed for a runtime whose Run was not called.
func (r *Runtime) Done() <-chan struct{} { return r.stopped }

// Err is what Run returned, once Done is closed; nil before.
func (r *Runtime) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.runErr
}

// stop stops the fleet within ShutdownTimeout: operations under way and
// Setups end (their ctx is the fleet's life), the operation slot is taken
// so that none begins, the supervisors stop their clusters (Shutdown
// hooks, then shards, keeping sessions with a SessionStore), the sessions
// are saved and the services stopped. What has not stopped by the
// deadline is named in the error.
func (r *Runtime) stop(stop chan struct{}, cancelGroups context.CancelFunc) error {
	stopCtx, cancel := context.WithTimeout(context.Background(), r.cfg.ShutdownTimeout)
	defer cancel()
	// The clusters' stop ends a little earlier, so that a group giving up
	// on a shard has reported it by the deadline.
	margin := min(r.cfg.ShutdownTimeout/2, 150*time.Millisecond)
	clusterCtx, cancelClusters := context.WithTimeout(stopCtx, r.cfg.ShutdownTimeout-margin)
	defer cancelClusters()
	r.mu.Lock()
	r.stopCtx = clusterCtx
	r.mu.Unlock()
	r.closeStopping() // a reshard under way gives up before its cut-over
	r.endLife()       // operations and Setups under way end
	var errs []error
	select {
	case r.opSlot <- struct{}{}: // held for good: no operation begins now
	case <-stopCtx.Done():
		errs = append(errs, errors.New("an operation under way did not end"))
	}
	close(stop)
	supervisors := make(chan struct{})
	go func() {
		r.wg.Wait()
		close(supervisors)
	}()
	select {
	case <-supervisors:
	case <-stopCtx.Done():
	}
	// Shards still dialling or stuck end with their context; the groups
	// that gave up on them join them now.
	cancelGroups()
	grace, cancelGrace := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancelGrace()
	select {
	case <-supervisors:
	case <-grace.Done():
		errs = append(errs, errors.New("cluster supervisors did not stop"))
	}
	r.joinOperations(grace)
	r.saveSessions()
	r.closeServices()
	r.waitUserCalls(grace)
	if stuck := r.stuckUserCalls(); len(stuck) > 0 {
		errs = append(errs, fmt.Errorf("user code still running: %s", strings.Join(stuck, ", ")))
	}
	r.mu.Lock()
	errs = append(r.stopErrs, errs...)
	r.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		err = fmt.Errorf("runtime: shutdown incomplete after ShutdownTimeout (%s): %w", r.cfg.ShutdownTimeout, err)
		r.mu.Lock()
		r.stopErr = err
		r.mu.Unlock()
		return err
	}
	return nil
}

// closeStopping closes stopping once; only Run's goroutine calls it.
func (r *Runtime) closeStopping() {
	select {
	case <-r.stopping:
	default:
		close(r.stopping)
	}
}

// lifeContext is the fleet's context: cancelled when Run begins to stop.
// Before Run it is already cancelled.
func (r *Runtime) lifeContext() context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.life == nil {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		return ctx
	}
	return r.life
}

// stopContext bounds the final stop of a cluster: the stop's deadline
// once it has begun.
func (r *Runtime) stopContext() context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopCtx == nil {
		return context.Background()
	}
	return r.stopCtx
}

// noteStopFailure records something that did not stop, for stop's error.
func (r *Runtime) noteStopFailure(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopErrs = append(r.stopErrs, err)
}

// checkAllFailed closes allFailed when every cluster has failed: nothing
// serves and nothing will.
func (r *Runtime) checkAllFailed() {
	r.mu.Lock()
	clusters := append([]*cluster(nil), r.clusters...)
	r.mu.Unlock()
	for _, c := range clusters {
		c.mu.Lock()
		failed := c.parked == "failed"
		c.mu.Unlock()
		if !failed {
			return
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.allFailed:
	default:
		close(r.allFailed)
	}
}

// failure is Run's error when every cluster has failed.
func (r *Runtime) failure() error {
	r.mu.Lock()
	clusters := append([]*cluster(nil), r.clusters...)
	r.mu.Unlock()
	errs := make([]error, 0, len(clusters))
	for _, c := range clusters {
		c.mu.Lock()
		errs = append(errs, errwrap.Trim("runtime", c.lastErr)) // it names the cluster
		c.mu.Unlock()
	}
	return fmt.Errorf("runtime: no cluster could start (check GatewayURL, the network and Setup; each cluster was restarted MaxRestarts times): %w", errors.Join(errs...))
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

// String describes the runtime without its configuration, so that %v,
// %+v and loggers that format values never print the token.
func (r *Runtime) String() string {
	if r == nil {
		return "runtime.Runtime(nil)"
	}
	return fmt.Sprintf("runtime.Runtime{clusters: %d}", r.cfg.Clusters)
}

// GoString is String, for %#v.
func (r *Runtime) GoString() string { return r.String() }

// LogValue is String, for slog.
func (r *Runtime) LogValue() slog.Value { return slog.StringValue(r.String()) }

// Shutdown stops every cluster (their Shutdown hooks first, then their
// shards, keeping sessions with a SessionStore, all within
// ShutdownTimeout), saves the sessions and waits for Run to return, or
// for ctx. Its error names what did not stop in time.
func (r *Runtime) Shutdown(ctx context.Context) error {
	running := r.beginShutdown()
	if !running {
		return nil
	}
	select {
	case <-r.stopped:
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.stopErr
	case <-ctx.Done():
		return fmt.Errorf("runtime: shutdown: %w", ctx.Err())
	}
}

// observeBus counts a request on the runtime's bus for Stats and passes
// it to the observer.
func (r *Runtime) observeBus(command string, d time.Duration, err error) {
	r.busReqs.Add(1)
	r.busNanos.Add(int64(d))
	if err != nil {
		r.busFails.Add(1)
	}
	if o := r.observer.Load(); o != nil && o.BusRequest != nil {
		o.BusRequest(command, d, err)
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
