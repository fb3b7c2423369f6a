package natsfleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// A reshard of a fleet of hosts moves it from one plan revision to the
// next. Its state is one key of the hosts bucket (reshardKey), written by
// compare-and-set: Reshard asks (phase requested), the leader plans and
// assigns the new clusters (starting), opens their delivery once each is
// READY on the host holding its lease (delivering), and once every new
// cluster delivers makes the new plan current (switching, then done).
// Each host reports its new clusters in progress.<host>. Until the new
// plan is written the old one delivers, so that the fleet never has no
// plan delivering; the old clusters stop only once every new one
// delivers, so that it never has two plans delivering for longer than
// the switch takes to reach every host (the duplicates of the switch).

// Keys of the hosts bucket used by reshards.
const (
	reshardKey        = "reshard"
	progressKeyPrefix = "progress."
)

func progressKey(host string) string { return progressKeyPrefix + host }

// planLeaseKey is the lease key of a cluster of a plan revision: the
// first plan's keys are lease.<cluster>, a later one's
// lease.r<revision>.<cluster>.
func planLeaseKey(rev, cluster int) string {
	if rev <= 1 {
		return leaseKey(cluster)
	}
	return leaseKeyPref + "r" + strconv.Itoa(rev) + "." + strconv.Itoa(cluster)
}

// parseLeaseKey reads a key planLeaseKey made.
func parseLeaseKey(k string) (rev, cluster int, ok bool) {
	rest, ok := strings.CutPrefix(k, leaseKeyPref)
	if !ok {
		return 0, 0, false
	}
	rev = 1
	if r, c, found := strings.Cut(rest, "."); found {
		n, err := strconv.Atoi(strings.TrimPrefix(r, "r"))
		if err != nil || !strings.HasPrefix(r, "r") {
			return 0, 0, false
		}
		rev, rest = n, c
	}
	cluster, err := strconv.Atoi(rest)
	return rev, cluster, err == nil
}

// Phases of a reshard.
const (
	phaseRequested  = "requested"
	phaseStarting   = "starting"
	phaseDelivering = "delivering"
	phaseSwitching  = "switching"
	phaseDone       = "done"
	phaseAborted    = "aborted"
)

// reshardRecord is the reshardKey's value.
type reshardRecord struct {
	Rev         int         `json:"revision"` // the new plan's
	From        int         `json:"from_revision"`
	Shards      int         `json:"shards"`
	Phase       string      `json:"phase"`
	RequestedBy string      `json:"requested_by"`
	Leader      string      `json:"leader,omitempty"` // the leader carrying it out
	Plan        *planRecord `json:"plan,omitempty"`
	Assign      []string    `json:"assign,omitempty"` // host by new cluster
	Started     time.Time   `json:"started"`
	Deadline    time.Time   `json:"deadline"` // aborted if not switched by then
	Reason      string      `json:"reason,omitempty"`
}

// running reports whether the reshard has not ended.
func (r *reshardRecord) running() bool { return r.Phase != phaseDone && r.Phase != phaseAborted }

// progressRecord is a host's report of its new clusters.
type progressRecord struct {
	Rev        int   `json:"revision"`
	Current    []int `json:"current"`    // the current plan's clusters running here and ready
	Ready      []int `json:"ready"`      // every shard READY
	Delivering []int `json:"delivering"` // ready, and delivering
}

// ErrReshardInProgress is the error of Reshard while another reshard of
// the fleet runs, and of Drain during one.
var ErrReshardInProgress = errors.New("natsfleet: a reshard of the fleet is running")

// ErrReshardAborted is wrapped by the error of a reshard that ended
// without switching: the old plan kept running. The error says why.
var ErrReshardAborted = errors.New("natsfleet: reshard aborted")

// DefaultReshardTimeout bounds a reshard whose ctx has no deadline: the
// leader aborts it if the new plan is not delivering by then.
const DefaultReshardTimeout = 10 * time.Minute

// Reshard changes the fleet's shard count to shards, across every host,
// and returns once the new plan is current and the reshard has ended. Any host may call it; the
// leader carries it out: it plans the new clusters (contiguous shard
// ranges, as the first plan) under the next plan revision and assigns
// them as it assigns clusters (static, then balanced). Each host starts
// the new clusters assigned to it under leases of the new revision; they
// IDENTIFY through the fleet's identify queue and deliver nothing while
// the old plan's clusters go on delivering. Once every new shard is READY
// the leader opens their delivery; once every host reports its new
// clusters delivering it makes the new plan current, and each host stops
// its old clusters (their sessions are not resumed under the new count)
// and releases their leases. Events that reach both plans between the
// two steps are delivered twice; none is lost.
//
// A new cluster whose host dies is taken by another host, which
// identifies it (it never delivered); a leader that dies is replaced by
// one that carries the reshard on from its state in the fleet's store. If
// ctx ends before the switch, the reshard is aborted: the old plan keeps
// running and the new clusters stop. Without a deadline on ctx the leader
// aborts it after DefaultReshardTimeout. A second Reshard while one runs
// returns an error wrapping ErrReshardInProgress; so does Drain.
func (h *Host) Reshard(ctx context.Context, shards int) error {
	s, _ := h.core.snapshot()
	switch {
	case s.Plan == nil:
		return errors.New("natsfleet: Reshard: the fleet has no plan yet: call it once the host runs and Status shows the fleet's shards")
	case shards < 1:
		return fmt.Errorf("natsfleet: Reshard to %d shards: give a count of at least 1", shards)
	}
	if r := s.Reshard; r != nil && r.Record.running() {
		return r.inProgress()
	}
	if shards == s.Plan.Shards {
		return nil
	}
	if mc := s.Plan.MaxConcurrency; mc > 1 && shards%mc != 0 {
		lo, hi := shards/mc*mc, (shards/mc+1)*mc
		return fmt.Errorf("natsfleet: Reshard to %d shards: must be a multiple of %d (max_concurrency): use %d or %d", shards, mc, max(lo, mc), hi)
	}
	for _, hv := range s.Hosts {
		if hv.Live && hv.Draining {
			return fmt.Errorf("natsfleet: Reshard: host %s is draining: reshard once its drain ends", hv.ID)
		}
	}
	rec, err := h.core.requestReshard(ctx, shards, max(s.Plan.Revision, 1))
	if err != nil {
		return err
	}
	h.cfg.Logger.Info("reshard asked", "shards", shards, "revision", rec.Rev)
	var end *reshardRecord
	err = h.core.waitFor(ctx, func(s fleetSnapshot) bool {
		r := s.Reshard
		switch {
		case r == nil:
			return false
		case r.Record.Rev == rec.Rev && !r.Record.running():
			end = &r.Record
			return true
		}
		// A later reshard was asked once this one had ended.
		return r.Record.Rev > rec.Rev
	})
	if err != nil {
		switched, aerr := h.core.abortReshard(context.WithoutCancel(ctx), rec.Rev, "Reshard's ctx ended: "+err.Error())
		if switched {
			return nil
		}
		if aerr != nil {
			return fmt.Errorf("natsfleet: Reshard to %d shards: %w; and recording the abort failed: %v (the leader aborts it at %s)",
				shards, err, aerr, rec.Deadline.Format(time.RFC3339))
		}
		return fmt.Errorf("natsfleet: Reshard to %d shards gave up before the switch: %w (the old plan keeps running; the new clusters stop)", shards, err)
	}
	if end == nil {
		if s, _ := h.core.snapshot(); s.Plan != nil && s.Plan.Revision >= rec.Rev {
			return nil
		}
		return fmt.Errorf("%w: a later reshard replaced it (see Status)", ErrReshardAborted)
	}
	if end.Phase == phaseAborted {
		return fmt.Errorf("%w: %s (the old plan keeps running)", ErrReshardAborted, end.Reason)
	}
	return nil
}

// inProgress is the error for a reshard asked while v runs.
func (v *reshardView) inProgress() error {
	return fmt.Errorf("%w: to %d shards (plan revision %d, %s), asked by host %s: wait for it to end",
		ErrReshardInProgress, v.Record.Shards, v.Record.Rev, v.Record.Phase, v.Record.RequestedBy)
}

// requestReshard writes a new reshard record, refusing while one runs.
func (h *hostCore) requestReshard(ctx context.Context, shards, cur int) (*reshardRecord, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(DefaultReshardTimeout)
	}
	rec := reshardRecord{Rev: cur + 1, From: cur, Shards: shards, Phase: phaseRequested, RequestedBy: h.id,
		Started: time.Now(), Deadline: deadline}
	e, err := h.kv.Get(ctx, reshardKey)
	var prevRev uint64
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return nil, fmt.Errorf("natsfleet: Reshard: read the fleet's reshard state: %w", err)
	default:
		var old reshardRecord
		if json.Unmarshal(e.Value(), &old) == nil {
			if old.running() {
				return nil, (&reshardView{Record: old}).inProgress()
			}
			// An aborted reshard's revision is not used again.
			rec.Rev = max(cur, old.Rev) + 1
		}
		prevRev = e.Revision()
	}
	data, _ := json.Marshal(rec)
	if prevRev == 0 {
		_, err = h.kv.Create(ctx, reshardKey, data)
	} else {
		_, err = h.kv.Update(ctx, reshardKey, data, prevRev)
	}
	if err != nil && isConflict(err) {
		return nil, fmt.Errorf("%w: another host asked for one at the same time: see Status", ErrReshardInProgress)
	}
	if err != nil {
		return nil, fmt.Errorf("natsfleet: Reshard: write the request: %w", err)
	}
	return &rec, nil
}

// abortReshard aborts the reshard of revision rev unless it has switched
// (switched true) or ended. It is bounded by the renewal interval.
func (h *hostCore) abortReshard(ctx context.Context, rev int, reason string) (switched bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, h.interval)
	defer cancel()
	for range 3 {
		e, err := h.kv.Get(ctx, reshardKey)
		if err != nil {
			return false, err
		}
		var r reshardRecord
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			return false, err
		}
		switch {
		case r.Rev != rev || r.Phase == phaseAborted:
			return false, nil
		case r.Phase == phaseSwitching || r.Phase == phaseDone:
			return true, nil
		}
		r.Phase, r.Reason = phaseAborted, reason
		data, _ := json.Marshal(r)
		if _, err = h.kv.Update(ctx, reshardKey, data, e.Revision()); err == nil {
			h.log.Warn("reshard aborted", "revision", rev, "reason", reason)
			return false, nil
		}
		if !isConflict(err) {
			return false, err
		}
	}
	return false, fmt.Errorf("natsfleet: the reshard's state kept changing")
}

// drainRefused refuses a drain while a reshard runs: the reshard's new
// clusters would be assigned to the draining host's clusters' takers
// while they move.
func (h *hostCore) drainRefused() error {
	s, _ := h.snapshot()
	if r := s.Reshard; r != nil && r.Record.running() {
		return fmt.Errorf("natsfleet: drain of host %s refused: %w", h.id, r.inProgress())
	}
	return nil
}

// nextRun is what a cluster shares with its runner: its readiness, and
// for a reshard's new cluster whether it may deliver and keep sessions.
type nextRun struct {
	gate     atomic.Bool // deliver: the leader opened the new plan's delivery
	ready    atomic.Bool // every shard of the cluster has been READY
	promoted atomic.Bool // the new plan is current: sessions are kept
	ops      clusterOps  // guarded by the host's mu
}

// currentRun is the nextRun of a cluster of the current plan.
func currentRun() *nextRun {
	n := &nextRun{}
	n.gate.Store(true)
	n.promoted.Store(true)
	return n
}

// delivers reports whether the cluster may deliver (always, for a
// cluster of the current plan).
func (n *nextRun) delivers() bool { return n == nil || n.gate.Load() }

// observe watches the cluster's runtime for its readiness.
func (n *nextRun) observe(e runtime.Event) {
	if _, ok := e.(runtime.ClusterReady); ok {
		n.ready.Store(true)
	}
}

// nextSessions keeps no session of a new cluster until its plan is
// current: before, its shards delivered nothing, and a host taking it
// over identifies them again.
type nextSessions struct {
	n     *nextRun
	inner runtime.SessionStore
}

func (s nextSessions) Save(ctx context.Context, sessions []shardgroup.Session) error {
	if !s.n.promoted.Load() {
		return nil
	}
	return s.inner.Save(ctx, sessions)
}

func (s nextSessions) Load(ctx context.Context) ([]shardgroup.Session, error) {
	if !s.n.promoted.Load() {
		return nil, nil
	}
	return s.inner.Load(ctx)
}

// revisionSessions holds the sessions buckets of plan revisions after the
// first (whose bucket is Host.sessions): a shard ID means another shard
// under another count.
type revisionSessions struct {
	mu      sync.Mutex // guards buckets
	buckets map[int]jetstream.KeyValue
}

// sessionsBucket returns the sessions bucket of plan revision rev.
func (h *Host) sessionsBucket(ctx context.Context, rev int) (jetstream.KeyValue, error) {
	if rev <= 1 {
		return h.sessions, nil
	}
	h.revs.mu.Lock()
	defer h.revs.mu.Unlock()
	if kv, ok := h.revs.buckets[rev]; ok {
		return kv, nil
	}
	kv, err := keyValue(ctx, h.nc, h.cfg.Fleet, "sessions_r"+strconv.Itoa(rev), jetstream.FileStorage)
	if err != nil {
		return nil, err
	}
	if h.revs.buckets == nil {
		h.revs.buckets = map[int]jetstream.KeyValue{}
	}
	h.revs.buckets[rev] = kv
	return kv, nil
}

// clusterSessionStore is the session store of a cluster this host runs:
// its plan revision's bucket, fenced by its lease.
func (h *Host) clusterSessionStore(ctx context.Context, c *clusterRun) (runtime.SessionStore, error) {
	kv, err := h.sessionsBucket(ctx, c.Plan.Revision)
	if err != nil {
		return nil, err
	}
	s := newClusterSessions(kv, h.cfg.ID, c)
	if c.Next != nil && !c.Next.promoted.Load() {
		return nextSessions{n: c.Next, inner: s}, nil
	}
	return s, nil
}

// replanner makes the plan of a reshard to shards from the current plan.
type replanner func(ctx context.Context, cur planRecord, shards int) (planRecord, error)

// replan is the leader's plan for a reshard: the current plan's
// max_concurrency and gateway, shards split as the first plan's were.
func (h *Host) replan(_ context.Context, cur planRecord, shards int) (planRecord, error) {
	p := planRecord{Shards: shards, MaxConcurrency: cur.MaxConcurrency, GatewayURL: cur.GatewayURL}
	if shards < 1 {
		return p, fmt.Errorf("natsfleet: a reshard to %d shards: give at least 1", shards)
	}
	if mc := cur.MaxConcurrency; mc > 1 && shards%mc != 0 {
		return p, fmt.Errorf("natsfleet: a reshard to %d shards: not a multiple of max_concurrency %d", shards, mc)
	}
	return h.splitPlan(p)
}

// reshardLoop is the ownership loop's reshard state.
type reshardLoop struct {
	rec      *reshardRecord // the reshard key's value; nil: none
	rev      uint64         // its revision in the bucket
	next     map[int]*ownedCluster
	retiring map[*ownedCluster]bool // old clusters stopping after a switch
	wrote    []byte                 // the progress record written last
}

// runners counts the reshard's runners not yet finished.
func (s *reshardLoop) runners() int { return len(s.next) + len(s.retiring) }

// reshardActionable reports whether a change of key may let the loop
// move a reshard on at once.
func reshardActionable(key string) bool {
	return key == reshardKey || strings.HasPrefix(key, progressKeyPrefix)
}

// learnReshard records a change of the reshard key.
func (l *loop) learnReshard(rev uint64, deleted bool, value []byte) {
	if rev < l.rs.rev {
		return // older than what this host wrote itself
	}
	l.rs.rec, l.rs.rev = nil, rev
	if deleted {
		return
	}
	var r reshardRecord
	if json.Unmarshal(value, &r) != nil {
		return
	}
	l.rs.rec = &r
	open := r.Phase == phaseDelivering || r.Phase == phaseSwitching
	for _, c := range l.rs.next {
		if c.run.Plan.Revision == r.Rev {
			c.run.Next.gate.Store(open)
		}
	}
}

// switchPending reports whether the new plan is current but its
// assignment not yet written: lead leaves it to the reshard.
func (l *loop) switchPending() bool {
	r := l.rs.rec
	return r != nil && r.Phase == phaseSwitching && l.plan != nil && l.plan.Revision == r.Rev &&
		(l.assign == nil || l.assign.Revision != r.Rev)
}

// planLearned follows a new plan revision: clusters of an older one are
// stopped (their leases released once they have), and the reshard's new
// clusters of this one become the host's clusters, delivering and
// keeping their sessions.
func (l *loop) planLearned() {
	rev := l.plan.Revision
	for id, c := range l.clusters {
		if c.run.Plan.Revision >= rev {
			continue
		}
		l.h.log.Info("old plan's cluster stopping", "cluster", id, "revision", max(c.run.Plan.Revision, 1))
		delete(l.clusters, id)
		if l.rs.retiring == nil {
			l.rs.retiring = map[*ownedCluster]bool{}
		}
		l.rs.retiring[c] = true
		if !c.stopping {
			l.stopCluster(c, true)
		}
	}
	for id, c := range l.rs.next {
		if c.run.Plan.Revision != rev || c.stopping {
			continue
		}
		n := c.run.Next
		n.gate.Store(true)
		l.h.mu.Lock()
		n.promoted.Store(true)
		if n.ops != nil {
			l.h.ops[id] = n.ops
		}
		l.h.mu.Unlock()
		delete(l.rs.next, id)
		l.clusters[id] = c
		l.h.log.Info("new plan's cluster is current", "cluster", id, "revision", rev)
	}
}

// startNext starts a new cluster of reshard r, not delivering.
func (l *loop) startNext(id int, lease *heldLease, r *reshardRecord) {
	h := l.h
	n := &nextRun{}
	n.gate.Store(r.Phase == phaseDelivering || r.Phase == phaseSwitching)
	run := &clusterRun{ID: id, Shards: slices.Clone(r.Plan.Clusters[id]), Plan: *r.Plan, Lease: lease, Next: n}
	run.SetOps = func(o clusterOps) {
		h.mu.Lock()
		defer h.mu.Unlock()
		prev := n.ops
		n.ops = o
		if !n.promoted.Load() {
			return
		}
		switch {
		case o != nil:
			h.ops[id] = o
		case h.ops[id] == prev:
			delete(h.ops, id)
		}
	}
	ctx, cancel := context.WithCancel(l.runCtx)
	c := &ownedCluster{run: run, cancel: cancel}
	if l.rs.next == nil {
		l.rs.next = map[int]*ownedCluster{}
	}
	l.rs.next[id] = c
	h.log.Info("reshard's new cluster taken", "cluster", id, "revision", r.Rev, "shards", len(run.Shards))
	l.wg.Go(func() {
		c.err = h.run(ctx, run)
		select {
		case l.finished <- c:
		case <-l.abandon:
		}
	})
}

// followReshard is a host's part of a reshard: take the new clusters
// assigned to it, hand over or stop the others, open their delivery
// when the leader says, and report them. The leader then moves the
// reshard on.
func (l *loop) followReshard(ctx context.Context) {
	h := l.h
	r := l.rs.rec
	active := r != nil && r.running() && r.Plan != nil && l.plan != nil && l.plan.Revision < r.Rev
	if active {
		for c, owner := range r.Assign {
			if owner != h.id || l.draining || c >= len(r.Plan.Clusters) {
				continue
			}
			if _, ok := l.rs.next[c]; ok {
				continue
			}
			key := planLeaseKey(r.Rev, c)
			lease, err := h.ls.acquire(ctx, key, l.seen[key])
			switch {
			case err == nil:
				l.startNext(c, lease, r)
			case errors.Is(err, errLeaseHeld):
			case isConflict(err):
				l.refresh(ctx, key)
			default:
				h.log.Warn("reshard cluster lease", "cluster", c, "err", err.Error())
			}
		}
	}
	for id, c := range l.rs.next {
		if c.stopping {
			continue
		}
		switch {
		case !active || c.run.Plan.Revision != r.Rev:
			h.log.Info("reshard's new cluster stopping: the reshard ended without it", "cluster", id)
			l.stopCluster(c, true)
		case id >= len(r.Assign) || r.Assign[id] != h.id:
			h.log.Info("reshard's new cluster handed over", "cluster", id, "to", r.Assign[id])
			l.stopCluster(c, true)
		}
	}
	l.reportProgress(ctx)
	if l.leader != nil {
		l.leadReshard(ctx)
	}
}

// reportProgress writes this host's progress record when it changed,
// while a reshard runs (it is read only then).
func (l *loop) reportProgress(ctx context.Context) {
	r := l.rs.rec
	if r == nil || !r.running() {
		return
	}
	p := progressRecord{Rev: r.Rev, Current: []int{}, Ready: []int{}, Delivering: []int{}}
	now := time.Now()
	for id, c := range l.clusters {
		if !c.stopping && c.run.Next.ready.Load() && c.run.Lease.valid(now) {
			p.Current = append(p.Current, id)
		}
	}
	slices.Sort(p.Current)
	for id, c := range l.rs.next {
		n := c.run.Next
		if c.stopping || c.run.Plan.Revision != p.Rev || !n.ready.Load() || !c.run.Lease.valid(now) {
			continue
		}
		p.Ready = append(p.Ready, id)
		if n.gate.Load() {
			p.Delivering = append(p.Delivering, id)
		}
	}
	slices.Sort(p.Ready)
	slices.Sort(p.Delivering)
	data, _ := json.Marshal(p)
	if string(data) == string(l.rs.wrote) {
		return
	}
	if _, err := l.h.kv.Put(ctx, progressKey(l.h.id), data); err != nil {
		l.h.log.Warn("reshard progress report failed", "err", err.Error())
		return
	}
	l.rs.wrote = data
}

// renewReshard renews the leases of the reshard's runners, as renew does
// the host's clusters'.
func (l *loop) renewReshard(ctx context.Context) {
	for _, c := range l.reshardRunners() {
		if c.run.Lease.deadline.Load() == 0 {
			continue
		}
		if err := l.h.ls.renew(ctx, c.run.Lease); err != nil {
			if isConflict(err) || errors.Is(err, errLeaseExpired) {
				c.run.Lease.deadline.Store(0)
				l.h.log.Warn("reshard cluster lease lost: stopping its shards", "cluster", c.run.ID, "err", err.Error())
				l.refresh(ctx, c.run.Lease.key)
			}
		}
	}
}

func (l *loop) reshardRunners() []*ownedCluster {
	out := make([]*ownedCluster, 0, l.rs.runners())
	for _, c := range l.rs.next {
		out = append(out, c)
	}
	for c := range l.rs.retiring {
		out = append(out, c)
	}
	return out
}

// fenceReshard stops the reshard's runners whose lease has ended.
func (l *loop) fenceReshard(now time.Time) {
	for _, c := range l.reshardRunners() {
		if !c.stopping && !c.run.Lease.valid(now) {
			l.h.log.Warn("reshard cluster lease expired: stopping its shards", "cluster", c.run.ID)
			l.stopCluster(c, false)
		}
	}
}

// reshardDeadline is how long until the earliest lease of a reshard
// runner ends (an hour when none runs).
func (l *loop) reshardDeadline() time.Duration {
	next := time.Hour
	for _, c := range l.reshardRunners() {
		if !c.stopping {
			next = min(next, max(time.Until(c.run.Lease.Deadline()), 0))
		}
	}
	return next
}

// finishReshard handles a reshard runner that returned; false: c is not
// one.
func (l *loop) finishReshard(ctx context.Context, c *ownedCluster) bool {
	h := l.h
	switch {
	case l.rs.retiring[c]:
		delete(l.rs.retiring, c)
	case l.rs.next[c.run.ID] == c:
		delete(l.rs.next, c.run.ID)
		if !c.stopping {
			// Not the host's failure: the cluster is taken again.
			h.log.Error("reshard's new cluster stopped", "cluster", c.run.ID, "err", fmt.Sprint(c.err))
			c.release = true
		}
	default:
		return false
	}
	c.run.SetOps(nil)
	if c.release && c.run.Lease.valid(time.Now()) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.interval)
		defer cancel()
		if err := h.ls.release(rctx, c.run.Lease); err != nil {
			h.log.Warn("releasing a cluster lease failed: it expires", "cluster", c.run.ID, "err", err.Error())
		}
	}
	return true
}

// stopReshard stops the reshard's new clusters, when the host stops.
func (l *loop) stopReshard() {
	for _, c := range l.rs.next {
		if !c.stopping {
			l.stopCluster(c, true)
		}
	}
}

// leadReshard is the leader's part of a reshard: plan it, assign its new
// clusters, open their delivery once all are ready, switch once all
// deliver, or abort it past its deadline.
func (l *loop) leadReshard(ctx context.Context) {
	h := l.h
	r := l.rs.rec
	if r == nil || !r.running() || l.plan == nil {
		return
	}
	next := *r
	next.Leader = h.id
	switch cur := max(l.plan.Revision, 1); {
	case cur >= r.Rev:
		l.finishSwitch(ctx, &next)
		return
	case r.Phase == phaseSwitching:
		l.finishSwitch(ctx, &next)
		return
	case cur != r.From:
		next.Phase, next.Reason = phaseAborted, fmt.Sprintf("the plan became revision %d meanwhile", cur)
		l.writeReshard(ctx, &next)
		return
	case time.Now().After(r.Deadline):
		next.Phase, next.Reason = phaseAborted, fmt.Sprintf("deadline passed in phase %s; clusters not ready: %v", r.Phase, l.reshardWaiting(r, phaseStarting))
		l.writeReshard(ctx, &next)
		return
	}
	if r.Phase == phaseRequested {
		p, err := h.replan(ctx, *l.plan, r.Shards)
		if err != nil {
			next.Phase, next.Reason = phaseAborted, err.Error()
			l.writeReshard(ctx, &next)
			return
		}
		p.Revision, p.MadeBy = r.Rev, h.id
		next.Plan, next.Phase = &p, phaseStarting
		next.Assign = l.reshardAssign(ctx, len(p.Clusters), nil)
		h.log.Info("reshard planned", "shards", p.Shards, "clusters", len(p.Clusters), "revision", p.Revision,
			"assignment", strings.Join(next.Assign, ","))
		l.writeReshard(ctx, &next)
		return
	}
	if r.Plan == nil {
		return
	}
	next.Assign = l.reshardAssign(ctx, len(r.Plan.Clusters), r.Assign)
	if !slices.Equal(next.Assign, r.Assign) || r.Leader != h.id {
		h.log.Info("reshard's new clusters assigned", "revision", r.Rev, "assignment", strings.Join(next.Assign, ","))
		l.writeReshard(ctx, &next)
		return
	}
	if len(l.reshardWaiting(r, r.Phase)) > 0 {
		return
	}
	if r.Phase == phaseDelivering {
		if old := l.currentWaiting(r.Rev); len(old) > 0 {
			// A cluster of the old plan taken over from a dead host
			// must have resumed (Discord replaying what it missed)
			// before it stops.
			return
		}
	}
	if r.Phase == phaseStarting {
		h.log.Info("reshard's new clusters ready: delivering", "revision", r.Rev)
		next.Phase = phaseDelivering
		l.writeReshard(ctx, &next)
		return
	}
	next.Phase = phaseSwitching
	if l.writeReshard(ctx, &next) {
		l.finishSwitch(ctx, &next)
	}
}

// finishSwitch makes a switching reshard's plan current, writes its
// assignment, and ends it; each step is carried on by the next leader if
// this one dies between them.
func (l *loop) finishSwitch(ctx context.Context, r *reshardRecord) {
	h := l.h
	if r.Plan == nil {
		return
	}
	if l.plan.Revision < r.Rev {
		data, _ := json.Marshal(r.Plan)
		var err error
		if s := l.seen[planKey]; s != nil {
			_, err = h.kv.Update(ctx, planKey, data, s.rev)
		} else {
			_, err = h.kv.Put(ctx, planKey, data)
		}
		if err != nil {
			h.log.Warn("writing the new plan failed", "revision", r.Rev, "err", err.Error())
			l.refresh(ctx, planKey)
			return
		}
		p := *r.Plan
		l.plan = &p
		l.planLearned()
		h.log.Info("reshard switched: the new plan is current", "shards", p.Shards, "revision", p.Revision)
	}
	if l.assign == nil || l.assign.Revision != r.Rev {
		rec := assignRecord{Hosts: slices.Clone(r.Assign), Leader: h.id, Revision: r.Rev}
		data, _ := json.Marshal(rec)
		if _, err := h.kv.Put(ctx, assignKey, data); err != nil {
			h.log.Warn("writing the new plan's assignment failed", "err", err.Error())
			return
		}
		l.assign = &rec
	}
	r.Phase = phaseDone
	l.writeReshard(ctx, r)
}

// writeReshard writes r by compare-and-set on the revision last seen.
func (l *loop) writeReshard(ctx context.Context, r *reshardRecord) bool {
	data, _ := json.Marshal(r)
	rev, err := l.h.kv.Update(ctx, reshardKey, data, l.rs.rev)
	if err != nil {
		if !isConflict(err) {
			l.h.log.Warn("writing the reshard's state failed", "err", err.Error())
		}
		l.refresh(ctx, reshardKey)
		return false
	}
	l.learnReshard(rev, false, data)
	if r.Phase == phaseAborted {
		l.h.log.Warn("reshard aborted", "revision", r.Rev, "reason", r.Reason)
	}
	return true
}

// reshardAssign assigns n new clusters to the live hosts.
func (l *loop) reshardAssign(ctx context.Context, n int, prev []string) []string {
	var pm map[int]string
	if prev != nil {
		pm = map[int]string{}
		for c, id := range prev {
			if id != "" {
				pm[c] = id
			}
		}
	}
	out := make([]string, n)
	for c, id := range assign(n, l.liveHosts(ctx), pm) {
		out[c] = id
	}
	return out
}

// reshardWaiting lists the new clusters not yet ready (phase starting) or
// not yet delivering (later) on the host assigned them.
func (l *loop) reshardWaiting(r *reshardRecord, phase string) []int {
	var out []int
	if r.Plan == nil {
		return out
	}
	for c := range r.Plan.Clusters {
		owner := ""
		if c < len(r.Assign) {
			owner = r.Assign[c]
		}
		if owner == "" || !l.reported(r.Rev, c, owner, phase) {
			out = append(out, c)
		}
	}
	return out
}

// currentWaiting lists the current plan's clusters not reported ready,
// during the reshard of revision reshard, by a live host holding their
// lease (renewed lately).
func (l *loop) currentWaiting(reshard int) []int {
	var out []int
	rev := max(l.plan.Revision, 1)
	for c := range l.plan.Clusters {
		s := l.seen[planLeaseKey(rev, c)]
		var lr leaseRecord
		if !l.fresh(s) || json.Unmarshal(s.value, &lr) != nil || lr.Owner == "" || !l.fresh(l.seen[hostKeyPrefix+lr.Owner]) {
			out = append(out, c)
			continue
		}
		s = l.seen[progressKey(lr.Owner)]
		var p progressRecord
		if s == nil || s.deleted || json.Unmarshal(s.value, &p) != nil || p.Rev != reshard || !slices.Contains(p.Current, c) {
			out = append(out, c)
		}
	}
	return out
}

// fresh reports whether a lease or heartbeat key was renewed within the
// lease TTL as this host saw it: a dead host's last reports do not count.
func (l *loop) fresh(s *seenKey) bool {
	return s != nil && !s.deleted && time.Since(s.at) <= l.h.ttl
}

// reported reports whether owner, live, holds the lease of new cluster c
// (renewed lately) and reports it ready (phase starting) or delivering.
func (l *loop) reported(rev, c int, owner, phase string) bool {
	s := l.seen[planLeaseKey(rev, c)]
	var lr leaseRecord
	if !l.fresh(s) || json.Unmarshal(s.value, &lr) != nil || lr.Owner != owner || !l.fresh(l.seen[hostKeyPrefix+owner]) {
		return false
	}
	s = l.seen[progressKey(owner)]
	var p progressRecord
	if s == nil || s.deleted || json.Unmarshal(s.value, &p) != nil || p.Rev != rev {
		return false
	}
	if phase == phaseStarting {
		return slices.Contains(p.Ready, c)
	}
	return slices.Contains(p.Delivering, c)
}

// reshardView is the last reshard as the loop saw it.
type reshardView struct {
	Record     reshardRecord
	Owners     map[int]string // new cluster -> lease owner
	Ready      map[int]bool
	Delivering map[int]bool
}

func (l *loop) reshardSnapshot() *reshardView {
	r := l.rs.rec
	if r == nil {
		return nil
	}
	v := &reshardView{Record: *r, Owners: map[int]string{}, Ready: map[int]bool{}, Delivering: map[int]bool{}}
	v.Record.Assign = slices.Clone(r.Assign)
	if r.Plan != nil {
		for c := range r.Plan.Clusters {
			if s := l.seen[planLeaseKey(r.Rev, c)]; s != nil && !s.deleted {
				var lr leaseRecord
				if json.Unmarshal(s.value, &lr) == nil {
					v.Owners[c] = lr.Owner
				}
			}
			if owner := v.Owners[c]; owner != "" {
				v.Ready[c] = l.reported(r.Rev, c, owner, phaseStarting)
				v.Delivering[c] = l.reported(r.Rev, c, owner, phaseDelivering)
			}
		}
	}
	return v
}

// ReshardStatus is the fleet's last reshard, running or ended.
type ReshardStatus struct {
	Revision     int       `json:"revision"` // of the new plan
	FromRevision int       `json:"from_revision"`
	Shards       int       `json:"shards"`
	Phase        string    `json:"phase"` // requested, starting, delivering, switching, done or aborted
	Running      bool      `json:"running"`
	RequestedBy  string    `json:"requested_by"`
	Leader       string    `json:"leader,omitempty"`
	Started      time.Time `json:"started"`
	Deadline     time.Time `json:"deadline"`
	Reason       string    `json:"reason,omitempty"` // why it was aborted
	// Clusters are the new plan's clusters (none before it is planned).
	Clusters []ReshardClusterStatus `json:"clusters,omitempty"`
}

// ReshardClusterStatus is one new cluster of a reshard.
type ReshardClusterStatus struct {
	ID         int    `json:"id"`
	Shards     []int  `json:"shards"`
	Assigned   string `json:"assigned"`
	Owner      string `json:"owner"` // the host holding its lease
	Ready      bool   `json:"ready"` // every shard READY
	Delivering bool   `json:"delivering"`
}

func (v *reshardView) status() *ReshardStatus {
	if v == nil {
		return nil
	}
	r := v.Record
	out := &ReshardStatus{Revision: r.Rev, FromRevision: r.From, Shards: r.Shards, Phase: r.Phase, Running: r.running(),
		RequestedBy: r.RequestedBy, Leader: r.Leader, Started: r.Started, Deadline: r.Deadline, Reason: r.Reason}
	if r.Plan != nil {
		for c, shards := range r.Plan.Clusters {
			cs := ReshardClusterStatus{ID: c, Shards: slices.Clone(shards), Owner: v.Owners[c], Ready: v.Ready[c], Delivering: v.Delivering[c]}
			if c < len(r.Assign) {
				cs.Assigned = r.Assign[c]
			}
			out.Clusters = append(out.Clusters, cs)
		}
	}
	return out
}

// planNote describes the plan revision and a running reshard, for
// /healthz.
func (s FleetStatus) planNote() string {
	note := fmt.Sprintf("plan revision %d, %d shards", s.PlanRevision, s.Shards)
	if r := s.Reshard; r != nil && r.Running {
		ready := 0
		for _, c := range r.Clusters {
			if c.Ready {
				ready++
			}
		}
		note += fmt.Sprintf("; resharding to %d shards (revision %d, %s): %d/%d new clusters ready", r.Shards, r.Revision, r.Phase, ready, len(r.Clusters))
	}
	return note
}
