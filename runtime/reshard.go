package runtime

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/gofleet/fleet/shardgroup"
)

// ReshardOptions says what to reshard to; zero fields take Discord's
// recommendation (Shards) and the current cluster count (Clusters), or
// clusters of Config.ShardsPerCluster shards when that is set.
type ReshardOptions struct {
	Shards   int `json:"shards"`
	Clusters int `json:"clusters"`
}

// check refuses negative counts.
func (o ReshardOptions) check() error {
	if o.Shards < 0 || o.Clusters < 0 {
		return fmt.Errorf("%w: Shards (%d) and Clusters (%d) must not be negative: use 0 for Discord's recommendation and the current cluster count",
			ErrCannotReshard, o.Shards, o.Clusters)
	}
	return nil
}

// ErrReshardInProgress is returned by a Reshard while another runs.
var ErrReshardInProgress = errors.New("runtime: a reshard is already running")

// ErrCannotReshard is wrapped by the error of a reshard asked with
// options that cannot work: a shard count that is not a multiple of
// max_concurrency, more clusters than shards, more session starts than
// remain today, or a runtime that runs a slice of the fleet. Its message
// says what to change; the admin API answers it with 400.
var ErrCannotReshard = errors.New("runtime: cannot reshard")

// shape returns the fleet's shard and cluster counts; ok is false before
// the fleet is planned.
func (r *Runtime) shape() (shards, clusters int, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.env == nil {
		return 0, 0, false
	}
	return r.env.total, len(r.clusters), true
}

// sameShape reports whether a reshard to wantShards in wantClusters (0:
// as many as now) asks for the fleet as it is, and says so in words.
func sameShape(shards, clusters, wantShards, wantClusters int) (string, bool) {
	if wantShards != shards || (wantClusters != 0 && wantClusters != clusters) {
		return "", false
	}
	return fmt.Sprintf("unchanged: the fleet already runs %d shards in %d clusters", shards, clusters), true
}

// planReshard resolves opts against the fleet as it is (shards in
// clusters) and Discord's figures: the new shard and cluster counts, or a
// note when they are the current ones (nothing to do), or an error
// wrapping ErrCannotReshard saying what to change.
func (r *Runtime) planReshard(ctx context.Context, opts ReshardOptions, shards, clusters int) (total, n int, note string, err error) {
	if r.cfg.TotalShards > 0 {
		return 0, 0, "", fmt.Errorf("%w: this runtime runs a slice of the fleet (TotalShards is set): reshard every host together", ErrCannotReshard)
	}
	if note, same := sameShape(shards, clusters, opts.Shards, opts.Clusters); same {
		return shards, clusters, note, nil // nothing to ask Discord
	}
	gb, err := r.gatewayBot(ctx)
	if err != nil {
		return 0, 0, "", err
	}
	total = opts.Shards
	if total == 0 {
		total = max(gb.Shards, 1)
	}
	mc := max(gb.SessionStartLimit.MaxConcurrency, 1)
	if r.cfg.MaxConcurrencyOverride > 0 {
		mc = r.cfg.MaxConcurrencyOverride
	}
	if mc > 1 && total%mc != 0 {
		lo, hi := total/mc*mc, (total/mc+1)*mc
		return 0, 0, "", fmt.Errorf("%w: %d shards: must be a multiple of %d (max_concurrency %d): use %d or %d",
			ErrCannotReshard, total, mc, mc, max(lo, mc), hi)
	}
	n = opts.Clusters
	switch {
	case n == 0 && r.cfg.ShardsPerCluster > 0:
		n = r.cfg.clusterCount(total)
	case n == 0:
		n = min(clusters, total)
	}
	if n > total {
		return 0, 0, "", fmt.Errorf("%w: Clusters (%d) > Shards (%d): lower Clusters", ErrCannotReshard, n, total)
	}
	if note, same := sameShape(shards, clusters, total, n); same {
		return total, n, note, nil
	}
	if rem := gb.SessionStartLimit.Remaining; gb.SessionStartLimit.Total > 0 && rem < total {
		reset := time.Duration(gb.SessionStartLimit.ResetAfter) * time.Millisecond
		return 0, 0, "", fmt.Errorf("%w: %d shards: it needs %d session starts but %d remain today: wait until the limit resets in %s or reshard to fewer shards",
			ErrCannotReshard, total, total, rem, reset.Round(time.Second))
	}
	return total, n, "", nil
}

// ErrMemberReshard is Reshard's error on a runtime that serves part of a
// fleet (Config.Member): the fleet is resharded from its admiral.
var ErrMemberReshard = errors.New("runtime: this runtime serves part of a fleet (Config.Member): reshard from the fleet's admiral")

// Reshard changes the fleet's shard count without losing or repeating an
// event: a new generation of clusters identifies at the new count through
// the identify queue while the old generation keeps serving. The new
// generation fills its caches and holds back the events it receives
// (at most shardgroup.DefaultMaxHeld per shard) until every new shard is
// READY, has received its guilds and holds a live session; then each new
// shard takes its guilds over from the old shards that served them,
// delivering the held events the old generation had not delivered (see
// shardgroup.CutOver), and the old generation is shut down (its sessions
// end). If ctx ends, a new cluster cannot be set up, or the old generation
// lags more than a new shard may hold before the cut-over, the new
// generation is stopped and the old one goes on serving. Once the first
// guild has changed hands the cut-over completes unless the fleet stops.
//
// In process mode the new generation is new child processes, which
// cannot compare what they deliver with the old ones: see Processes for
// what happens at their switch.
//
// A reshard to the current shard and cluster counts changes nothing: it
// returns nil and no shard identifies. Options that cannot work return an
// error wrapping ErrCannotReshard that says what to change.
func (r *Runtime) Reshard(ctx context.Context, opts ReshardOptions) error {
	_, err := r.reshard(ctx, opts, false)
	return err
}

// reshard is Reshard; result says when it changed nothing. With planned,
// opts holds the counts planReshard resolved for the fleet as it is (no
// other reshard can have run since): Discord is not asked again.
func (r *Runtime) reshard(ctx context.Context, opts ReshardOptions, planned bool) (result string, err error) {
	if err := opts.check(); err != nil {
		return "", err
	}
	if r.cfg.Member != nil {
		return "", ErrMemberReshard
	}
	if err := r.checkRunning(ctx); err != nil {
		return "", err
	}
	if !r.reshardBusy.CompareAndSwap(false, true) {
		return "", ErrReshardInProgress
	}
	defer r.reshardBusy.Store(false)
	release, err := r.acquire(ctx) // no other operation in between
	if err != nil {
		return "", err
	}
	defer release()
	select {
	case <-r.planned:
	case <-r.stopped:
		return "", ErrNotRunning
	case <-ctx.Done():
		return "", ctx.Err()
	}
	r.mu.Lock()
	old, oldEnv, stop := r.clusters, r.env, r.stopFleet
	r.mu.Unlock()
	select {
	case <-stop:
		return "", ErrNotRunning
	default:
	}
	total, n := opts.Shards, opts.Clusters
	if !planned {
		var note string
		total, n, note, err = r.planReshard(ctx, opts, oldEnv.total, len(old))
		if err != nil || note != "" {
			return note, err
		}
	}
	if r.pool != nil {
		return "", r.reshardChildren(ctx, old, oldEnv, total, n, stop)
	}

	began := time.Now()
	r.events.emit(ReshardStarted{From: oldEnv.total, To: total})
	loaded := make(chan struct{})
	var mu sync.Mutex
	seen := map[int]bool{}
	env := &fleetEnv{total: total, shards: total, gatewayURL: oldEnv.gatewayURL, queue: oldEnv.queue, pacer: oldEnv.pacer,
		fatal: oldEnv.fatal, groupCtx: oldEnv.groupCtx, gen: oldEnv.gen + 1}
	env.onLoaded = func(shard int) {
		mu.Lock()
		defer mu.Unlock()
		if seen[shard] {
			return
		}
		seen[shard] = true
		r.events.emit(ReshardProgress{Shard: shard, Loaded: len(seen), Of: total, Elapsed: time.Since(began)})
		if len(seen) == total {
			close(loaded)
		}
	}
	// The old generation remembers what it delivers from now on, so that
	// the cut-over can tell what the new one holds that it has not.
	oldGroups := make([]*shardgroup.Runner, 0, len(old))
	for _, c := range old {
		c.mu.Lock()
		if c.runner != nil { // nil: the cluster never got past Setup; it delivers nothing
			oldGroups = append(oldGroups, c.runner)
		}
		c.mu.Unlock()
	}
	if len(oldGroups) == 0 {
		return "", errors.New("runtime: Reshard: no cluster of the fleet has started: fix what keeps them from starting (see the cluster_failed events) and restart the fleet")
	}
	for _, g := range oldGroups {
		g.Record(total)
	}
	clusters := make([]*cluster, 0, n)
	insts := make([]*instance, 0, n)
	abort := func() {
		for _, inst := range insts {
			r.stopInstance(inst, false)
		}
		for _, g := range oldGroups {
			g.EndRecording()
		}
	}
	for i, ids := range plan(0, total-1, n) {
		c := &cluster{id: i, shards: ids, ops: make(chan clusterOp)}
		inst, err := r.newInstance(ctx, c, env, nil)
		if err != nil {
			abort()
			return "", err
		}
		c.runner, c.group, c.startedAt = inst.run, inst.g, time.Now()
		clusters = append(clusters, c)
		insts = append(insts, inst)
		inst.run.Start(env.groupCtx)
	}
	select {
	case <-loaded:
	case <-ctx.Done():
		abort()
		return "", fmt.Errorf("runtime: Reshard gave up before the cut-over: %w", ctx.Err())
	case <-r.stopping:
		abort()
		return "", ErrNotRunning
	}

	// The cut-over: each new shard takes its guilds over from the old
	// shards once they have delivered what it does not hold.
	newGroups := make([]*shardgroup.Runner, 0, len(insts))
	for _, inst := range insts {
		newGroups = append(newGroups, inst.run)
	}
	if err := shardgroup.CutOver(ctx, r.stopping, oldGroups, newGroups); err != nil {
		abort()
		if errors.Is(err, shardgroup.ErrCutOverStopped) {
			return "", ErrNotRunning
		}
		return "", fmt.Errorf("runtime: Reshard gave up before the cut-over: %w", err)
	}
	cut := time.Now()
	r.gate.Set(env.gen)
	for _, inst := range insts {
		if err := inst.activate(); err != nil {
			r.cfg.Logger.Error("cluster endpoint hand-over failed", "cluster", inst.g.ID(), "err", err.Error())
		}
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

	// The old generation goes, its sessions with it.
	for _, c := range old {
		op := clusterOp{kind: opRetire, ctx: ctx, reply: make(chan error, 1)}
		select {
		case c.ops <- op:
			<-op.reply
		case <-stop:
		}
	}
	r.events.emit(ReshardDone{From: oldEnv.total, To: total, Took: time.Since(began)})
	return "", nil
}
