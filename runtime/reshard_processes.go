package runtime

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// reshardChildren is Reshard in process mode. The new plan's clusters
// start as new child processes (ChildSpec.Standby) that identify at the
// new shard count through the fleet's identify queue while the old
// children keep delivering; a standby child delivers nothing, serves no
// bus address and saves no session. Once every new shard is ready with
// its guilds, the switch: every new child is told to deliver (it takes
// its cluster's bus address over), the new clusters replace the old ones
// under supervision, then the old children stop, ending their sessions,
// and the pool forgets the sessions of the old shard count.
//
// Unlike the cut-over in one process, the two generations cannot compare
// what they delivered: the new children deliver before the old ones stop,
// so an event that reaches both in that overlap is delivered twice;
// none is lost.
//
// If ctx ends, the fleet stops, or a new child exits or cannot be set up
// before the switch, the new children are stopped and the old ones go on
// serving.
func (r *Runtime) reshardChildren(ctx context.Context, old []*cluster, oldEnv *fleetEnv, total, n int, stop chan struct{}) error {
	ctx, cancel := r.opContext(ctx)
	defer cancel()
	began := time.Now()
	r.events.emit(ReshardStarted{From: oldEnv.total, To: total})
	env := &fleetEnv{total: total, shards: total, gatewayURL: oldEnv.gatewayURL, queue: oldEnv.queue,
		fatal: oldEnv.fatal, groupCtx: oldEnv.groupCtx, gen: oldEnv.gen + 1}
	standby := *env
	standby.standby = true
	var mu sync.Mutex
	seen := map[int]bool{}
	standby.onLoaded = func(shard int) {
		mu.Lock()
		defer mu.Unlock()
		if !seen[shard] {
			seen[shard] = true
			r.events.emit(ReshardProgress{Shard: shard, Loaded: len(seen), Of: total, Elapsed: time.Since(began)})
		}
	}

	clusters := make([]*cluster, 0, n)
	insts := make([]*instance, 0, n)
	abort := func(err error) error {
		for _, inst := range insts {
			r.stopInstance(inst, false) // it never delivered: its sessions end
		}
		if r.lifeContext().Err() != nil {
			return ErrNotRunning
		}
		return err
	}
	for i, ids := range plan(0, total-1, n) {
		c := &cluster{id: i, shards: ids, ops: make(chan clusterOp)}
		sctx, scancel := context.WithTimeoutCause(ctx, r.clusterTimeout(c, env),
			fmt.Errorf("runtime: cluster %d of the new plan not set up within its ClusterTimeout", i))
		inst, err := r.spawn(sctx, c, &standby, ResumeNone)
		scancel()
		if err != nil {
			return abort(fmt.Errorf("runtime: Reshard gave up before the switch, the old clusters keep serving: %w", err))
		}
		clusters = append(clusters, c)
		insts = append(insts, inst)
	}
	for i, inst := range insts {
		select {
		case <-inst.ready: // left closed: the supervisor adopting inst sees it ready
		case <-inst.exited():
			return abort(fmt.Errorf("runtime: Reshard gave up before the switch, the old clusters keep serving: cluster %d of the new plan: child process %d exited: %w",
				i, inst.proc.Pid(), inst.proc.Err()))
		case <-r.stopping:
			return abort(ErrNotRunning)
		case <-ctx.Done():
			return abort(fmt.Errorf("runtime: Reshard gave up before the switch, the old clusters keep serving: %w", ctx.Err()))
		}
	}

	// The switch: from the first new child that delivers, there is no way
	// back. A child that does not take it (it died) is restarted by its
	// supervisor, and its shards identify, as it saved no session.
	cut := time.Now()
	for i, inst := range insts {
		dctx, dcancel := context.WithTimeout(context.Background(), r.cfg.ShutdownTimeout)
		if err := inst.proc.Deliver(dctx); err != nil {
			r.cfg.Logger.Error("reshard: a child of the new plan did not take the switch", "cluster", i, "err", err.Error())
		}
		dcancel()
	}
	for i, c := range clusters {
		r.publishChild(c, insts[i])
	}
	r.mu.Lock()
	r.clusters, r.env = clusters, env
	for i, c := range clusters {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.supervise(c, env, nil, stop, insts[i])
		}()
	}
	r.mu.Unlock()
	r.events.emit(ReshardCutOver{From: oldEnv.total, To: total, StartUp: cut.Sub(began)})

	// The old children go, their sessions with them.
	for _, c := range old {
		op := clusterOp{kind: opRetire, ctx: context.Background(), reply: make(chan error, 1)}
		select {
		case c.ops <- op:
			<-op.reply
		case <-stop:
		}
	}
	pctx, pcancel := context.WithTimeout(context.Background(), r.cfg.ShutdownTimeout)
	if err := r.pool.Resharded(pctx, total); err != nil {
		r.cfg.Logger.Warn("reshard: sessions of the old shard count not removed from the store: they are never resumed", "err", err.Error())
	}
	pcancel()
	r.events.emit(ReshardDone{From: oldEnv.total, To: total, Took: time.Since(began)})
	return nil
}

// loaded calls onLoaded, if set.
func (e *fleetEnv) loaded(shard int) {
	if e.onLoaded != nil {
		e.onLoaded(shard)
	}
}
