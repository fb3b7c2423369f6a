package natsfleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Keys of the hosts bucket.
const (
	leaderKey     = "leader"
	planKey       = "plan"
	assignKey     = "assign"
	hostKeyPrefix = "host."
	leaseKeyPref  = "lease."
)

func leaseKey(cluster int) string { return leaseKeyPref + strconv.Itoa(cluster) }

// planRecord is the fleet's plan, made once by the first leader.
type planRecord struct {
	Shards         int     `json:"shards"`
	MaxConcurrency int     `json:"max_concurrency"`
	GatewayURL     string  `json:"gateway_url"`
	Clusters       [][]int `json:"clusters"` // shard IDs by cluster ID
	MadeBy         string  `json:"made_by"`
	// Revision counts the fleet's plans: 0 (read as 1) for the first,
	// then one more than the last reshard's. A plan's leases and sessions
	// are its revision's own.
	Revision int `json:"revision,omitempty"`
}

// assignRecord says which host should own each cluster ("" none), by
// cluster ID. The leader writes it.
type assignRecord struct {
	Hosts  []string `json:"hosts"`
	Leader string   `json:"leader"`
	// Revision is the plan revision the assignment is for.
	Revision int `json:"revision,omitempty"`
}

// hostRecord is a host's registration, rewritten at every renewal as its
// heartbeat.
type hostRecord struct {
	ID       string `json:"id"`
	Weight   int    `json:"weight"`
	Static   []int  `json:"static,omitempty"`
	Draining bool   `json:"draining,omitempty"`
	Owned    []int  `json:"owned"`
}

// clusterOps are the operations a host carries out on a cluster it runs.
type clusterOps interface {
	SoftRestart(ctx context.Context, cluster int) error
	Restart(ctx context.Context, cluster int) error
}

// clusterRun is one cluster owned by this host, as its runner sees it.
type clusterRun struct {
	ID     int
	Shards []int
	Plan   planRecord
	Lease  *heldLease
	// SetOps makes the cluster's operations reachable (SoftRestart from
	// any host); nil clears them.
	SetOps func(clusterOps)
	// Next tells when the cluster is ready; for a reshard's new cluster
	// it also holds its delivery until the leader opens it, and its
	// sessions until the switch.
	Next *nextRun
}

// clusterRunner runs a cluster on this host until ctx ends, then stops its
// shards resumably and saves their sessions (while the lease is valid).
// It returns early only on a failure.
type clusterRunner func(ctx context.Context, c *clusterRun) error

// planner makes the fleet's plan; the first leader calls it once.
type planner func(ctx context.Context) (planRecord, error)

var hostIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// defaultHostID is hostname-pid, with characters a key cannot hold
// replaced.
func defaultHostID() string {
	name, err := os.Hostname()
	if err != nil || name == "" {
		name = "host"
	}
	name = strings.Map(func(r rune) rune {
		if r < 128 && hostIDPattern.MatchString(string(r)) {
			return r
		}
		return '-'
	}, name)
	return name + "-" + strconv.Itoa(os.Getpid())
}

// hostCore holds what the ownership loop needs; Host wraps it with the
// runtime's clusters.
type hostCore struct {
	fleet    string
	id       string
	weight   int
	static   []int
	ttl      time.Duration
	margin   time.Duration
	interval time.Duration
	log      *slog.Logger
	kv       jetstream.KeyValue
	ls       leases
	run      clusterRunner
	plan     planner
	replan   replanner

	drain chan struct{} // Drain's request to the loop; closed once

	mu      sync.Mutex // guards snap, changed, ops, running
	snap    fleetSnapshot
	changed chan struct{} // closed when snap changes
	ops     map[int]clusterOps
	running bool
	drainOn sync.Once
}

// fleetSnapshot is what the loop last knew of the fleet.
type fleetSnapshot struct {
	Leader   string
	IsLeader bool
	Plan     *planRecord
	Assign   []string
	Hosts    map[string]hostView
	Leases   map[int]leaseView
	Owned    []int // clusters whose runner runs here
	Draining bool
	Reshard  *reshardView // the last reshard, if any
}

type coreConfig struct {
	fleet, id   string
	weight      int
	static      []int
	ttl, margin time.Duration
	interval    time.Duration
	log         *slog.Logger
	run         clusterRunner
	plan        planner
	replan      replanner
}

func newHostCore(ctx context.Context, nc *nats.Conn, cfg coreConfig) (*hostCore, error) {
	kv, err := keyValue(ctx, nc, cfg.fleet, "hosts", jetstream.MemoryStorage)
	if err != nil {
		return nil, err
	}
	h := &hostCore{fleet: cfg.fleet, id: cfg.id, weight: cfg.weight, static: slices.Clone(cfg.static), ttl: cfg.ttl, margin: cfg.margin,
		interval: cfg.interval, log: cfg.log, kv: kv, run: cfg.run, plan: cfg.plan, replan: cfg.replan,
		drain: make(chan struct{}), changed: make(chan struct{}), ops: map[int]clusterOps{}}
	h.ls = leases{kv: kv, owner: cfg.id, ttl: cfg.ttl, margin: cfg.margin, now: time.Now}
	return h, nil
}

// ownedCluster is a cluster whose runner this host started.
type ownedCluster struct {
	run      *clusterRun
	cancel   context.CancelFunc
	stopping bool  // its ctx was cancelled
	release  bool  // give the lease back once stopped
	err      error // what the runner returned
}

// loop is the state of one run of the ownership loop; only its goroutine
// touches it.
type loop struct {
	h        *hostCore
	seen     map[string]*seenKey
	leader   *heldLease
	plan     *planRecord
	assign   *assignRecord
	clusters map[int]*ownedCluster
	draining bool
	started  time.Time
	finished chan *ownedCluster
	abandon  chan struct{} // closed when stop gives up waiting for runners
	wg       sync.WaitGroup
	runCtx   context.Context
	fail     error // a runner's failure: Run returns it
	rs       reshardLoop
}

// runLoop runs the ownership loop until ctx ends or a cluster fails, then
// stops every cluster (handing each over: sessions saved, lease
// released) and removes the host from the fleet. stopTimeout bounds that.
func (h *hostCore) runLoop(ctx context.Context, stopTimeout time.Duration) error {
	h.mu.Lock()
	if h.running {
		h.mu.Unlock()
		return errors.New("natsfleet: Host.Run called twice: a Host runs once")
	}
	h.running = true
	h.mu.Unlock()

	wctx, unwatch := context.WithCancel(context.Background())
	defer unwatch()
	w, err := h.kv.WatchAll(wctx)
	if err != nil {
		return fmt.Errorf("natsfleet: host %s: watch the fleet: %w", h.id, err)
	}
	defer func() { _ = w.Stop() }()

	runCtx, endRuns := context.WithCancel(context.WithoutCancel(ctx))
	defer endRuns()
	l := &loop{h: h, seen: map[string]*seenKey{}, clusters: map[int]*ownedCluster{}, started: time.Now(),
		finished: make(chan *ownedCluster), abandon: make(chan struct{}), runCtx: runCtx}

	ticker := time.NewTicker(h.interval)
	defer ticker.Stop()
	drain := h.drain
	primed := false
	// fence fires at the earliest lease deadline of a running cluster, so
	// that a cluster stops as soon as its lease ends, between rounds.
	fence := time.NewTimer(time.Hour)
	defer fence.Stop()
	for l.fail == nil {
		fence.Reset(l.nextDeadline())
		select {
		case <-fence.C:
			l.fenceExpired()
		case e, ok := <-w.Updates():
			if !ok {
				l.fail = fmt.Errorf("natsfleet: host %s: the fleet's watcher stopped", h.id)
				continue
			}
			if e == nil {
				if !primed {
					primed = true
					l.tick(ctx)
				}
				continue
			}
			l.learn(e)
			if primed && l.actionable(e) {
				// A new assignment or a released lease: act now rather
				// than at the next round.
				fctx, fcancel := context.WithTimeout(ctx, h.ttl/2)
				l.follow(fctx)
				l.followReshard(fctx)
				fcancel()
				l.publish()
			}
		case <-ticker.C:
			if primed {
				l.tick(ctx)
			}
		case c := <-l.finished:
			l.finish(ctx, c)
		case <-drain:
			drain = nil // a nil channel never fires again
			l.draining = true
			if primed {
				l.tick(ctx)
			}
		case <-ctx.Done():
			return l.stop(ticker, stopTimeout, nil)
		}
	}
	return l.stop(ticker, stopTimeout, l.fail)
}

// learn records a change of the hosts bucket.
func (l *loop) learn(e jetstream.KeyValueEntry) {
	k := e.Key()
	s := l.seen[k]
	if s == nil {
		s = &seenKey{}
		l.seen[k] = s
	}
	if s.rev == e.Revision() && !s.at.IsZero() {
		return
	}
	deleted := e.Operation() != jetstream.KeyValuePut
	*s = seenKey{rev: e.Revision(), value: e.Value(), deleted: deleted, at: time.Now()}
	switch k {
	case planKey:
		if !deleted {
			var p planRecord
			// Never back to an older revision than this host wrote.
			if json.Unmarshal(e.Value(), &p) == nil && (l.plan == nil || p.Revision >= l.plan.Revision) {
				l.plan = &p
				l.planLearned()
			}
		}
	case assignKey:
		l.assign = nil
		if !deleted {
			var a assignRecord
			if json.Unmarshal(e.Value(), &a) == nil {
				l.assign = &a
			}
		}
	case reshardKey:
		l.learnReshard(e.Revision(), deleted, e.Value())
	}
	l.publish()
}

// actionable reports whether a change may let this host take or hand
// over a cluster at once: the assignment, or a lease released.
func (l *loop) actionable(e jetstream.KeyValueEntry) bool {
	if e.Key() == assignKey || reshardActionable(e.Key()) {
		return true
	}
	if !strings.HasPrefix(e.Key(), leaseKeyPref) || e.Operation() != jetstream.KeyValuePut {
		return false
	}
	var r leaseRecord
	return json.Unmarshal(e.Value(), &r) == nil && r.Owner == ""
}

// refresh reads key again after a failed compare-and-set, so that the
// next try uses its current revision.
func (l *loop) refresh(ctx context.Context, key string) {
	e, err := l.h.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		delete(l.seen, key)
	case err == nil:
		l.learn(e)
	}
}

// tick is one round: heartbeat, renewals, fencing, leadership, and
// following the assignment. The round's key-value operations are bounded
// by half the TTL together (a renewal's validity counts from when it was
// sent, so a slow one costs nothing).
func (l *loop) tick(ctx context.Context) {
	h := l.h
	opCtx, cancel := context.WithTimeout(ctx, h.ttl/2)
	defer cancel()
	l.heartbeat(opCtx)
	l.renew(opCtx)
	l.renewReshard(opCtx)
	if l.leader != nil {
		if err := h.ls.renew(opCtx, l.leader); err != nil {
			if isConflict(err) {
				l.leader = nil
				l.refresh(opCtx, leaderKey)
			}
		}
		if l.leader != nil && !l.leader.valid(time.Now()) {
			l.leader = nil
		}
	}
	l.fenceExpired()
	if l.leader == nil {
		lease, err := h.ls.acquire(opCtx, leaderKey, l.seen[leaderKey])
		switch {
		case err == nil:
			l.leader = lease
			h.log.Info("leading the fleet", "fleet", h.fleet, "epoch", lease.epoch)
		case errors.Is(err, errLeaseHeld):
		case isConflict(err):
			l.refresh(opCtx, leaderKey)
		default:
			h.log.Warn("leader lease", "err", err.Error())
		}
	}
	if l.leader != nil {
		l.lead(opCtx)
	}
	l.follow(opCtx)
	l.followReshard(opCtx)
	l.publish()
}

// fenceExpired stops every cluster whose lease is not valid any more; it
// keeps nothing (its sessions may be another host's now).
func (l *loop) fenceExpired() {
	now := time.Now()
	for _, c := range l.clusters {
		if !c.run.Lease.valid(now) && !c.stopping {
			l.h.log.Warn("cluster lease expired: stopping its shards", "cluster", c.run.ID)
			l.stopCluster(c, false)
		}
	}
	l.fenceReshard(now)
}

// nextDeadline is how long until the earliest lease of a running cluster
// ends (an hour when none runs).
func (l *loop) nextDeadline() time.Duration {
	next := time.Hour
	for _, c := range l.clusters {
		if !c.stopping {
			next = min(next, max(time.Until(c.run.Lease.Deadline()), 0))
		}
	}
	return min(next, l.reshardDeadline())
}

// renew renews the lease of every cluster this host runs. A conflict
// means another host took the lease: the cluster is fenced at once.
func (l *loop) renew(ctx context.Context) {
	h := l.h
	for _, c := range l.clusters {
		if c.run.Lease.deadline.Load() == 0 {
			continue
		}
		if err := h.ls.renew(ctx, c.run.Lease); err != nil {
			if isConflict(err) || errors.Is(err, errLeaseExpired) {
				c.run.Lease.deadline.Store(0)
				h.log.Warn("cluster lease lost: stopping its shards", "cluster", c.run.ID, "err", err.Error())
				l.refresh(ctx, c.run.Lease.key)
			} else {
				h.log.Warn("cluster lease renewal failed", "cluster", c.run.ID, "err", err.Error())
			}
		}
	}
}

// heartbeat registers the host with its state.
func (l *loop) heartbeat(ctx context.Context) {
	rec := hostRecord{ID: l.h.id, Weight: l.h.weight, Static: l.h.static, Draining: l.draining, Owned: l.owned()}
	data, _ := json.Marshal(rec)
	if _, err := l.h.kv.Put(ctx, hostKeyPrefix+l.h.id, data); err != nil {
		l.h.log.Warn("host heartbeat failed", "err", err.Error())
	}
}

func (l *loop) owned() []int {
	out := make([]int, 0, len(l.clusters))
	for id := range l.clusters {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// liveHosts returns the hosts whose heartbeat this host saw change within
// TTL plus the margin (itself always). A host that looks silent is read
// again before it is counted out, in case the watcher lags.
func (l *loop) liveHosts(ctx context.Context) []hostInfo {
	h := l.h
	var out []hostInfo
	for k, s := range l.seen {
		id, ok := strings.CutPrefix(k, hostKeyPrefix)
		if !ok || s.deleted {
			continue
		}
		if id != h.id && time.Since(s.at) > h.ttl+h.margin {
			l.refresh(ctx, k)
			if s = l.seen[k]; s == nil || s.deleted || time.Since(s.at) > h.ttl+h.margin {
				continue
			}
		}
		var rec hostRecord
		if json.Unmarshal(s.value, &rec) != nil {
			continue
		}
		out = append(out, hostInfo{ID: id, Weight: rec.Weight, Static: rec.Static, Draining: rec.Draining})
	}
	return out
}

// lead is the leader's part of a round: the plan, made once, and the
// assignment of clusters to the live hosts.
func (l *loop) lead(ctx context.Context) {
	h := l.h
	if l.plan == nil {
		l.refresh(ctx, planKey)
	}
	if l.plan == nil {
		if _, ok := l.seen[planKey]; !ok && ctx.Err() == nil {
			p, err := h.plan(ctx)
			if err != nil {
				h.log.Error("making the fleet's plan failed", "err", err.Error())
				return
			}
			p.MadeBy = h.id
			data, _ := json.Marshal(p)
			if _, err := h.kv.Create(ctx, planKey, data); err != nil && !isConflict(err) {
				h.log.Error("writing the fleet's plan failed", "err", err.Error())
				return
			}
			h.log.Info("fleet planned", "shards", p.Shards, "clusters", len(p.Clusters))
		}
		l.refresh(ctx, planKey)
		if l.plan == nil {
			return
		}
	}
	// Give the hosts starting together two rounds to register, so that
	// the first assignment does not move clusters while they identify.
	if time.Since(l.started) < 2*h.interval || l.switchPending() {
		return
	}
	hosts := l.liveHosts(ctx)
	var prev map[int]string
	if l.assign != nil {
		prev = map[int]string{}
		for c, id := range l.assign.Hosts {
			if id != "" {
				prev[c] = id
			}
		}
	}
	next := assign(len(l.plan.Clusters), hosts, prev)
	rec := assignRecord{Hosts: make([]string, len(l.plan.Clusters)), Leader: h.id, Revision: l.plan.Revision}
	for c, id := range next {
		rec.Hosts[c] = id
	}
	if l.assign != nil && slices.Equal(l.assign.Hosts, rec.Hosts) && l.assign.Revision == rec.Revision {
		return
	}
	data, _ := json.Marshal(rec)
	if _, err := h.kv.Put(ctx, assignKey, data); err != nil {
		h.log.Warn("writing the assignment failed", "err", err.Error())
		return
	}
	ids := make([]string, len(hosts))
	for i, hi := range hosts {
		ids[i] = hi.ID
	}
	slices.Sort(ids)
	h.log.Info("clusters assigned", "hosts", strings.Join(ids, ","), "assignment", strings.Join(rec.Hosts, ","))
	l.assign = &rec
}

// follow takes the clusters assigned to this host whose lease it can
// take, and hands over the ones assigned to another host.
func (l *loop) follow(ctx context.Context) {
	h := l.h
	if l.plan == nil || l.assign == nil || l.assign.Revision != l.plan.Revision {
		return // the assignment of another plan revision: wait for this one's
	}
	for c, owner := range l.assign.Hosts {
		if owner != h.id || l.draining || c >= len(l.plan.Clusters) {
			continue
		}
		if _, ok := l.clusters[c]; ok {
			continue
		}
		key := planLeaseKey(l.plan.Revision, c)
		lease, err := h.ls.acquire(ctx, key, l.seen[key])
		switch {
		case err == nil:
			l.startCluster(c, lease)
		case errors.Is(err, errLeaseHeld):
		case isConflict(err):
			l.refresh(ctx, key)
		default:
			h.log.Warn("cluster lease", "cluster", c, "err", err.Error())
		}
	}
	for id, c := range l.clusters {
		if c.stopping || id >= len(l.assign.Hosts) {
			continue
		}
		if to := l.assign.Hosts[id]; to != "" && to != h.id {
			h.log.Info("handing a cluster over", "cluster", id, "to", to)
			l.stopCluster(c, true)
		}
	}
}

func (l *loop) startCluster(id int, lease *heldLease) {
	h := l.h
	run := &clusterRun{ID: id, Shards: slices.Clone(l.plan.Clusters[id]), Plan: *l.plan, Lease: lease, Next: currentRun()}
	var mine clusterOps // guarded by h.mu
	run.SetOps = func(o clusterOps) {
		h.mu.Lock()
		defer h.mu.Unlock()
		switch {
		case o != nil:
			h.ops[id], mine = o, o
		case h.ops[id] == mine: // not a reshard's cluster with the same ID
			delete(h.ops, id)
		}
	}
	ctx, cancel := context.WithCancel(l.runCtx)
	c := &ownedCluster{run: run, cancel: cancel}
	l.clusters[id] = c
	h.log.Info("cluster taken", "cluster", id, "epoch", lease.epoch)
	l.wg.Go(func() {
		c.err = h.run(ctx, run)
		select {
		case l.finished <- c:
		case <-l.abandon: // Run has returned without it
		}
	})
}

// stopCluster stops a cluster's runner; release gives its lease back once
// it has stopped (a hand-over), otherwise the lease is left to expire.
func (l *loop) stopCluster(c *ownedCluster, release bool) {
	c.stopping, c.release = true, release
	c.cancel()
}

// finish handles a runner that returned.
func (l *loop) finish(ctx context.Context, c *ownedCluster) {
	h := l.h
	if l.finishReshard(ctx, c) {
		l.publish()
		return
	}
	delete(l.clusters, c.run.ID)
	c.run.SetOps(nil)
	if !c.stopping {
		l.fail = fmt.Errorf("natsfleet: host %s: cluster %d stopped: %w", h.id, c.run.ID, c.err)
		if c.err == nil {
			l.fail = fmt.Errorf("natsfleet: host %s: cluster %d stopped by itself", h.id, c.run.ID)
		}
		c.release = true
	}
	if c.release && c.run.Lease.valid(time.Now()) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.interval)
		defer cancel()
		if err := h.ls.release(rctx, c.run.Lease); err != nil {
			h.log.Warn("releasing a cluster lease failed: the next owner waits for it to expire", "cluster", c.run.ID, "err", err.Error())
		} else {
			h.log.Info("cluster handed over", "cluster", c.run.ID)
		}
	}
	l.publish()
}

// stop hands every cluster over (sessions saved, leases released), waits
// for the runners within timeout, and leaves the fleet.
func (l *loop) stop(ticker *time.Ticker, timeout time.Duration, failure error) error {
	h := l.h
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// Draining, so that the leader reassigns the clusters while they stop.
	l.draining = true
	hctx, hcancel := context.WithTimeout(ctx, h.interval)
	l.heartbeat(hctx)
	hcancel()
	for _, c := range l.clusters {
		if !c.stopping {
			l.stopCluster(c, true)
		}
	}
	l.stopReshard()
	var errs []error
	if failure != nil {
		errs = append(errs, failure)
	}
	for len(l.clusters) > 0 || l.rs.runners() > 0 {
		select {
		case c := <-l.finished:
			l.finish(ctx, c)
		case <-ticker.C:
			// The leases stay valid while the shards close and their
			// sessions are saved.
			rctx, rcancel := context.WithTimeout(ctx, h.interval)
			l.renew(rctx)
			l.renewReshard(rctx)
			rcancel()
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("natsfleet: host %s: clusters %v did not stop within %v", h.id, l.owned(), timeout))
			close(l.abandon)
			l.clusters = map[int]*ownedCluster{}
			l.rs.next, l.rs.retiring = nil, nil
		}
	}
	select {
	case <-l.abandon:
	default:
		l.wg.Wait()
	}
	if l.leader != nil && l.leader.valid(time.Now()) {
		_ = h.ls.release(ctx, l.leader)
	}
	_ = h.kv.Delete(ctx, hostKeyPrefix+h.id)
	_ = h.kv.Delete(ctx, progressKey(h.id))
	l.publish()
	return errors.Join(errs...)
}

// publish copies the loop's view for Status and wakes its waiters.
func (l *loop) publish() {
	h := l.h
	s := fleetSnapshot{Hosts: map[string]hostView{}, Leases: map[int]leaseView{}, Owned: l.owned(), Draining: l.draining, Plan: l.plan}
	if l.assign != nil {
		s.Assign = slices.Clone(l.assign.Hosts)
	}
	if l.leader != nil {
		s.Leader, s.IsLeader = h.id, true
	}
	now := time.Now()
	for k, seen := range l.seen {
		if seen.deleted {
			continue
		}
		switch {
		case k == leaderKey && s.Leader == "":
			var r leaseRecord
			if json.Unmarshal(seen.value, &r) == nil {
				s.Leader = r.Owner
			}
		case strings.HasPrefix(k, hostKeyPrefix):
			var r hostRecord
			if json.Unmarshal(seen.value, &r) == nil {
				age := now.Sub(seen.at)
				s.Hosts[r.ID] = hostView{ID: r.ID, Weight: r.Weight, Static: r.Static, Draining: r.Draining, Clusters: r.Owned,
					Live: r.ID == h.id || age <= h.ttl+h.margin, HeartbeatAge: age}
			}
		case strings.HasPrefix(k, leaseKeyPref):
			rev, id, ok := parseLeaseKey(k)
			var r leaseRecord
			if ok && l.plan != nil && rev == max(l.plan.Revision, 1) && json.Unmarshal(seen.value, &r) == nil {
				s.Leases[id] = leaseView{Owner: r.Owner, Epoch: r.Epoch, Age: now.Sub(seen.at)}
			}
		}
	}
	s.Reshard = l.reshardSnapshot()
	h.mu.Lock()
	h.snap = s
	close(h.changed)
	h.changed = make(chan struct{})
	h.mu.Unlock()
}

// snapshot returns the loop's last view and a channel closed when it
// changes.
func (h *hostCore) snapshot() (fleetSnapshot, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.snap, h.changed
}

// waitFor waits until cond holds of the loop's view, or ctx ends.
func (h *hostCore) waitFor(ctx context.Context, cond func(fleetSnapshot) bool) error {
	for {
		s, changed := h.snapshot()
		if cond(s) {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// startDrain asks the loop to give every cluster away.
func (h *hostCore) startDrain() {
	h.drainOn.Do(func() { close(h.drain) })
}

// hostView and leaseView describe the fleet for Status.
type hostView struct {
	ID           string        `json:"id"`
	Weight       int           `json:"weight"`
	Static       []int         `json:"static,omitempty"`
	Draining     bool          `json:"draining,omitempty"`
	Live         bool          `json:"live"`
	Clusters     []int         `json:"clusters"`
	HeartbeatAge time.Duration `json:"heartbeat_age_ns"`
}

type leaseView struct {
	Owner string        `json:"owner"`
	Epoch uint64        `json:"epoch"`
	Age   time.Duration `json:"age_ns"` // since this host saw it renewed
}
