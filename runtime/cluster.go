package runtime

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/disgoorg/disgo/cache"
	"github.com/disgoorg/disgo/gateway"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/internal/errwrap"
	"github.com/gofleet/fleet/shardgroup"
)

// ErrUnknownCluster is returned for a cluster ID the runtime does not run.
var ErrUnknownCluster = errors.New("runtime: unknown cluster")

// ErrNotRunning is returned by operations that need a running fleet.
var ErrNotRunning = errors.New("runtime: the fleet is not running")

// cluster is one supervised group. Its supervisor goroutine owns the
// group; others ask it for restarts through ops.
type cluster struct {
	id     int
	shards []int
	ops    chan clusterOp

	mu        sync.Mutex // guards the fields below
	group     *shardgroup.Group
	runner    *shardgroup.Runner
	startedAt time.Time // when the current group started
	restarts  int       // restarts since Run began (soft, hard and supervised)
	parked    string    // "failed" (after MaxRestarts) or "stopped" (ShutdownCluster); "" while running
	lastErr   error     // why the last start failed

	proc ChildProcess // in process mode, the child serving the cluster (group and runner are nil); guarded by mu
	// states are the states of proc's shards, as the events of child
	// number live tell; guarded by mu.
	states map[int]shardgroup.State
	live   int64
}

type opKind int

const (
	opSoftRestart opKind = iota
	opRestart
	opRetire   // stop for good: a reshard replaced the cluster
	opShutdown // stop and park: ShutdownCluster
)

type clusterOp struct {
	kind  opKind
	ctx   context.Context
	reply chan error
}

// pendingOp is an operation whose answer waits for something the
// supervisor sees later (a hard restart: the new instance's ready).
type pendingOp struct{ op *clusterOp }

// done is the pending operation's ctx's Done, or nil.
func (p *pendingOp) done() <-chan struct{} {
	if p.op == nil {
		return nil
	}
	return p.op.ctx.Done()
}

// answer replies to the pending operation, if any, and forgets it.
func (p *pendingOp) answer(err error) {
	if p.op != nil {
		p.op.reply <- err // buffered: the caller may have gone
		p.op = nil
	}
}

// instance is one running group and the user code on it.
type instance struct {
	g        *shardgroup.Group  // what Setup gets
	run      *shardgroup.Runner // g's lifecycle, which only the runtime holds
	bot      Bot
	ready    chan struct{} // closed when every shard is ready
	ep       *bus.Endpoint // the cluster's bus endpoint for this instance
	activate func() error  // puts ep in place at the cluster's address
	cancel   func()        // cancels the ctx Setup got: the instance's life
	proc     ChildProcess  // in process mode, the child running the instance (g, run, bot and ep are nil)
	waiting  *shardSet     // in process mode, the shards of proc not ready yet
	child    int64         // in process mode, which child of the runtime proc is
}

// exited is closed when the instance's child process exits; nil in one
// process.
func (inst *instance) exited() <-chan struct{} {
	if inst.proc == nil {
		return nil
	}
	return inst.proc.Exited()
}

// supervise runs one cluster until stop closes: it starts a group and
// restarts it when its Setup fails or panics, or when it is not ready
// within the cluster timeout (Setup included), with back-off and jitter,
// at most MaxRestarts per RestartWindow, then reports the cluster failed.
// A Setup error wrapping ErrFatal stops the fleet instead. It serves soft
// and hard restarts.
//
// A supervisor may adopt an instance already started (a reshard's new
// generation).
func (r *Runtime) supervise(c *cluster, env *fleetEnv, sessions map[int]shardgroup.Session, stop <-chan struct{}, adopt *instance) {
	budget := r.budget()
	var inst *instance
	var restarting pendingOp // a hard restart waiting for its instance to be ready
	defer func() {
		if inst != nil {
			if err := r.stopInstanceCtx(r.stopContext(), inst, r.cfg.SessionStore != nil || inst.proc != nil); err != nil {
				r.noteStopFailure(fmt.Errorf("cluster %d: %w", c.id, err))
			}
		}
	}()
	timeout := r.clusterTimeout(c, env)
	// A child process that crashed after it was ready restarts at once
	// (its shards resume): the back-off spaces failures that come before a
	// ready; every restart counts against MaxRestarts all the same.
	crashed := false
	// failed handles a start that failed; it reports whether to start
	// again (false: the cluster is parked, or the fleet stops).
	failed := func(err error) bool {
		quick := crashed
		crashed = false
		if r.lifeContext().Err() != nil { // the fleet stops: not a failure to count
			<-stop
			return false
		}
		c.mu.Lock()
		c.lastErr = err
		c.mu.Unlock()
		var pe *PanicError
		if errors.As(err, &pe) {
			r.cfg.Logger.Error("cluster setup panicked", "cluster", c.id, "panic", fmt.Sprint(pe.Value), "stack", string(pe.Stack))
		}
		if errors.Is(err, ErrFatal) {
			select {
			case env.fatal <- err:
			default:
			}
			r.park(c, stop, "failed")
			return false
		}
		var wait time.Duration
		ok := true
		if quick {
			ok = budget.FailNow(r.clock.Now())
		} else {
			wait, ok = budget.Fail(r.clock.Now())
		}
		if !ok {
			r.events.emit(ClusterFailed{Cluster: c.id,
				Err: errwrap.Wrap(fmt.Sprintf("runtime: cluster %d failed after %d restarts within %s", c.id, r.cfg.MaxRestarts, r.cfg.RestartWindow), "runtime", err)})
			r.park(c, stop, "failed")
			return false
		}
		r.events.emit(ClusterRestarted{Cluster: c.id, Restarts: budget.Used(r.clock.Now()),
			MaxRestarts: max(r.cfg.MaxRestarts, 0), Backoff: wait, Err: err})
		if quick {
			return true
		}
		t := r.clock.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C():
			return true
		case <-stop:
			return false
		}
	}
	for {
		deadline := time.Now().Add(timeout)
		if adopt != nil {
			inst, adopt = adopt, nil
		} else {
			var err error
			inst, err = r.startInstance(c, env, sessions, deadline)
			sessions = nil
			if err != nil {
				inst = nil
				if !failed(err) {
					return
				}
				continue
			}
		}
		timer := time.NewTimer(time.Until(deadline))
		timeoutC := timer.C
		ready := func() {
			inst.ready = nil // serve on; no timeout any more
			timer.Stop()
			timeoutC = nil
			budget.Up(r.clock.Now())
			restarting.answer(nil)
		}
		// readyNow takes a ready report already there (a nil channel has
		// none): the select below may find it and another event at once
		// and take either.
		readyNow := func() bool {
			select {
			case <-inst.ready:
				ready()
				return true
			default:
				return false
			}
		}
		var why error // set when the instance must be restarted
		for why == nil {
			select {
			case <-stop:
				timer.Stop()
				restarting.answer(ErrNotRunning)
				return
			case <-inst.ready:
				ready()
			case <-restarting.done():
				restarting.answer(fmt.Errorf("runtime: restart of cluster %d: the new instance is still connecting: %w", c.id, restarting.op.ctx.Err()))
			case <-inst.exited():
				readyNow() // a child ready, then exited, crashed after ready
				why = fmt.Errorf("runtime: cluster %d: child process %d exited: %w", c.id, inst.proc.Pid(), inst.proc.Err())
				crashed = inst.ready == nil
				restarting.answer(errwrap.Wrap(fmt.Sprintf("runtime: restart of cluster %d: the cluster restarts under supervision", c.id), "runtime", why))
			case <-timeoutC:
				if readyNow() { // ready as the time ran out: it made it
					continue
				}
				why = fmt.Errorf("runtime: cluster %d not ready within %s (ClusterTimeout): shards not ready: %v", c.id, timeout, notReady(inst))
				restarting.answer(errwrap.Wrap(fmt.Sprintf("runtime: restart of cluster %d: the cluster restarts under supervision", c.id), "runtime", why))
			case op := <-c.ops:
				switch op.kind {
				case opSoftRestart:
					next, err := r.handOver(op.ctx, c, env, inst)
					if next != nil {
						inst = next
						if inst.ready != nil { // the new instance is not ready yet: bound it too
							timer.Stop()
							timer = time.NewTimer(timeout)
							timeoutC = timer.C
						}
					}
					op.reply <- err
				case opRetire, opShutdown:
					timer.Stop()
					err := r.stopInstanceCtx(op.ctx, inst, false)
					inst = nil
					op.reply <- err
					if op.kind == opShutdown {
						r.events.emit(ClusterShutdown{Cluster: c.id})
						r.park(c, stop, "stopped")
					}
					return
				case opRestart:
					timer.Stop()
					// Begun, the restart goes through: the old instance's stop
					// is bounded by ShutdownTimeout, not by the caller.
					_ = r.stopInstanceCtx(context.Background(), inst, false)
					inst = nil
					next, err := r.startFresh(c, env, time.Now().Add(timeout))
					if err != nil {
						op.reply <- errwrap.Wrap(fmt.Sprintf("runtime: restart of cluster %d: the cluster restarts under supervision", c.id), "runtime", err)
						if !failed(err) {
							return
						}
						break
					}
					inst = next
					r.events.emit(ClusterRestarted{Cluster: c.id, Hard: true})
					restarting.op = &op // answered once every shard is ready
					timer = time.NewTimer(timeout)
					timeoutC = timer.C
				}
			}
			if inst == nil { // a hard restart failed: start again
				break
			}
		}
		if inst == nil {
			continue
		}
		timer.Stop()
		_ = r.stopInstanceCtx(context.Background(), inst, false)
		inst = nil
		if !failed(why) {
			return
		}
	}
}

// notReady lists an instance's shards that are not ready.
func notReady(inst *instance) []int {
	if inst.g == nil {
		return inst.notReady()
	}
	var out []int
	for _, sh := range inst.g.Shards() {
		if sh.State != shardgroup.StateReady {
			out = append(out, sh.ID)
		}
	}
	return out
}

// park keeps a cluster that has failed or was shut down: it runs nothing
// and operations on it get an error saying why.
func (r *Runtime) park(c *cluster, stop <-chan struct{}, state string) {
	c.mu.Lock()
	c.parked = state
	c.mu.Unlock()
	if state == "failed" {
		r.checkAllFailed()
	}
	for {
		select {
		case <-stop:
			return
		case op := <-c.ops:
			op.reply <- fmt.Errorf("runtime: cluster %d is %s", c.id, state)
		}
	}
}

// newInstance builds a group for the cluster and runs the user's Setup on
// it; nothing connects yet. A soft restart passes the old client's caches,
// which the new client takes over: a RESUME replays only missed events,
// so a new cache would stay empty.
func (r *Runtime) newInstance(ctx context.Context, c *cluster, env *fleetEnv, caches cache.Caches) (*instance, error) {
	inst := &instance{ready: make(chan struct{})}
	began := time.Now() // this instance's start, for ClusterReady
	var readyOnce sync.Once
	hooks := shardgroup.Hooks{
		Identify: func(g *shardgroup.Group, shard int, waited time.Duration) {
			if env.counting {
				r.startup.identified(shard)
			}
			r.events.emit(ShardIdentify{Cluster: g.ID(), Shard: shard, Waited: waited})
		},
		ShardReady: func(g *shardgroup.Group, shard, guilds int, resumed bool) {
			if resumed {
				r.events.emit(ShardResumed{Cluster: g.ID(), Shard: shard})
			}
			if _, seen := r.everReady.LoadOrStore(shard, true); env.counting && !seen {
				n, last := r.startup.shardReady(shard)
				r.events.emit(ShardReady{Cluster: g.ID(), Shard: shard, Ready: n, Of: env.shards, Elapsed: time.Since(r.started)})
				if last {
					r.emitLast()
					close(r.fleetReady) // last is true once
					r.events.emit(FleetReady{Shards: n, Elapsed: time.Since(r.started)})
				}
			}
			if g.State() == shardgroup.StateReady {
				readyOnce.Do(func() {
					close(inst.ready)
					r.events.emit(ClusterReady{Cluster: g.ID(), Took: time.Since(began)})
				})
			}
		},
		ShardState: func(g *shardgroup.Group, shard int, from, to shardgroup.State) {
			if from == shardgroup.StateReady && to == shardgroup.StateDisconnected {
				r.events.emit(ShardDisconnected{Cluster: g.ID(), Shard: shard})
			}
		},
		GuildsLoaded: func(g *shardgroup.Group, shard int) {
			if env.onLoaded != nil {
				env.onLoaded(shard)
			}
		},
		Close: func(g *shardgroup.Group, shard, code int) {
			r.events.emit(ShardClosed{Cluster: g.ID(), Shard: shard, Code: code})
		},
		Zombie: func(g *shardgroup.Group, shard int) {
			r.events.emit(ShardZombie{Cluster: g.ID(), Shard: shard})
		},
		ListenerPanic: func(g *shardgroup.Group, shard int, v any) {
			r.events.emit(ListenerPanic{Cluster: g.ID(), Shard: shard, Value: v})
		},
		Fatal: func(g *shardgroup.Group, err *shardgroup.CloseError) {
			select {
			case env.fatal <- fmt.Errorf("runtime: cluster %d: %w", g.ID(), err):
			default:
			}
		},
	}
	hooks.Event = func(g *shardgroup.Group, shard int, t gateway.EventType) {
		if o := r.observer.Load(); o != nil && o.GatewayEvent != nil {
			o.GatewayEvent(g.ID(), shard, string(t))
		}
	}
	run, err := shardgroup.New(shardgroup.Config{
		ID: c.id, ShardIDs: c.shards, ShardCount: env.total, Token: r.cfg.Token, GatewayURL: env.gatewayURL,
		Intents: r.cfg.Intents, IdentifyLimiter: env.queue, Pacer: env.pacer, Logger: r.cfg.Logger, Presence: r.cfg.StartingStatus,
		ClientOptions: r.clientOptions(caches), Hooks: hooks, Gate: &r.gate, Generation: env.gen, Bus: r.bus.Client(),
		Compression: r.cfg.Compression, Deliver: r.delivering(c.id), Serve: r.serving(c.id), Await: r.awaiting(c.id),
	})
	if err != nil {
		return nil, err
	}
	g := run.Group()
	inst.run, inst.g = run, g
	// Setup's ctx is the instance's life: cancelled when the instance
	// stops or the fleet does. The wait for Setup ends with ctx too.
	ictx, icancel := context.WithCancel(r.lifeContext())
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	defer context.AfterFunc(ictx, wcancel)()
	var b Bot
	err = r.callUser(wctx, fmt.Sprintf("cluster %d: Setup", c.id), func() error {
		b = r.cfg.Bot(c.id)
		if b == nil {
			return fmt.Errorf("Config.Bot returned nil for cluster %d: return a Bot", c.id)
		}
		return b.Setup(ictx, g)
	}, func(err error) {
		// Setup returned after it was given up on: the instance never
		// serves, so its Shutdown hook runs now if it was set up.
		if err == nil {
			r.shutdownHook(context.Background(), c.id, b)
		}
		g.Client().Rest().Close(context.Background())
	})
	if err != nil {
		icancel()
		if wctx.Err() == nil { // Setup returned: nothing else uses the client
			g.Client().Rest().Close(context.Background())
		}
		if r.lifeContext().Err() != nil { // the fleet stops: not the Setup's fault
			err = ErrNotRunning
		}
		return nil, fmt.Errorf("runtime: cluster %d: Setup: %w", c.id, err)
	}
	inst.bot, inst.cancel = b, icancel
	if inst.activate, err = r.clusterEndpoint(c, inst); err != nil {
		icancel()
		g.Client().Rest().Close(context.Background())
		return nil, fmt.Errorf("runtime: cluster %d: bus endpoint: %w", c.id, err)
	}
	return inst, nil
}

// startInstance builds and sets up a new instance and starts its shards;
// Setup must return before deadline.
func (r *Runtime) startInstance(c *cluster, env *fleetEnv, sessions map[int]shardgroup.Session, deadline time.Time) (*instance, error) {
	if r.pool != nil {
		return r.startChild(c, env, ResumeStored, deadline)
	}
	ctx, cancel := context.WithDeadlineCause(r.lifeContext(), deadline,
		fmt.Errorf("runtime: cluster %d not set up within its ClusterTimeout", c.id))
	defer cancel()
	inst, err := r.newInstance(ctx, c, env, nil)
	if err != nil {
		return nil, err
	}
	if m := r.cfg.Member; m != nil && m.Resume != nil {
		handed, err := r.memberResume(ctx, c.id, m.Resume)
		if err != nil {
			r.stopInstance(inst, false)
			return nil, fmt.Errorf("runtime: cluster %d: Member.Resume: %w", c.id, err)
		}
		if handed != nil {
			sessions = handed
		}
	}
	r.publish(c, inst.run)
	if err := inst.activate(); err != nil {
		r.stopInstance(inst, false)
		return nil, err
	}
	inst.run.StartResuming(env.groupCtx, sessions)
	return inst, nil
}

// memberResume calls Member.Resume with a panic recovered.
// The sessions travel by channel: callUser gives up on a Resume that
// outlives ctx, and one that returns later must not write what was read.
func (r *Runtime) memberResume(ctx context.Context, cluster int, resume func(context.Context, int) (map[int]shardgroup.Session, error)) (map[int]shardgroup.Session, error) {
	got := make(chan map[int]shardgroup.Session, 1)
	err := r.callUser(ctx, fmt.Sprintf("cluster %d: Member.Resume", cluster), func() error {
		sessions, err := resume(ctx, cluster)
		got <- sessions
		return err
	}, nil)
	if err != nil {
		return nil, err
	}
	return <-got, nil
}

func (r *Runtime) publish(c *cluster, run *shardgroup.Runner) {
	c.mu.Lock()
	if c.group != nil || c.proc != nil {
		c.restarts++
	}
	c.runner, c.group, c.proc, c.startedAt = run, run.Group(), nil, time.Now()
	c.mu.Unlock()
}

// handOver replaces a cluster's running instance by a new one without
// spending an IDENTIFY: the new instance is built and set up, then every
// shard of the old one closes with a resumable code and the new one
// RESUMEs its session; Discord replays what arrived in between. A shard
// whose RESUME is refused identifies through the queue.
//
// If ctx ends before the new instance is set up, nothing is handed over:
// the old instance keeps serving and the error says so. Once the hand-over
// has begun it completes; a ctx that ends while the new shards resume
// returns the new instance with ctx's error.
func (r *Runtime) handOver(ctx context.Context, c *cluster, env *fleetEnv, old *instance) (*instance, error) {
	if old.proc != nil {
		return r.handOverChild(ctx, c, env, old)
	}
	began := time.Now()
	r.events.emit(SoftRestartStarted{Cluster: c.id})
	next, err := r.newInstance(ctx, c, env, old.g.Client().Caches())
	if err == nil && ctx.Err() != nil {
		r.stopInstance(next, false) // set up, never served
		err = ctx.Err()
	}
	if err != nil {
		return nil, errwrap.Wrap(fmt.Sprintf("runtime: soft restart of cluster %d: the old instance keeps serving", c.id), "runtime", err)
	}
	paused := time.Now()
	// A shard that does not stop in time (a connection that hangs) is
	// left to end on its own; its session, if any, is handed over all the
	// same, and the new shard identifies if Discord refuses it.
	sctx, cancel := context.WithTimeout(context.Background(), r.cfg.ShutdownTimeout)
	sessions, stopErr := old.run.Stop(sctx, true)
	cancel()
	if stopErr != nil {
		r.cfg.Logger.Warn("soft restart: old shards did not stop in time", "cluster", c.id, "err", stopErr.Error())
	}
	r.publish(c, next.run)
	next.run.StartResuming(env.groupCtx, sessions)
	if err := next.activate(); err != nil {
		r.cfg.Logger.Error("cluster endpoint hand-over failed", "cluster", c.id, "err", err.Error())
	}
	select {
	case <-next.ready:
		next.ready = nil
	case <-ctx.Done():
		err = fmt.Errorf("runtime: soft restart of cluster %d: handed over, the new instance is still connecting: %w", c.id, ctx.Err())
	}
	pause := time.Since(paused)
	r.events.emit(SoftRestartHandedOver{Cluster: c.id, Sessions: len(sessions), Shards: len(c.shards), Pause: pause})
	r.stopInstance(old, false) // its shards are stopped already; this runs its Shutdown hook
	r.events.emit(SoftRestartDone{Cluster: c.id, Took: time.Since(began)})
	return next, err
}

// delivering is the group's Deliver check for cluster id: the member's
// Delivering, if any.
func (r *Runtime) delivering(id int) func() bool {
	m := r.cfg.Member
	if m == nil || m.Delivering == nil {
		return nil
	}
	return func() bool { return m.Delivering(id) }
}

// serving is the group's Serve check for cluster id: the member's
// Serving, if any.
func (r *Runtime) serving(id int) func() bool {
	m := r.cfg.Member
	if m == nil || m.Serving == nil {
		return nil
	}
	return func() bool { return m.Serving(id) }
}

// awaiting is Member.Await for one cluster, or nil.
func (r *Runtime) awaiting(id int) func(context.Context, int) (shardgroup.Session, []byte, bool) {
	m := r.cfg.Member
	if m == nil || m.Await == nil {
		return nil
	}
	return func(ctx context.Context, shard int) (shardgroup.Session, []byte, bool) {
		return m.Await(ctx, id, shard)
	}
}

// shutdownHook runs a Bot's Shutdown hook, if it has one, bounded by
// ShutdownTimeout and ctx, with a panic recovered.
func (r *Runtime) shutdownHook(ctx context.Context, cluster int, b Bot) error {
	s, ok := b.(BotShutdowner)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.ShutdownTimeout)
	defer cancel()
	err := r.callUser(ctx, fmt.Sprintf("cluster %d: Shutdown hook", cluster), func() error { return s.Shutdown(ctx) }, nil)
	if err != nil {
		r.cfg.Logger.Warn("cluster shutdown hook failed", "cluster", cluster, "err", err.Error())
		return fmt.Errorf("Shutdown hook: %w", err)
	}
	return nil
}

// stopInstance stops an instance, each step bounded by ShutdownTimeout.
func (r *Runtime) stopInstance(inst *instance, keep bool) {
	_ = r.stopInstanceCtx(context.Background(), inst, keep)
}

// stopInstanceCtx runs the Bot's Shutdown hook and stops the group's
// shards (a no-op for shards already handed over), keeping their
// sessions if asked; each step is bounded by ShutdownTimeout and ctx. The
// error names what did not stop: the hook, or shards, whose goroutines
// end with the fleet's shard context.
func (r *Runtime) stopInstanceCtx(ctx context.Context, inst *instance, keep bool) error {
	if inst.proc != nil {
		return r.stopChild(ctx, inst, keep)
	}
	var errs []error
	if inst.bot != nil {
		// The hook may use most of the time; the shards' close needs little.
		hctx, cancel := context.WithTimeout(ctx, r.cfg.ShutdownTimeout*3/4)
		errs = append(errs, r.shutdownHook(hctx, inst.g.ID(), inst.bot))
		cancel()
	}
	if inst.cancel != nil {
		inst.cancel()
	}
	gctx, cancel := context.WithTimeout(ctx, r.cfg.ShutdownTimeout)
	defer cancel()
	sessions, err := inst.run.Stop(gctx, keep)
	errs = append(errs, err)
	inst.g.Client().Rest().Close(gctx)
	if inst.ep != nil {
		_ = inst.ep.Close(gctx) // a replaced endpoint only finishes its handlers
	}
	if keep {
		r.keepSessions(sessions)
	}
	return errors.Join(errs...)
}

// cluster returns a cluster by ID once the fleet is planned.
func (r *Runtime) cluster(ctx context.Context, id int) (*cluster, error) {
	select {
	case <-r.planned:
	case <-r.stopping:
		return nil, ErrNotRunning
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.clusters {
		if c.id == id {
			return c, nil
		}
	}
	if m := r.cfg.Member; m != nil {
		ids := make([]int, 0, len(r.clusters))
		for _, c := range r.clusters {
			ids = append(ids, c.id)
		}
		return nil, fmt.Errorf("%w %d (this member runs clusters %v; the fleet's admiral reaches the others)", ErrUnknownCluster, id, ids)
	}
	return nil, fmt.Errorf("%w %d (have 0..%d)", ErrUnknownCluster, id, len(r.clusters)-1)
}

// acquire takes the runtime's operation slot: one soft or hard restart,
// cluster shutdown or reshard at a time. It waits for the slot until ctx
// ends, never holding a lock meanwhile; before Run and once the fleet
// stops it returns ErrNotRunning at once.
func (r *Runtime) acquire(ctx context.Context) (release func(), err error) {
	if err := r.checkRunning(ctx); err != nil {
		return nil, err
	}
	select {
	case r.opSlot <- struct{}{}:
	case <-r.stopping:
		return nil, ErrNotRunning
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case <-r.stopping:
		<-r.opSlot
		return nil, ErrNotRunning
	default:
	}
	return func() { <-r.opSlot }, nil
}

// checkRunning returns ctx's error if it has ended (nothing is done for a
// caller already gone), and ErrNotRunning before Run or once the fleet
// stops.
func (r *Runtime) checkRunning(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	running := r.running
	r.mu.Unlock()
	if !running {
		return ErrNotRunning
	}
	select {
	case <-r.stopping:
		return ErrNotRunning
	default:
	}
	return nil
}

// opContext is ctx, also cancelled when the fleet begins to stop.
func (r *Runtime) opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(r.lifeContext(), cancel)
	return ctx, func() { stop(); cancel() }
}

func (r *Runtime) do(ctx context.Context, id int, kind opKind) error {
	release, err := r.acquire(ctx)
	if err != nil {
		return err
	}
	defer release()
	c, err := r.cluster(ctx, id)
	if err != nil {
		return err
	}
	ctx, cancel := r.opContext(ctx)
	defer cancel()
	op := clusterOp{kind: kind, ctx: ctx, reply: make(chan error, 1)}
	select {
	case c.ops <- op:
	case <-r.stopping:
		return ErrNotRunning
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-op.reply:
		return err
	case <-r.stopped:
		return ErrNotRunning
	}
}

// SoftRestart replaces a cluster's instance without downtime: a new
// instance of the user's Bot is set up on a new group, then every shard's
// live session is handed over (the old shard closes with a resumable code,
// the new one RESUMEs), so no IDENTIFY is spent and no event is lost or
// seen twice. The old instance's Shutdown hook runs after the hand-over.
// If the new instance's Setup fails, or ctx ends before it is set up, the
// old one keeps serving and the error is returned. It waits for another
// operation under way (a reshard, a restart) only until ctx ends, and
// returns ErrNotRunning before Run.
func (r *Runtime) SoftRestart(ctx context.Context, cluster int) error {
	return r.do(ctx, cluster, opSoftRestart)
}

// SoftRestartAll soft-restarts every cluster, one at a time, and stops
// at the first error.
func (r *Runtime) SoftRestartAll(ctx context.Context) error {
	return r.restartAll(ctx, false, nil)
}

// RestartAll restarts every cluster the hard way, one at a time, and
// stops at the first error.
func (r *Runtime) RestartAll(ctx context.Context) error {
	return r.restartAll(ctx, true, nil)
}

// restartAll restarts every cluster, one at a time, telling progress
// (if not nil) after each.
func (r *Runtime) restartAll(ctx context.Context, hard bool, progress func(done, of int)) error {
	if err := r.checkRunning(ctx); err != nil {
		return err
	}
	select { // the clusters are known once the fleet is planned
	case <-r.planned:
	case <-r.stopping:
		return ErrNotRunning
	case <-ctx.Done():
		return ctx.Err()
	}
	r.mu.Lock()
	n := len(r.clusters)
	r.mu.Unlock()
	for id := range n {
		do, what := r.SoftRestart, "soft restart"
		if hard {
			do, what = r.Restart, "restart"
		}
		if err := do(ctx, id); err != nil {
			if strings.HasPrefix(err.Error(), "runtime: ") {
				return err // it names the operation and the cluster, or needs neither
			}
			return fmt.Errorf("runtime: %s of cluster %d: %w", what, id, err)
		}
		if progress != nil {
			progress(id+1, n)
		}
	}
	return nil
}

// Restart restarts a cluster the hard way: its shards close, ending their
// sessions, and a new instance identifies anew through the queue. It
// returns once every shard of the new instance is ready. If the new
// instance's Setup fails, or it is not ready within ClusterTimeout, the
// error is returned and the cluster is restarted under supervision
// (MaxRestarts, back-off). If ctx ends first, the restart goes on and
// ctx's error is returned.
func (r *Runtime) Restart(ctx context.Context, cluster int) error {
	return r.do(ctx, cluster, opRestart)
}

// ShutdownCluster stops a cluster for good (its sessions end); the other
// clusters go on. eris-fleet's shutdownCluster.
func (r *Runtime) ShutdownCluster(ctx context.Context, cluster int) error {
	return r.do(ctx, cluster, opShutdown)
}
