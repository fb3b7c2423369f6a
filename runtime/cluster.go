package runtime

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/disgoorg/disgo/cache"
	"github.com/disgoorg/disgo/gateway"

	"github.com/gofleet/fleet/bus"
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
	startedAt time.Time // when the current group started
	restarts  int       // restarts since Run began (soft, hard and supervised)
	parked    string    // "failed" (after MaxRestarts) or "stopped" (ShutdownCluster); "" while running
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

// instance is one running group and the user code on it.
type instance struct {
	g        *shardgroup.Group
	bot      Bot
	ready    chan struct{} // closed when every shard is ready
	ep       *bus.Endpoint // the cluster's bus endpoint for this instance
	activate func() error  // puts ep in place at the cluster's address
}

// supervise runs one cluster until stop closes: it starts a group,
// restarts it when it is not ready within ClusterTimeout (with back-off,
// at most MaxRestarts per RestartWindow, then reports the cluster failed),
// and serves soft and hard restarts.
//
// A supervisor may adopt an instance already started (a reshard's new
// generation).
func (r *Runtime) supervise(c *cluster, env *fleetEnv, sessions map[int]shardgroup.Session, stop <-chan struct{}, adopt *instance) {
	var restarts []time.Time
	backoff := r.cfg.RestartBackoff
	var inst *instance
	defer func() {
		if inst != nil {
			r.stopInstance(inst, r.cfg.SessionStore != nil)
		}
	}()
	for {
		var err error
		if adopt != nil {
			inst, adopt = adopt, nil
		} else {
			inst, err = r.startInstance(c, env, sessions)
		}
		sessions = nil
		if err != nil {
			select {
			case env.fatal <- err:
			default:
			}
			<-stop
			return
		}
		var timeout <-chan time.Time // nil: no bound
		var timer *time.Timer
		if r.cfg.ClusterTimeout > 0 {
			timer = time.NewTimer(r.cfg.ClusterTimeout)
			timeout = timer.C
		}
		restart := false
		for !restart {
			select {
			case <-stop:
				if timer != nil {
					timer.Stop()
				}
				return
			case <-inst.ready:
				inst.ready = nil // serve on; no timeout any more
				timeout = nil
			case <-timeout:
				restart = true
			case op := <-c.ops:
				switch op.kind {
				case opSoftRestart:
					next, err := r.handOver(op.ctx, c, env, inst)
					if err == nil {
						inst = next
					}
					op.reply <- err
				case opRetire, opShutdown:
					r.stopInstance(inst, false)
					inst = nil
					op.reply <- nil
					if op.kind == opShutdown {
						r.events.emit(Event{Kind: EventClusterShutdown, Cluster: c.id, Shard: -1})
						r.park(c, stop, "stopped")
					}
					return
				case opRestart:
					r.stopInstance(inst, false)
					inst = nil
					next, err := r.startInstance(c, env, nil)
					if err != nil {
						op.reply <- err
						select {
						case env.fatal <- err:
						default:
						}
						<-stop
						return
					}
					inst = next
					r.events.emit(Event{Kind: EventClusterRestarted, Cluster: c.id, Shard: -1})
					if f := r.cfg.Observer.ClusterRestart; f != nil {
						f(c.id)
					}
					op.reply <- nil
				}
			}
		}
		timer.Stop() // restart is set only by the timer
		r.stopInstance(inst, false)
		inst = nil
		now := time.Now()
		kept := restarts[:0]
		for _, t := range restarts {
			if now.Sub(t) < r.cfg.RestartWindow {
				kept = append(kept, t)
			}
		}
		restarts = append(kept, now)
		if r.cfg.MaxRestarts >= 0 && len(restarts) > r.cfg.MaxRestarts {
			r.events.emit(Event{Kind: EventClusterFailed, Cluster: c.id, Shard: -1,
				Err: fmt.Errorf("cluster %d not ready within %s after %d restarts", c.id, r.cfg.ClusterTimeout, r.cfg.MaxRestarts)})
			r.park(c, stop, "failed")
			return
		}
		r.events.emit(Event{Kind: EventClusterRestarted, Cluster: c.id, Shard: -1, N: len(restarts), Of: max(r.cfg.MaxRestarts, 0)})
		if f := r.cfg.Observer.ClusterRestart; f != nil {
			f(c.id)
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-stop:
			t.Stop()
			return
		}
		backoff = min(2*backoff, time.Minute)
	}
}

// park keeps a cluster that has failed or was shut down: it runs nothing
// and operations on it get an error saying why.
func (r *Runtime) park(c *cluster, stop <-chan struct{}, state string) {
	c.mu.Lock()
	c.parked = state
	c.mu.Unlock()
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
	var readyOnce sync.Once
	obs := r.cfg.Observer
	hooks := shardgroup.Hooks{
		Identify: func(g *shardgroup.Group, shard int, waited time.Duration) {
			r.events.emit(Event{Kind: EventShardIdentify, Cluster: g.ID(), Shard: shard, Duration: waited})
			if f := obs.Identify; f != nil {
				f(g.ID(), shard, waited)
			}
		},
		ShardReady: func(g *shardgroup.Group, shard, guilds int, resumed bool) {
			if resumed {
				r.events.emit(Event{Kind: EventShardResumed, Cluster: g.ID(), Shard: shard})
				if f := obs.Resume; f != nil {
					f(g.ID(), shard)
				}
			}
			if _, seen := r.everReady.LoadOrStore(shard, true); env.counting && !seen {
				n := int(r.ready.Add(1))
				r.events.emit(Event{Kind: EventShardReady, Cluster: g.ID(), Shard: shard, N: n, Of: env.shards, Duration: time.Since(r.started)})
				if n == env.shards {
					r.events.emit(Event{Kind: EventFleetReady, Cluster: -1, Shard: -1, N: n, Of: env.shards, Duration: time.Since(r.started)})
				}
			}
			if g.State() == shardgroup.StateReady {
				readyOnce.Do(func() {
					close(inst.ready)
					r.events.emit(Event{Kind: EventClusterReady, Cluster: g.ID(), Shard: -1, Duration: time.Since(r.started)})
				})
			}
		},
		ShardState: func(g *shardgroup.Group, shard int, from, to shardgroup.State) {
			if from == shardgroup.StateReady && to == shardgroup.StateDisconnected {
				r.events.emit(Event{Kind: EventShardDisconnected, Cluster: g.ID(), Shard: shard})
			}
		},
		GuildsLoaded: func(g *shardgroup.Group, shard int) {
			if env.onLoaded != nil {
				env.onLoaded(shard)
			}
		},
		Close: func(g *shardgroup.Group, shard, code int) {
			if f := obs.Close; f != nil {
				f(g.ID(), shard, code)
			}
		},
		Zombie: func(g *shardgroup.Group, shard int) {
			if f := obs.Zombie; f != nil {
				f(g.ID(), shard)
			}
		},
		ListenerPanic: func(g *shardgroup.Group, shard int, _ any) {
			if f := obs.ListenerPanic; f != nil {
				f(g.ID(), shard)
			}
		},
		Fatal: func(g *shardgroup.Group, err *shardgroup.CloseError) {
			select {
			case env.fatal <- fmt.Errorf("runtime: cluster %d: %w", g.ID(), err):
			default:
			}
		},
	}
	if f := obs.GatewayEvent; f != nil {
		hooks.Event = func(g *shardgroup.Group, shard int, t gateway.EventType) { f(g.ID(), shard, string(t)) }
	}
	g, err := shardgroup.New(shardgroup.Config{
		ID: c.id, ShardIDs: c.shards, ShardCount: env.total, Token: string(r.cfg.Token), GatewayURL: env.gatewayURL,
		Intents: r.cfg.Intents, IdentifyLimiter: env.queue, Logger: r.cfg.Logger, Presence: r.cfg.StartingStatus,
		ClientOptions: r.clientOptions(caches), Hooks: hooks, Gate: &r.gate, Generation: env.gen, Bus: r.bus,
		Compression: r.cfg.Compression,
	})
	if err != nil {
		return nil, err
	}
	inst.g = g
	inst.bot = r.cfg.Bot(c.id)
	if err := inst.bot.Setup(ctx, g); err != nil {
		g.Client().Rest().Close(context.Background())
		return nil, fmt.Errorf("runtime: cluster %d: Setup: %w", c.id, err)
	}
	if inst.activate, err = r.clusterEndpoint(c, inst); err != nil {
		g.Client().Rest().Close(context.Background())
		return nil, fmt.Errorf("runtime: cluster %d: bus endpoint: %w", c.id, err)
	}
	return inst, nil
}

func (r *Runtime) startInstance(c *cluster, env *fleetEnv, sessions map[int]shardgroup.Session) (*instance, error) {
	inst, err := r.newInstance(env.groupCtx, c, env, nil)
	if err != nil {
		return nil, err
	}
	r.publish(c, inst.g)
	if err := inst.activate(); err != nil {
		return nil, err
	}
	inst.g.StartResuming(env.groupCtx, sessions)
	return inst, nil
}

func (r *Runtime) publish(c *cluster, g *shardgroup.Group) {
	c.mu.Lock()
	if c.group != nil {
		c.restarts++
	}
	c.group, c.startedAt = g, time.Now()
	c.mu.Unlock()
}

// handOver replaces a cluster's running instance by a new one without
// spending an IDENTIFY: the new instance is built and set up, then every
// shard of the old one closes with a resumable code and the new one
// RESUMEs its session; Discord replays what arrived in between. A shard
// whose RESUME is refused identifies through the queue.
func (r *Runtime) handOver(ctx context.Context, c *cluster, env *fleetEnv, old *instance) (*instance, error) {
	began := time.Now()
	r.events.emit(Event{Kind: EventSoftRestartStarted, Cluster: c.id, Shard: -1})
	next, err := r.newInstance(ctx, c, env, old.g.Client().Caches())
	if err != nil {
		return nil, err // the old instance keeps serving
	}
	paused := time.Now()
	sessions, _ := old.g.Stop(context.Background(), true)
	r.publish(c, next.g)
	next.g.StartResuming(env.groupCtx, sessions)
	if err := next.activate(); err != nil {
		r.cfg.Logger.Error("cluster endpoint hand-over failed", "cluster", c.id, "err", err.Error())
	}
	select {
	case <-next.ready:
		next.ready = nil
	case <-ctx.Done():
		// The new instance goes on connecting; the caller stops waiting.
	}
	pause := time.Since(paused)
	r.events.emit(Event{Kind: EventSoftRestartHandedOver, Cluster: c.id, Shard: -1, N: len(sessions), Of: len(c.shards), Duration: pause})
	r.stopInstance(old, false) // its shards are stopped already; this runs its Shutdown hook
	r.events.emit(Event{Kind: EventSoftRestartDone, Cluster: c.id, Shard: -1, Duration: time.Since(began)})
	return next, nil
}

// stopInstance runs the Bot's Shutdown hook (bounded by ShutdownTimeout)
// and stops the group's shards (a no-op for shards already handed over),
// keeping their sessions if asked.
func (r *Runtime) stopInstance(inst *instance, keep bool) map[int]shardgroup.Session {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.ShutdownTimeout)
	defer cancel()
	if s, ok := inst.bot.(BotShutdowner); ok {
		if err := s.Shutdown(ctx); err != nil {
			r.cfg.Logger.Warn("cluster shutdown hook failed", "cluster", inst.g.ID(), "err", err.Error())
		}
	}
	sessions, _ := inst.g.Stop(ctx, keep)
	inst.g.Client().Rest().Close(ctx)
	if inst.ep != nil {
		_ = inst.ep.Close(ctx) // a replaced endpoint only finishes its handlers
	}
	if keep {
		r.keepSessions(sessions)
	}
	return sessions
}

// cluster returns a cluster by ID once the fleet is planned.
func (r *Runtime) cluster(ctx context.Context, id int) (*cluster, error) {
	select {
	case <-r.planned:
	case <-r.stopped:
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
	return nil, fmt.Errorf("%w %d (have 0..%d)", ErrUnknownCluster, id, len(r.clusters)-1)
}

func (r *Runtime) do(ctx context.Context, id int, kind opKind) error {
	c, err := r.cluster(ctx, id)
	if err != nil {
		return err
	}
	op := clusterOp{kind: kind, ctx: ctx, reply: make(chan error, 1)}
	select {
	case c.ops <- op:
	case <-r.stopped:
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
// If the new instance's Setup fails, the old one keeps serving and the
// error is returned.
func (r *Runtime) SoftRestart(ctx context.Context, cluster int) error {
	r.restarting.Lock()
	defer r.restarting.Unlock()
	return r.do(ctx, cluster, opSoftRestart)
}

// SoftRestartAll soft-restarts every cluster, one at a time.
func (r *Runtime) SoftRestartAll(ctx context.Context) error {
	r.mu.Lock()
	n := len(r.clusters)
	r.mu.Unlock()
	for id := range n {
		if err := r.SoftRestart(ctx, id); err != nil {
			return fmt.Errorf("runtime: soft restart of cluster %d: %w", id, err)
		}
	}
	return nil
}

// Restart restarts a cluster the hard way: its shards close, ending their
// sessions, and a new instance identifies anew through the queue.
func (r *Runtime) Restart(ctx context.Context, cluster int) error {
	r.restarting.Lock()
	defer r.restarting.Unlock()
	return r.do(ctx, cluster, opRestart)
}

// ShutdownCluster stops a cluster for good (its sessions end); the other
// clusters go on. eris-fleet's shutdownCluster.
func (r *Runtime) ShutdownCluster(ctx context.Context, cluster int) error {
	r.restarting.Lock()
	defer r.restarting.Unlock()
	return r.do(ctx, cluster, opShutdown)
}
