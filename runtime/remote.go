package runtime

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/gofleet/fleet/internal/errwrap"
	"github.com/gofleet/fleet/shardgroup"
)

// shardSet is a set of shard IDs safe for concurrent use.
type shardSet struct {
	mu  sync.Mutex // guards ids
	ids map[int]bool
}

func newShardSet(ids []int) *shardSet {
	s := &shardSet{ids: make(map[int]bool, len(ids))}
	for _, id := range ids {
		s.ids[id] = true
	}
	return s
}

func (s *shardSet) remove(id int) {
	s.mu.Lock()
	delete(s.ids, id)
	s.mu.Unlock()
}

func (s *shardSet) sorted() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]int, 0, len(s.ids))
	for id := range s.ids {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// notReady lists the shards of a child process that have not reported
// ready.
func (inst *instance) notReady() []int {
	if inst.waiting == nil {
		return nil
	}
	return inst.waiting.sorted()
}

// spawn starts a cluster's instance in a child process and returns once
// the child is set up. The child's events reach the fleet as its own
// groups' would: its IDENTIFYs and READYs count towards the start-up, its
// ClusterReady makes the instance ready.
func (r *Runtime) spawn(ctx context.Context, c *cluster, env *fleetEnv, mode ResumeMode) (*instance, error) {
	inst := &instance{ready: make(chan struct{}), waiting: newShardSet(c.shards), child: r.children.Add(1)}
	ready, waiting, child := inst.ready, inst.waiting, inst.child
	var readyOnce sync.Once
	report := func(e Event) {
		c.noteState(child, e)
		switch e := e.(type) {
		case ShardIdentify:
			if env.counting {
				r.startup.identified(e.Shard)
			}
			r.events.emit(e)
		case ShardReady:
			waiting.remove(e.Shard)
			r.shardReady(env, c.id, e.Shard)
			env.loaded(e.Shard)
		case ShardResumed:
			waiting.remove(e.Shard)
			r.events.emit(e)
			r.shardReady(env, c.id, e.Shard)
			env.loaded(e.Shard)
		case ClusterReady:
			readyOnce.Do(func() {
				close(ready)
				r.events.emit(e)
			})
		case Fatal:
			select {
			case env.fatal <- e.Err:
			default:
			}
		default:
			r.events.emit(e)
		}
	}
	if mode != ResumeHandOver { // no other child serves the cluster: its events count from now
		c.mu.Lock()
		c.follow(child)
		c.mu.Unlock()
	}
	proc, err := r.pool.Spawn(ctx, ChildSpec{Cluster: c.id, Shards: slices.Clone(c.shards), ShardCount: env.total,
		Resume: mode, Standby: env.standby, Report: report})
	if err != nil {
		if r.lifeContext().Err() != nil {
			err = ErrNotRunning
		}
		return nil, fmt.Errorf("runtime: cluster %d: child process: %w", c.id, err)
	}
	inst.proc = proc
	return inst, nil
}

// shardReady counts a shard of a child process ready, as the ShardReady
// hook of a group in this process does.
func (r *Runtime) shardReady(env *fleetEnv, cluster, shard int) {
	if _, seen := r.everReady.LoadOrStore(shard, true); env.counting && !seen {
		n, last := r.startup.shardReady(shard)
		r.events.emit(ShardReady{Cluster: cluster, Shard: shard, Ready: n, Of: env.shards, Elapsed: time.Since(r.started)})
		if last {
			r.emitLast()
			close(r.fleetReady)
			r.events.emit(FleetReady{Shards: n, Elapsed: time.Since(r.started)})
		}
	}
}

// startChild starts a cluster's instance in a child process that must be
// set up before deadline.
func (r *Runtime) startChild(c *cluster, env *fleetEnv, mode ResumeMode, deadline time.Time) (*instance, error) {
	ctx, cancel := context.WithDeadlineCause(r.lifeContext(), deadline,
		fmt.Errorf("runtime: cluster %d not set up within its ClusterTimeout", c.id))
	defer cancel()
	inst, err := r.spawn(ctx, c, env, mode)
	if err != nil {
		return nil, err
	}
	r.publishChild(c, inst)
	return inst, nil
}

// startFresh starts an instance whose shards all identify: a hard
// restart's.
func (r *Runtime) startFresh(c *cluster, env *fleetEnv, deadline time.Time) (*instance, error) {
	if r.pool != nil {
		return r.startChild(c, env, ResumeNone, deadline)
	}
	return r.startInstance(c, env, nil, deadline)
}

func (r *Runtime) publishChild(c *cluster, inst *instance) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.group != nil || c.proc != nil {
		c.restarts++
	}
	c.runner, c.group, c.proc, c.startedAt = nil, nil, inst.proc, time.Now()
	c.follow(inst.child)
}

// follow makes the cluster's shard states those of child number child,
// connecting until its events say more. c.mu must be held.
func (c *cluster) follow(child int64) {
	if c.live == child {
		return
	}
	c.live = child
	c.states = make(map[int]shardgroup.State, len(c.shards))
	for _, id := range c.shards {
		c.states[id] = shardgroup.StateConnecting
	}
}

// noteState keeps the state of a child's shards from its events, for the
// stats. Events of a child that does not serve the cluster (yet, or any
// more) are ignored.
func (c *cluster) noteState(child int64, e Event) {
	var shard int
	var st shardgroup.State
	switch e := e.(type) {
	case ShardIdentify:
		shard, st = e.Shard, shardgroup.StateIdentifying
	case ShardReady:
		shard, st = e.Shard, shardgroup.StateReady
	case ShardResumed:
		shard, st = e.Shard, shardgroup.StateReady
	case ShardDisconnected:
		shard, st = e.Shard, shardgroup.StateDisconnected
	default:
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.live != child {
		return
	}
	// A child publishes its events from the goroutines that cause them,
	// so a shard's IDENTIFY can arrive after its READY: it does not take
	// a ready shard back.
	if st == shardgroup.StateIdentifying && c.states[shard] == shardgroup.StateReady {
		return
	}
	c.states[shard] = st
}

// handOverChild is handOver across processes: a new child is started and
// set up (it waits for its sessions), then the old child closes its shards
// resumably and returns their exact sessions, which the new child's shards
// RESUME. If the old child cannot hand them over (it died), the new one
// resumes the checkpointed sessions instead.
func (r *Runtime) handOverChild(ctx context.Context, c *cluster, env *fleetEnv, old *instance) (*instance, error) {
	began := time.Now()
	r.events.emit(SoftRestartStarted{Cluster: c.id})
	next, err := r.spawn(ctx, c, env, ResumeHandOver)
	if err == nil && ctx.Err() != nil {
		r.stopInstance(next, false) // set up, never served
		err = ctx.Err()
	}
	if err != nil {
		return nil, errwrap.Wrap(fmt.Sprintf("runtime: soft restart of cluster %d: the old instance keeps serving", c.id), "runtime", err)
	}
	paused := time.Now()
	sctx, cancel := context.WithTimeout(context.Background(), r.cfg.ShutdownTimeout)
	sessions, stopErr := old.proc.HandOver(sctx)
	cancel()
	if stopErr != nil {
		r.cfg.Logger.Warn("soft restart: the old child did not hand its sessions over: the new one resumes the checkpointed ones",
			"cluster", c.id, "err", stopErr.Error())
		sessions = nil
	}
	r.publishChild(c, next)
	rctx, cancel := context.WithTimeout(context.Background(), r.cfg.ShutdownTimeout)
	if err := next.proc.Resume(rctx, sessions); err != nil {
		r.cfg.Logger.Error("soft restart: the new child did not take its sessions", "cluster", c.id, "err", err.Error())
	}
	cancel()
	select {
	case <-next.ready:
		next.ready = nil
	case <-next.proc.Exited():
		err = fmt.Errorf("runtime: soft restart of cluster %d: the new child process exited: %w", c.id, next.proc.Err())
	case <-ctx.Done():
		err = fmt.Errorf("runtime: soft restart of cluster %d: handed over, the new instance is still connecting: %w", c.id, ctx.Err())
	}
	pause := time.Since(paused)
	r.events.emit(SoftRestartHandedOver{Cluster: c.id, Sessions: len(sessions), Shards: len(c.shards), Pause: pause})
	r.stopInstance(old, false) // its shards are stopped already; this waits for it to exit
	r.events.emit(SoftRestartDone{Cluster: c.id, Took: time.Since(began)})
	return next, err
}

// stopChild stops an instance's child process, bounded by ShutdownTimeout
// and ctx (it is killed then).
func (r *Runtime) stopChild(ctx context.Context, inst *instance, keep bool) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.ShutdownTimeout)
	defer cancel()
	if err := inst.proc.Stop(ctx, keep); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("child process %d: %w", inst.proc.Pid(), err)
	}
	return nil
}
