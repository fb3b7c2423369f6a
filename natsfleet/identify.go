package natsfleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// IdentifyConfig configures an [IdentifyQueue]. Every process of a fleet
// uses the same Prefix, MaxConcurrency and Interval.
type IdentifyConfig struct {
	// Prefix names the fleet (default "fleet"); the queue keeps its
	// state in the JetStream key-value bucket <prefix>_identify.
	Prefix string
	// MaxConcurrency is Discord's max_concurrency: the number of buckets.
	MaxConcurrency int
	// Interval is the time between two IDENTIFYs of a bucket (Discord: 5 s).
	Interval time.Duration
	// Lease bounds how long a bucket waits for the READY of an IDENTIFY
	// whose process went silent (crashed, cut off): the next turn goes
	// Interval plus Lease after the silent one could have begun. It must
	// cover the time from WaitBucket's return to READY (default 10 s).
	Lease time.Duration
	// OpTimeout bounds one key-value operation when the caller gives no
	// deadline: UnlockBucket's report and Close (default 5 s).
	OpTimeout time.Duration
}

// IdentifyQueue is a runtime.IdentifyQueue shared by every process of a
// fleet through JetStream KV: one IDENTIFY per bucket (shard_id %
// max_concurrency) per Interval fleet-wide, every bucket busy at once.
//
// # Tickets
//
// Each bucket has two keys: the last ticket issued, and the last ticket
// done. WaitBucket takes the bucket's next ticket with one
// compare-and-set as soon as a shard asks, long before its turn, then
// waits in its process, watching the keys, until the previous ticket is
// done and an Interval has passed since this process saw that. A ticket
// is done when its shard's READY arrived (UnlockBucket reports it), so
// the gateway has read its IDENTIFY before the next one's Interval
// starts counting, whatever the network's jitter; and since each process
// counts on its own clock from a report it received after that READY,
// the hosts' clocks need not agree (processes of one host, which share
// a clock, count from the READY itself). Turns pass without anyone
// meeting at the window's boundary: a turn costs the Interval plus the
// time from one IDENTIFY to its READY.
//
// In one process the shards of a bucket take tickets one after the other,
// each once the previous one's turn came, so a process holds at most one
// waiting ticket per bucket: one that dies delays each bucket by at most
// one Interval plus Lease.
type IdentifyQueue struct {
	cfg     IdentifyConfig
	kv      jetstream.KeyValue
	watcher jetstream.KeyWatcher
	unwatch context.CancelFunc // ends the watcher's context
	ctx     context.Context    // ends when Close begins
	cancel  context.CancelFunc
	stop    <-chan struct{} // ctx.Done()
	clock   string          // this host's clock
	once    sync.Once
	wg      sync.WaitGroup // the watch loop and the reporter

	mu        sync.Mutex // guards view, changed, primed, held, reports, abandoned
	view      []bucketView
	changed   chan struct{} // closed when the view changes
	primed    bool          // the watcher delivered the initial values
	held      map[int]uint64
	reports   []doneState // per bucket, the report to write (Done 0: none)
	abandoned [][]uint64  // per bucket, tickets given up before their turn
	wake      chan struct{}

	turns []chan struct{} // per bucket, one token: whoever has it may take a ticket
}

// bucketView is what this process knows of a bucket.
type bucketView struct {
	issued, issuedRev uint64
	done, doneRev     uint64
	doneAt            time.Time // when this process saw done advance
	usedAt            time.Time // when this process saw a used ticket done
}

// ticketState is the value of t<bucket>; doneState of d<bucket>.
type ticketState struct {
	Issued uint64 `json:"issued"`
}

type doneState struct {
	Done uint64 `json:"done"`
	Used bool   `json:"used"` // an IDENTIFY went out on it
	// At is when its READY arrived (unix ns) on the clock named Clock: a
	// process on the same host counts the Interval from it rather than
	// from when the report reached it.
	At    int64  `json:"at,omitempty"`
	Clock string `json:"clock,omitempty"`
}

// NewIdentifyQueue creates (or opens) the fleet's identify bucket on nc
// and starts watching it. Close it when done (the runtime closes the
// queue it is given when Run returns).
func NewIdentifyQueue(ctx context.Context, nc *nats.Conn, cfg IdentifyConfig) (*IdentifyQueue, error) {
	if cfg.MaxConcurrency < 1 || cfg.Interval <= 0 {
		return nil, fmt.Errorf("natsfleet: identify queue needs MaxConcurrency >= 1 and Interval > 0, got %d and %s", cfg.MaxConcurrency, cfg.Interval)
	}
	if cfg.Lease < 0 || cfg.OpTimeout < 0 {
		return nil, errors.New("natsfleet: IdentifyConfig: Lease and OpTimeout must be >= 0 (0 for the default)")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "fleet"
	}
	if cfg.Lease == 0 {
		cfg.Lease = 10 * time.Second
	}
	if cfg.OpTimeout == 0 {
		cfg.OpTimeout = 5 * time.Second
	}
	kv, err := keyValue(ctx, nc, cfg.Prefix, "identify", jetstream.MemoryStorage)
	if err != nil {
		return nil, err
	}
	q := &IdentifyQueue{
		cfg:       cfg,
		kv:        kv,
		view:      make([]bucketView, cfg.MaxConcurrency),
		changed:   make(chan struct{}),
		held:      map[int]uint64{},
		reports:   make([]doneState, cfg.MaxConcurrency),
		abandoned: make([][]uint64, cfg.MaxConcurrency),
		wake:      make(chan struct{}, 1),
		turns:     make([]chan struct{}, cfg.MaxConcurrency),
	}
	q.clock = clockID()
	q.ctx, q.cancel = context.WithCancel(context.Background())
	q.stop = q.ctx.Done()
	for i := range q.turns {
		q.turns[i] = make(chan struct{}, 1)
		q.turns[i] <- struct{}{}
	}
	// Every key exists before the first ticket, so that a fleet's first
	// turns are plain compare-and-sets, not creations racing.
	for k := range cfg.MaxConcurrency {
		for key, value := range map[string]any{"t": ticketState{}, "d": doneState{}} {
			data, _ := json.Marshal(value)
			if _, err := kv.Create(ctx, key+strconv.Itoa(k), data); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
				q.cancel()
				return nil, fmt.Errorf("natsfleet: identify bucket %d: %w", k, err)
			}
		}
	}
	wctx, unwatch := context.WithCancel(context.Background())
	w, err := kv.WatchAll(wctx)
	if err != nil {
		unwatch()
		q.cancel()
		return nil, fmt.Errorf("natsfleet: watch the identify buckets: %w", err)
	}
	q.watcher, q.unwatch = w, unwatch
	q.wg.Add(2)
	go q.watch()
	go q.report()
	return q, nil
}

// keyValue creates or opens the KV bucket <prefix>_<name>.
func keyValue(ctx context.Context, nc *nats.Conn, prefix, name string, storage jetstream.StorageType) (jetstream.KeyValue, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("natsfleet: JetStream: %w", err)
	}
	bucket := strings.NewReplacer(".", "_", "*", "_", ">", "_").Replace(prefix) + "_" + name
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	// A new bucket is kept on three nodes of a clustered NATS (so that
	// losing one loses no key), on fewer if it has fewer, on the one
	// server of an unclustered NATS.
	cfg := jetstream.KeyValueConfig{Bucket: bucket, History: 1, Storage: storage, Replicas: 1}
	if nc.ConnectedClusterName() != "" {
		cfg.Replicas = 3
	}
	// Create first: several processes creating the same bucket at once
	// all succeed (the same config is no conflict), where concurrent
	// create-or-updates, and lookups of a bucket being created, on a
	// clustered JetStream can leave some without an answer. A bucket made
	// with another config is updated, keeping its replicas (a node down
	// now does not shrink it).
	kv, err := js.CreateKeyValue(ctx, cfg)
	for cfg.Replicas > 1 && tooFewNodes(err) {
		cfg.Replicas--
		kv, err = js.CreateKeyValue(ctx, cfg)
	}
	if errors.Is(err, jetstream.ErrBucketExists) {
		if old, err := js.KeyValue(ctx, bucket); err == nil {
			if st, err := old.Status(ctx); err == nil {
				if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && bs.StreamInfo() != nil && bs.StreamInfo().Config.Replicas > 0 {
					cfg.Replicas = bs.StreamInfo().Config.Replicas
				}
			}
		}
		kv, err = js.UpdateKeyValue(ctx, cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("natsfleet: key-value bucket %s: %w (is JetStream enabled on the server?)", bucket, err)
	}
	return kv, nil
}

// tooFewNodes reports whether JetStream refused a bucket for want of
// nodes to place its replicas on.
func tooFewNodes(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	switch apiErr.ErrorCode {
	case 10005, 10023, 10074: // no suitable peers, insufficient resources, replicas not supported
		return true
	}
	return false
}

// watch keeps the view up to date until Close stops the watcher.
func (q *IdentifyQueue) watch() {
	defer q.wg.Done()
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case e, ok = <-q.watcher.Updates():
			if !ok {
				return
			}
		case <-q.stop:
			return
		}
		if e == nil {
			q.mu.Lock()
			q.primed = true
			q.changedLocked()
			q.mu.Unlock()
			continue
		}
		q.learn(e)
	}
}

// learn records a key's entry if it is newer than the one known.
func (q *IdentifyQueue) learn(e jetstream.KeyValueEntry) {
	key := e.Key()
	if len(key) < 2 {
		return
	}
	k, err := strconv.Atoi(key[1:])
	if err != nil || k < 0 || k >= len(q.view) {
		return
	}
	switch key[0] {
	case 't':
		var st ticketState
		if json.Unmarshal(e.Value(), &st) == nil {
			q.learnIssued(k, st, e.Revision())
		}
	case 'd':
		var st doneState
		if json.Unmarshal(e.Value(), &st) == nil {
			q.learnDone(k, st, e.Revision())
		}
	}
}

func (q *IdentifyQueue) learnIssued(k int, st ticketState, rev uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	v := &q.view[k]
	if rev > v.issuedRev {
		v.issued, v.issuedRev = max(v.issued, st.Issued), rev
		q.changedLocked()
	}
}

func (q *IdentifyQueue) learnDone(k int, st doneState, rev uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	v := &q.view[k]
	if rev <= v.doneRev {
		return
	}
	v.doneRev = rev
	if st.Done > v.done {
		v.done, v.doneAt = st.Done, time.Now()
		switch {
		case st.Used:
			v.usedAt = v.doneAt
			if st.Clock == q.clock && st.At > 0 {
				if at := time.Unix(0, st.At); at.Before(v.usedAt) {
					v.usedAt = at
				}
			}
		case !q.primed:
			// A report from before this process watched: a used ticket
			// may have been done just before it, unseen.
			v.usedAt = v.doneAt
		}
	}
	q.changedLocked()
}

func (q *IdentifyQueue) changedLocked() {
	close(q.changed)
	q.changed = make(chan struct{})
}

// MaxConcurrency is the number of buckets.
func (q *IdentifyQueue) MaxConcurrency() int { return len(q.turns) }

var (
	errQueueClosed = errors.New("natsfleet: identify queue closed")
	errSkipped     = errors.New("natsfleet: identify ticket skipped")
)

// WaitBucket blocks until the shard's bucket may IDENTIFY, fleet-wide, or
// ctx ends. Call UnlockBucket once its READY arrived (or the connection
// ended).
func (q *IdentifyQueue) WaitBucket(ctx context.Context, shardID int) error {
	k := shardID % len(q.turns)
	select {
	case <-q.turns[k]:
	case <-ctx.Done():
		return ctx.Err()
	case <-q.stop:
		return errQueueClosed
	}
	defer func() { q.turns[k] <- struct{}{} }()
	var ticket uint64
	for {
		var err error
		if ticket, err = q.take(ctx, k); err != nil {
			return err
		}
		err = q.await(ctx, k, ticket, time.Now())
		if err == nil {
			break
		}
		if err != errSkipped {
			q.abandon(k, ticket)
			return err
		}
		// The tickets after this one went on without it (its lease ran
		// out): its turn is gone, take another.
	}
	q.mu.Lock()
	prev, ok := q.held[shardID]
	q.held[shardID] = ticket
	q.mu.Unlock()
	if ok {
		q.done(k, prev, true) // a second wait without an unlock
	}
	return nil
}

// take takes bucket k's next ticket.
func (q *IdentifyQueue) take(ctx context.Context, k int) (uint64, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, q.cfg.OpTimeout)
		defer cancel()
	}
	if err := q.waitPrimed(ctx); err != nil {
		return 0, err
	}
	key := "t" + strconv.Itoa(k)
	for {
		q.mu.Lock()
		v := q.view[k]
		q.mu.Unlock()
		st := ticketState{Issued: v.issued + 1}
		value, _ := json.Marshal(st)
		var rev uint64
		var err error
		if v.issuedRev == 0 {
			rev, err = q.kv.Create(ctx, key, value)
		} else {
			rev, err = q.kv.Update(ctx, key, value, v.issuedRev)
		}
		if err == nil {
			q.learnIssued(k, st, rev)
			return st.Issued, nil
		}
		if err := q.refresh(ctx, k, key, v.issuedRev, err); err != nil {
			return 0, err
		}
	}
}

// refresh learns key's newer value after a compare-and-set at revision
// tried lost to another process; it returns err if that was not the
// failure. The watcher brings the value that won, without another
// request to JetStream (which, when every shard of a fleet asks at once,
// is what the queue waits on); if it is slow, the key is read.
func (q *IdentifyQueue) refresh(ctx context.Context, k int, key string, tried uint64, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if !errors.Is(err, jetstream.ErrKeyExists) && !strings.Contains(err.Error(), "wrong last sequence") {
		return fmt.Errorf("natsfleet: identify bucket %d: %w", k, err)
	}
	timer := time.NewTimer(refreshWait)
	defer timer.Stop()
	for {
		q.mu.Lock()
		v, changed := q.view[k], q.changed
		q.mu.Unlock()
		rev := v.issuedRev
		if key[0] == 'd' {
			rev = v.doneRev
		}
		if rev > tried {
			return nil
		}
		select {
		case <-changed:
			continue
		case <-timer.C:
		case <-ctx.Done():
			return ctx.Err()
		case <-q.stop:
			return errQueueClosed
		}
		break
	}
	e, err := q.kv.Get(ctx, key)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("natsfleet: identify bucket %d: %w", k, err)
	}
	q.learn(e)
	return nil
}

// refreshWait is how long a lost compare-and-set waits for the watcher
// to bring the winning value before reading the key.
const refreshWait = time.Second

func (q *IdentifyQueue) waitPrimed(ctx context.Context) error {
	for {
		q.mu.Lock()
		primed, changed := q.primed, q.changed
		q.mu.Unlock()
		if primed {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-q.stop:
			return errQueueClosed
		}
	}
}

// await waits for ticket's turn in bucket k: the previous ticket done and
// an Interval since a used one was, or, without that, an Interval plus
// Lease per ticket ahead since they could have begun. taken is when this
// process took the ticket. It returns errSkipped if a later ticket was
// done first: the bucket went on without this one.
func (q *IdentifyQueue) await(ctx context.Context, k int, ticket uint64, taken time.Time) error {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		q.mu.Lock()
		v, changed := q.view[k], q.changed
		q.mu.Unlock()
		now := time.Now()
		var at time.Time
		if v.done >= ticket {
			return errSkipped
		}
		if v.done+1 == ticket {
			at = v.usedAt.Add(q.cfg.Interval)
		} else {
			// The tickets ahead began no earlier than the latest report
			// or our ticket, each no earlier than an Interval plus Lease
			// after the one before: past that, each is done.
			at = v.doneAt
			if taken.After(at) {
				at = taken
			}
			at = at.Add(time.Duration(ticket-v.done-1) * (q.cfg.Interval + q.cfg.Lease))
		}
		if !now.Before(at) {
			return nil
		}
		if timer == nil {
			timer = time.NewTimer(at.Sub(now))
		} else {
			timer.Reset(at.Sub(now))
		}
		select {
		case <-timer.C:
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-q.stop:
			return errQueueClosed
		}
	}
}

// UnlockBucket reports the shard's ticket done, after its READY: the
// bucket's next IDENTIFY, in any process, waits an Interval from when
// that process sees the report.
func (q *IdentifyQueue) UnlockBucket(shardID int) {
	q.mu.Lock()
	ticket, ok := q.held[shardID]
	delete(q.held, shardID)
	q.mu.Unlock()
	if ok {
		q.done(shardID%len(q.turns), ticket, true)
	}
}

// clockID names the clock this process reads: the kernel's boot id, which
// every process on the host shares, or else a name of its own.
func clockID() string {
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		if id := strings.TrimSpace(string(b)); id != "" {
			return id
		}
	}
	return "process-" + randomHex(8)
}

// done queues the report that ticket of bucket k is done.
func (q *IdentifyQueue) done(k int, ticket uint64, used bool) {
	now := time.Now().UnixNano()
	q.mu.Lock()
	r := &q.reports[k]
	r.Done = max(r.Done, ticket)
	if used {
		r.Used, r.At, r.Clock = true, now, q.clock
	}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// abandon reports ticket of bucket k done without an IDENTIFY once the
// ticket before it is done: until then, the one before may be
// identifying, and the one after must still wait for it.
func (q *IdentifyQueue) abandon(k int, ticket uint64) {
	q.mu.Lock()
	q.abandoned[k] = append(q.abandoned[k], ticket)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// report writes the queued reports until Close.
func (q *IdentifyQueue) report() {
	defer q.wg.Done()
	for {
		var changed chan struct{}
		q.mu.Lock()
		for k, ts := range q.abandoned {
			kept := ts[:0]
			for _, t := range ts {
				if q.view[k].done+1 >= t {
					q.reports[k].Done = max(q.reports[k].Done, t)
				} else {
					kept = append(kept, t)
				}
			}
			q.abandoned[k] = kept
			if len(kept) > 0 {
				changed = q.changed
			}
		}
		q.mu.Unlock()
		q.flush(q.ctx)
		select {
		case <-q.wake:
		case <-changed: // nil: none abandoned
		case <-q.stop:
			return
		}
	}
}

// flush writes the queued reports.
func (q *IdentifyQueue) flush(ctx context.Context) {
	for k := range q.reports {
		q.mu.Lock()
		r := q.reports[k]
		q.reports[k] = doneState{}
		q.mu.Unlock()
		if r.Done == 0 {
			continue
		}
		octx, cancel := context.WithTimeout(ctx, q.cfg.OpTimeout)
		err := q.writeDone(octx, k, r)
		cancel()
		if err != nil && ctx.Err() != nil {
			// Stopped: keep it for Close's flush.
			q.mu.Lock()
			p := &q.reports[k]
			p.Done = max(p.Done, r.Done)
			if r.Used && !p.Used {
				p.Used, p.At, p.Clock = true, r.At, r.Clock
			}
			q.mu.Unlock()
		}
		// Any other failure leaves the next ticket to wait out its lease.
	}
}

// writeDone raises bucket k's done key to r, unless it is there already.
func (q *IdentifyQueue) writeDone(ctx context.Context, k int, r doneState) error {
	key := "d" + strconv.Itoa(k)
	value, _ := json.Marshal(r)
	for {
		q.mu.Lock()
		v := q.view[k]
		q.mu.Unlock()
		if v.done >= r.Done {
			return nil
		}
		var rev uint64
		var err error
		if v.doneRev == 0 {
			rev, err = q.kv.Create(ctx, key, value)
		} else {
			rev, err = q.kv.Update(ctx, key, value, v.doneRev)
		}
		if err == nil {
			q.learnDone(k, r, rev)
			return nil
		}
		if err := q.refresh(ctx, k, key, v.doneRev, err); err != nil {
			return err
		}
	}
}

// Close reports the tickets of this process done, so that the fleet does
// not wait out their leases, and stops watching. Waits in progress fail.
// It does not close the connection.
func (q *IdentifyQueue) Close(ctx context.Context) {
	q.once.Do(func() {
		q.mu.Lock()
		now := time.Now().UnixNano()
		for shard, ticket := range q.held {
			r := &q.reports[shard%len(q.turns)]
			r.Done = max(r.Done, ticket)
			if !r.Used {
				r.Used, r.At, r.Clock = true, now, q.clock
			}
		}
		clear(q.held)
		q.mu.Unlock()
		q.cancel()
		q.wg.Wait() // the reporter and the watch loop
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, q.cfg.OpTimeout)
			defer cancel()
		}
		q.flush(ctx)
		_ = q.watcher.Stop()
		q.unwatch()
	})
}
