package runtime

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// reshardChildren is Reshard in process mode. The new plan's clusters
// start as new child processes (ChildSpec.Standby) that identify at the
// new shard count through the fleet's identify queue while the old
// children keep delivering; a standby child delivers nothing, serves no
// bus address and saves no session. Once every new shard is ready, the
// old children catch up with the gateway (Sync), then the switch: every
// new child is told to deliver (it takes its cluster's bus address over),
// the new clusters replace the old ones under supervision, then the old
// children stop, ending their sessions, and the pool forgets the sessions
// of the old shard count.
//
// Unlike the cut-over in one process, the two generations cannot compare
// what they delivered. No event is lost: the new children deliver first,
// then each old child delivers what the gateway sent it until then
// (Sync), nothing more, and stops. An event that reaches both
// generations between the two is delivered twice.
//
// If ctx ends, the fleet stops, or a new child exits or cannot be set up
// before the switch, the new children are stopped and the old ones go on
// serving.
func (r *Runtime) reshardChildren(ctx context.Context, old []*cluster, oldEnv *fleetEnv, total, n int, stop chan struct{}) error {
	ctx, cancel := r.opContext(ctx)
	defer cancel()
	began := time.Now()
	r.events.emit(ReshardStarted{From: oldEnv.total, To: total})
	env := &fleetEnv{total: total, shards: total, gatewayURL: oldEnv.gatewayURL, queue: oldEnv.queue, pacer: oldEnv.pacer,
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

	plans := plan(0, total-1, n)
	clusters := make([]*cluster, len(plans))
	insts := make([]*instance, len(plans))
	// abort stops the new children, which never delivered: their
	// sessions end. When the fleet stops, they stop beside the old ones,
	// within the fleet's stop.
	abort := func(err error) error {
		stopAll := func(ctx context.Context) {
			var wg sync.WaitGroup
			for _, inst := range insts {
				if inst != nil {
					wg.Go(func() { _ = r.stopInstanceCtx(ctx, inst, false) })
				}
			}
			wg.Wait()
		}
		select {
		case <-r.stopping:
			r.wg.Add(1) // stop waits for r.wg once this operation has returned
			go func() {
				defer r.wg.Done()
				stopAll(r.stopContext())
			}()
			return ErrNotRunning
		default:
		}
		stopAll(context.Background())
		if r.lifeContext().Err() != nil {
			return ErrNotRunning
		}
		return fmt.Errorf("runtime: Reshard gave up before the switch, the old clusters keep serving: %w", err)
	}
	// The new children start together; their shards queue for the
	// identify windows.
	errs := make([]error, len(plans))
	var wg sync.WaitGroup
	for i, ids := range plans {
		c := &cluster{id: i, shards: ids, ops: make(chan clusterOp)}
		clusters[i] = c
		wg.Go(func() {
			sctx, scancel := context.WithTimeoutCause(ctx, r.clusterTimeout(c, env),
				fmt.Errorf("runtime: cluster %d of the new plan not set up within its ClusterTimeout", i))
			defer scancel()
			insts[i], errs[i] = r.spawn(sctx, c, &standby, ResumeNone)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return abort(err)
	}
	for i, inst := range insts {
		select {
		case <-inst.ready: // left closed: the supervisor adopting inst sees it ready
		case <-inst.exited():
			return abort(fmt.Errorf("cluster %d of the new plan: child process %d exited: %w", i, inst.proc.Pid(), inst.proc.Err()))
		case <-r.stopping:
			return abort(ErrNotRunning)
		case <-ctx.Done():
			return abort(ctx.Err())
		}
	}
	// The old children catch up with the gateway first, so that the
	// second sync, after the switch, is short. One that cannot (it is
	// restarting) is synced after the switch all the same.
	if err := r.syncChildren(ctx, old, false); err != nil {
		if ctx.Err() != nil {
			return abort(ctx.Err())
		}
		select {
		case <-r.stopping:
			return abort(ErrNotRunning)
		default:
		}
		r.cfg.Logger.Warn("reshard: old children did not catch up before the switch", "err", err.Error())
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

	// The old children go, their sessions with them, once they have
	// delivered what the gateway sent them before the new children
	// delivered (the new ones did not); they deliver nothing after it.
	// They may lag: they have as long as a cluster has to start.
	wait := r.cfg.ShutdownTimeout
	for _, c := range old {
		wait = max(wait, r.clusterTimeout(c, oldEnv))
	}
	sctx, scancel := context.WithTimeout(r.lifeContext(), wait)
	if err := r.syncChildren(sctx, old, true); err != nil {
		r.cfg.Logger.Warn("reshard: old children did not confirm they delivered what they received before the switch: some of it may be lost",
			"err", err.Error())
	}
	scancel()
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

// syncChildren syncs the children of clusters (see ChildProcess.Sync),
// all at once.
func (r *Runtime) syncChildren(ctx context.Context, clusters []*cluster, last bool) error {
	errs := make([]error, len(clusters))
	var wg sync.WaitGroup
	for i, c := range clusters {
		c.mu.Lock()
		proc := c.proc
		c.mu.Unlock()
		if proc == nil {
			continue
		}
		wg.Go(func() {
			if err := proc.Sync(ctx, last); err != nil {
				errs[i] = fmt.Errorf("cluster %d: %w", c.id, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// loaded calls onLoaded, if set.
func (e *fleetEnv) loaded(shard int) {
	if e.onLoaded != nil {
		e.onLoaded(shard)
	}
}

// Sync returns once every shard this runtime runs has handed its
// listeners the events Discord had sent it when the call began (in
// process mode, every child's shards). A shard that is not connected is
// waited for until it is ready again or ctx ends; a cluster that runs
// nothing is skipped.
func (r *Runtime) Sync(ctx context.Context) error {
	select {
	case <-r.planned:
	case <-r.stopping:
		return ErrNotRunning
	case <-ctx.Done():
		return ctx.Err()
	}
	r.mu.Lock()
	clusters := slices.Clone(r.clusters)
	r.mu.Unlock()
	var errs []error
	for _, c := range clusters {
		c.mu.Lock()
		run, proc := c.runner, c.proc
		c.mu.Unlock()
		var err error
		switch {
		case proc != nil:
			err = proc.Sync(ctx, false)
		case run != nil:
			err = run.Barrier(ctx)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("cluster %d: %w", c.id, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("runtime: Sync: %w", err)
	}
	return nil
}
