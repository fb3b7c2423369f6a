package natsfleet

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
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
	// state in the JetStream key-value bucket <prefix>_identify and
	// announces tickets done on the subjects <prefix>_identify.done.<n>
	// (with '.', '*' and '>' of the prefix replaced by '_').
	Prefix string
	// MaxConcurrency is Discord's max_concurrency: the number of buckets.
	MaxConcurrency int
	// Interval is the time between two IDENTIFYs of a bucket (Discord: 5 s).
	Interval time.Duration
	// Lease bounds how long a bucket waits for the READY of an IDENTIFY
	// whose process went silent (crashed, cut off): the next block of
	// turns goes Interval plus Lease after the silent one's last ticket
	// done. It must cover the time from WaitBucket's return to READY and
	// its report's trip through NATS (default 10 s).
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
// done. When a shard asks, its process takes a block of the bucket's next
// tickets with one compare-and-set, one for each of its shards waiting in
// that bucket, long before their turns; each then waits in its process,
// watching the keys, until the previous ticket is done and an Interval
// has passed since this process saw that. A ticket is done when its
// shard's READY arrived (UnlockBucket reports it), so
// the gateway has read its IDENTIFY before the next one's Interval
// starts counting, whatever the network's jitter; and since each process
// counts on its own clock from a report it received after that READY,
// the hosts' clocks need not agree (processes of one host, which share
// a clock, count from the READY itself). Turns pass without anyone
// meeting at the window's boundary: a turn costs the Interval plus the
// time from one IDENTIFY to its READY.
//
// The tickets of a block follow each other in one process, which sees
// each one's READY itself: the next turn waits an Interval from it, with
// no trip through NATS, and the fleet's turns pass from one process to
// another only between blocks.
//
// A process that finishes a used ticket also announces it on a plain NATS
// subject, which the others hear one hop later, before the done key's
// update reaches them through JetStream: the turn that follows in another
// process waits on the shortest path there is. The done key stays the
// record; an announcement lost or unheard only leaves that turn to the key.
//
// A shard can reserve its turn before it connects (ReserveTurn, a
// shardgroup.TurnReserver): its process takes its ticket then, and the
// shard dials once the ticket before its own is done (or, if the blocks
// ahead went silent, once its turn comes without that). A shardgroup
// reserves every shard's turn at once, so that the shards of a bucket
// waiting in a process share one block, and the turns pass between
// processes only between blocks. At a fleet's start only the shards of
// the first turns dial, not one per bucket in every process, so the
// first IDENTIFYs do not wait behind the other processes' handshakes.
//
// A process takes its next block of a bucket once the previous block's
// first turn came, so it holds at most one waiting block per bucket, and
// the key of issued tickets lists where each block begins. A block whose
// process went silent is skipped whole: the bucket waits an Interval plus
// Lease from the last ticket done (or from when the waiting ticket was
// taken), once per block ahead, not per ticket, so a process that dies
// delays each bucket by at most one Interval plus Lease per block it held.
// A process that closes (a runtime shut down during its start) delays
// nobody: it reports its tickets done, and lists those it gave up behind
// another process's turn, which it cannot report done before that one,
// as void in the key of issued tickets; the bucket passes over them as
// over tickets done without an IDENTIFY.
type IdentifyQueue struct {
	cfg     IdentifyConfig
	kv      jetstream.KeyValue
	watcher jetstream.KeyWatcher
	nc      *nats.Conn
	sub     *nats.Subscription // announcements of tickets done
	subject string             // of the announcements; <subject>.<bucket>
	unwatch context.CancelFunc // ends the watcher's context
	ctx     context.Context    // ends when Close begins
	cancel  context.CancelFunc
	stop    <-chan struct{} // ctx.Done()
	clock   string          // this host's clock
	once    sync.Once
	wg      sync.WaitGroup // the watch loop and the reporters

	mu        sync.Mutex // guards view, lanes, primed, held, reports, abandoned, closed, the reservations' taken
	closed    bool       // Close began: no block is taken any more
	view      []bucketView
	lanes     []lane
	primedc   chan struct{} // closed when the watcher delivered the initial values
	primed    bool          // the watcher delivered the initial values
	held      map[int]uint64
	reports   []doneState     // per bucket, the report to write (Done 0: none)
	abandoned [][]uint64      // per bucket, tickets given up before their turn
	wake      []chan struct{} // per bucket, wakes its reporter
}

// bucketView is what this process knows of a bucket.
type bucketView struct {
	issued, issuedRev uint64
	blocks            []uint64      // the value of blocks at issuedRev
	void              []ticketRange // the value of void at issuedRev
	done, doneRev     uint64        // the done key
	local             uint64        // the last ticket done here or announced, maybe not yet in the done key
	doneAt            time.Time     // when this process saw the last ticket done
	usedAt            time.Time     // when this process saw a used ticket done
}

// voidAfterDone is the void tickets the done key has not gone past: the
// others are over for every process that reads a value written now.
func (v *bucketView) voidAfterDone() []ticketRange {
	var out []ticketRange
	for _, r := range v.void {
		if r.To > v.done {
			out = append(out, r)
		}
	}
	return out
}

// isVoid reports whether ticket t is void.
func (v *bucketView) isVoid(t uint64) bool {
	for _, r := range v.void {
		if r.From <= t && t <= r.To {
			return true
		}
	}
	return false
}

// last is the last ticket known done, here or in the done key, and the
// void tickets right after it.
func (v *bucketView) last() uint64 {
	d := max(v.done, v.local)
	for _, r := range v.void {
		if r.From <= d+1 && r.To > d {
			d = r.To
		}
	}
	return d
}

// lane is this process's side of a bucket: its shards waiting for a turn.
type lane struct {
	waiters []*waiter     // in the order they asked
	taking  bool          // a waiter is taking a block for those without a ticket
	first   uint64        // the first ticket of the last block, until its turn came (0: none)
	changed chan struct{} // closed when the view of the bucket or the lane changes
}

// waiter is one WaitBucket call.
type waiter struct {
	ticket uint64    // 0 until its block is taken
	taken  time.Time // when its block was taken
	gone   bool      // the call returned
}

// ticketState is the value of t<bucket>; doneState of d<bucket>.
type ticketState struct {
	Issued uint64 `json:"issued"`
	// Blocks lists the first tickets of the blocks issued that may not be
	// done yet, ascending: a waiting ticket counts the blocks ahead of it.
	Blocks []uint64 `json:"blocks,omitempty"`
	// Void lists, ascending, the tickets that may not be done yet and
	// will never be used: given up by a process that closed before the
	// tickets ahead of them were done, so that it could not report them
	// done in their order. The bucket passes over them as over tickets
	// done without an IDENTIFY.
	Void []ticketRange `json:"void,omitempty"`
}

// ticketRange is the tickets From to To, both included.
type ticketRange struct {
	From uint64 `json:"from"`
	To   uint64 `json:"to"`
}

// maxBlocks bounds the blocks listed: with one waiting block per process
// and bucket, a fleet of fewer processes never reaches it.
const maxBlocks = 1024

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
		primedc:   make(chan struct{}),
		held:      map[int]uint64{},
		reports:   make([]doneState, cfg.MaxConcurrency),
		abandoned: make([][]uint64, cfg.MaxConcurrency),
		wake:      make([]chan struct{}, cfg.MaxConcurrency),
		lanes:     make([]lane, cfg.MaxConcurrency),
	}
	for k := range q.lanes {
		q.lanes[k].changed = make(chan struct{})
		q.wake[k] = make(chan struct{}, 1)
	}
	q.clock = clockID()
	q.ctx, q.cancel = context.WithCancel(context.Background())
	q.stop = q.ctx.Done()
	wctx, unwatch := context.WithCancel(context.Background())
	w, err := kv.WatchAll(wctx)
	if err != nil {
		unwatch()
		q.cancel()
		return nil, fmt.Errorf("natsfleet: watch the identify buckets: %w", err)
	}
	q.watcher, q.unwatch = w, unwatch
	q.nc = nc
	q.subject = identifyBucket(cfg.Prefix) + ".done"
	q.sub, err = nc.Subscribe(q.subject+".*", q.heard)
	if err != nil {
		_ = w.Stop()
		unwatch()
		q.cancel()
		return nil, fmt.Errorf("natsfleet: subscribe to the identify announcements: %w", err)
	}
	q.wg.Add(1 + cfg.MaxConcurrency)
	go q.watch()
	for k := range cfg.MaxConcurrency {
		go q.report(k)
	}
	// Every key exists before the first ticket, so that a fleet's first
	// turns are plain compare-and-sets, not creations racing. The keys
	// the watcher's initial values hold are there already: a process
	// joining a fleet creates none, which would be a JetStream write
	// each, one after another, while the fleet starts.
	if err := q.createKeys(ctx); err != nil {
		q.Close(context.Background())
		return nil, err
	}
	return q, nil
}

// createKeys creates the bucket keys the watcher's initial values lack.
func (q *IdentifyQueue) createKeys(ctx context.Context) error {
	select {
	case <-q.primedc:
	case <-ctx.Done():
		return fmt.Errorf("natsfleet: the identify buckets' initial values: %w", ctx.Err())
	}
	type key struct {
		name  string
		value any
	}
	var missing []key
	q.mu.Lock()
	for k := range q.view {
		if q.view[k].issuedRev == 0 {
			missing = append(missing, key{"t" + strconv.Itoa(k), ticketState{}})
		}
		if q.view[k].doneRev == 0 {
			missing = append(missing, key{"d" + strconv.Itoa(k), doneState{}})
		}
	}
	q.mu.Unlock()
	for _, m := range missing {
		data, _ := json.Marshal(m.value)
		if _, err := q.kv.Create(ctx, m.name, data); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("natsfleet: identify bucket key %s: %w", m.name, err)
		}
	}
	return nil
}

// keyValue creates or opens the KV bucket <prefix>_<name>.
func keyValue(ctx context.Context, nc *nats.Conn, prefix, name string, storage jetstream.StorageType) (jetstream.KeyValue, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("natsfleet: JetStream: %w", err)
	}
	bucket := kvName(prefix, name)
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

// kvName is the name of the KV bucket <prefix>_<name>, with the
// characters a bucket name cannot hold replaced.
func kvName(prefix, name string) string {
	return strings.NewReplacer(".", "_", "*", "_", ">", "_").Replace(prefix) + "_" + name
}

// identifyBucket is the name of the identify queue's KV bucket.
func identifyBucket(prefix string) string { return kvName(prefix, "identify") }

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
			if !q.primed {
				q.primed = true
				close(q.primedc)
			}
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
		v.issued, v.issuedRev, v.blocks, v.void = max(v.issued, st.Issued), rev, st.Blocks, st.Void
		q.changedLocked(k)
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
	if st.Done <= v.local {
		// Done here or announced first: the times are already recorded.
		v.done = max(v.done, st.Done)
	} else if st.Done > v.done {
		v.done = st.Done
		q.sawDoneLocked(v, st)
	}
	if q.settleLocked(k) {
		q.kick(k)
	}
	q.changedLocked(k)
}

// sawDoneLocked records the times of another process's report st, seen
// now: the tickets after it count the Interval from its READY if this
// process shares its clock, or else from now.
func (q *IdentifyQueue) sawDoneLocked(v *bucketView, st doneState) {
	v.doneAt = time.Now()
	used := v.usedAt
	switch {
	case st.Used:
		used = v.doneAt
		if st.Clock == q.clock && st.At > 0 {
			if at := time.Unix(0, st.At); at.Before(used) {
				used = at
			}
		}
	case !q.primed:
		// A report from before this process watched: a used ticket
		// may have been done just before it, unseen.
		used = v.doneAt
	}
	if used.After(v.usedAt) {
		v.usedAt = used
	}
}

// heard records another process's announcement of a used ticket done.
// Announcements of one bucket from one process come in the order they
// were sent, each with the READY time of the last used ticket it covers,
// which is later than any ticket's before it: one missed is made up for
// by the next. Only reports with a used ticket are announced, so that no
// announcement moves the bucket past a used ticket without its time.
func (q *IdentifyQueue) heard(m *nats.Msg) {
	k, err := strconv.Atoi(m.Subject[strings.LastIndexByte(m.Subject, '.')+1:])
	var st doneState
	if err != nil || k < 0 || k >= len(q.view) || json.Unmarshal(m.Data, &st) != nil || !st.Used {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	v := &q.view[k]
	if !q.primed || st.Done <= v.last() {
		// Before the initial values, the done key will tell.
		return
	}
	v.local = st.Done
	q.sawDoneLocked(v, st)
	if q.settleLocked(k) {
		q.kick(k)
	}
	q.changedLocked(k)
}

// changedLocked wakes the waiters of bucket k.
func (q *IdentifyQueue) changedLocked(k int) {
	l := &q.lanes[k]
	close(l.changed)
	l.changed = make(chan struct{})
}

// MaxConcurrency is the number of buckets.
func (q *IdentifyQueue) MaxConcurrency() int { return len(q.lanes) }

var (
	errQueueClosed = errors.New("natsfleet: identify queue closed")
	errSkipped     = errors.New("natsfleet: identify ticket skipped")
)

// WaitBucket blocks until the shard's bucket may IDENTIFY, fleet-wide, or
// ctx ends. Call UnlockBucket once its READY arrived (or the connection
// ended).
//
// A turn reserved with ReserveTurn is the one it waits for, if ctx is (or
// derives from) the context ReserveTurn returned.
func (q *IdentifyQueue) WaitBucket(ctx context.Context, shardID int) error {
	k := shardID % len(q.lanes)
	q.mu.Lock()
	var w *waiter
	if r, ok := ctx.Value(reservationKey{}).(*reservation); ok && r.q == q && r.shard == shardID && !r.taken {
		r.taken, w = true, r.w
	} else {
		w = &waiter{}
		q.lanes[k].waiters = append(q.lanes[k].waiters, w)
	}
	q.mu.Unlock()
	err := q.wait(ctx, k, w)
	q.mu.Lock()
	var prev uint64
	var held bool
	if err == nil {
		q.leaveLocked(k, w, false)
		prev, held = q.held[shardID]
		q.held[shardID] = w.ticket
	} else {
		q.leaveLocked(k, w, true)
	}
	q.changedLocked(k)
	q.mu.Unlock()
	q.kick(k)
	if held {
		q.done(k, prev, true) // a second wait without an unlock
	}
	return err
}

// leaveLocked takes w out of bucket k's lane as its call returns; its
// ticket, if it has one, is given up unless the turn was granted.
func (q *IdentifyQueue) leaveLocked(k int, w *waiter, giveUp bool) {
	l := &q.lanes[k]
	w.gone = true
	l.waiters = slices.DeleteFunc(l.waiters, func(o *waiter) bool { return o == w })
	if w.ticket != 0 && w.ticket == l.first {
		l.first = 0 // its block's first turn came or went: take the next
	}
	if giveUp && w.ticket != 0 {
		q.abandoned[k] = append(q.abandoned[k], w.ticket)
		q.settleLocked(k)
	}
}

// ReserveTurn takes the shard's place in its bucket's order (a ticket)
// and returns once its turn is the bucket's next: the ticket before it is
// done (or the blocks ahead went silent for their Interval plus Lease),
// so that the turn comes an Interval after that one's READY at the
// soonest. A shard that reserves dials then, and has that Interval to
// connect, instead of holding a connection open for turns ahead; at a
// fleet's start only the first turns' shards dial.
//
// The context it returns carries the reservation: a WaitBucket for the
// shard under it (or a context derived from it) waits for the reserved
// turn. The func gives the turn up if no such WaitBucket took it (the
// connection ended first); call it when the connection ends. If ctx ends
// first, the turn is given up and ReserveTurn returns ctx's error.
func (q *IdentifyQueue) ReserveTurn(ctx context.Context, shardID int) (context.Context, func(), error) {
	k := shardID % len(q.lanes)
	r := &reservation{q: q, shard: shardID, w: &waiter{}}
	q.mu.Lock()
	q.lanes[k].waiters = append(q.lanes[k].waiters, r.w)
	q.mu.Unlock()
	if err := q.reserve(ctx, k, r.w); err != nil {
		r.cancel()
		return ctx, func() {}, err
	}
	return context.WithValue(ctx, reservationKey{}, r), r.cancel, nil
}

// reservation is a turn ReserveTurn reserved for shard.
type reservation struct {
	q     *IdentifyQueue
	shard int
	w     *waiter
	taken bool // by a WaitBucket or given up; guarded by q.mu
}

type reservationKey struct{}

// cancel gives up the reserved turn unless a WaitBucket took it.
func (r *reservation) cancel() {
	q, k := r.q, r.shard%len(r.q.lanes)
	q.mu.Lock()
	if r.taken {
		q.mu.Unlock()
		return
	}
	r.taken = true
	q.leaveLocked(k, r.w, true)
	q.changedLocked(k)
	q.mu.Unlock()
	q.kick(k)
}

// reserve gets w a ticket of bucket k and waits until it is the next, or
// until the turn comes without that because the blocks ahead went silent
// (see turnLocked): a holder that died does not hold the shards behind it
// back from dialing for longer than it holds their turns. A ticket the
// bucket went past returns too; WaitBucket takes another for it.
func (q *IdentifyQueue) reserve(ctx context.Context, k int, w *waiter) error {
	if err := q.ticket(ctx, k, w); err != nil {
		return err
	}
	var timer turnTimer
	defer timer.stop()
	for {
		q.mu.Lock()
		next := w.ticket <= q.view[k].last()+1
		at, skipped := q.turnLocked(k, w.ticket, w.taken)
		changed := q.lanes[k].changed
		q.mu.Unlock()
		wait := time.Until(at)
		if next || skipped || wait <= 0 {
			return nil
		}
		if err := q.waitTimeOrChange(ctx, &timer, wait, changed); err != nil {
			return err
		}
	}
}

// wait gets w a ticket of bucket k (see ticket) and waits for its turn.
func (q *IdentifyQueue) wait(ctx context.Context, k int, w *waiter) error {
	for {
		if err := q.ticket(ctx, k, w); err != nil {
			return err
		}
		q.mu.Lock()
		ticket, taken := w.ticket, w.taken
		q.mu.Unlock()
		err := q.await(ctx, k, ticket, taken)
		if err != errSkipped {
			return err
		}
		// The tickets after this one went on without it (its lease ran
		// out): its turn is gone, take another.
		q.mu.Lock()
		if l := &q.lanes[k]; l.first == ticket {
			l.first = 0
		}
		w.ticket = 0
		q.mu.Unlock()
	}
}

// ticket returns once w has a ticket of bucket k, taking a block for
// every waiter of the lane without one if nobody is.
func (q *IdentifyQueue) ticket(ctx context.Context, k int, w *waiter) error {
	for {
		q.mu.Lock()
		l := &q.lanes[k]
		var batch []*waiter
		if w.ticket == 0 && !l.taking && l.first == 0 {
			l.taking = true
			for _, o := range l.waiters {
				if o.ticket == 0 {
					batch = append(batch, o)
				}
			}
		}
		ticket, changed := w.ticket, l.changed
		var taken chan error
		if batch != nil {
			if q.closed {
				l.taking = false
				q.mu.Unlock()
				return errQueueClosed
			}
			// The block is taken on a goroutine of the queue's: a caller
			// that leaves meanwhile does not cut the compare-and-set
			// short, which JetStream may have applied all the same, so
			// its tickets are known and given up rather than lost to the
			// fleet until their Lease (Close waits for it).
			taken = make(chan error, 1)
			q.wg.Go(func() { taken <- q.takeBlock(ctx, k, batch) })
		}
		q.mu.Unlock()
		if ticket != 0 {
			return nil
		}
		if taken != nil {
			changed = nil // the block's own result says when to look again
		}
		select {
		case err := <-taken:
			if err != nil {
				return err
			}
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-q.stop:
			return errQueueClosed
		}
	}
}

// takeBlock takes a block of bucket k's tickets for batch, bounded by
// OpTimeout but not by the end of ctx, and hands them out: the tickets of
// the waiters whose calls returned meanwhile are given up.
func (q *IdentifyQueue) takeBlock(ctx context.Context, k int, batch []*waiter) error {
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), q.cfg.OpTimeout)
	defer cancel()
	first, err := q.take(tctx, k, len(batch))
	now := time.Now()
	q.mu.Lock()
	l := &q.lanes[k]
	l.taking = false
	if err == nil {
		l.first = first
		for i, o := range batch {
			o.ticket, o.taken = first+uint64(i), now
			if o.gone { // its call returned while the block was taken
				q.abandoned[k] = append(q.abandoned[k], o.ticket)
				if o.ticket == first {
					l.first = 0
				}
			}
		}
		q.settleLocked(k)
	}
	q.changedLocked(k)
	q.mu.Unlock()
	q.kick(k)
	return err
}

// take takes bucket k's next n tickets and returns the first.
func (q *IdentifyQueue) take(ctx context.Context, k, n int) (uint64, error) {
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
		// A block before the done key's next ticket is over for every
		// process that reads this value: the watcher brings the keys in
		// the order they were written.
		blocks := make([]uint64, 0, len(v.blocks)+1)
		for _, b := range v.blocks {
			if b > v.done+1 {
				blocks = append(blocks, b)
			}
		}
		q.mu.Unlock()
		first := v.issued + 1
		blocks = append(blocks, first)
		if len(blocks) > maxBlocks {
			blocks = blocks[len(blocks)-maxBlocks:]
		}
		st := ticketState{Issued: v.issued + uint64(n), Blocks: blocks, Void: v.voidAfterDone()}
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
			return first, nil
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
		v, changed := q.view[k], q.lanes[k].changed
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

// waitChange waits until changed is closed, ctx ends or the queue closes.
func (q *IdentifyQueue) waitChange(ctx context.Context, changed <-chan struct{}) error {
	return q.waitOn(ctx, nil, changed)
}

// waitOn waits until tick (nil: never) fires, changed is closed, ctx
// ends or the queue closes.
func (q *IdentifyQueue) waitOn(ctx context.Context, tick <-chan time.Time, changed <-chan struct{}) error {
	select {
	case <-tick:
		return nil
	case <-changed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-q.stop:
		return errQueueClosed
	}
}

func (q *IdentifyQueue) waitPrimed(ctx context.Context) error {
	for {
		q.mu.Lock()
		primed, changed := q.primed, q.primedc
		q.mu.Unlock()
		if primed {
			return nil
		}
		if err := q.waitChange(ctx, changed); err != nil {
			return err
		}
	}
}

// await waits for ticket's turn in bucket k: the previous ticket done and
// an Interval since a used one was, or, without that, an Interval plus
// Lease per block ahead since the last ticket done or this one was taken.
// It returns errSkipped if a later ticket was done first: the bucket went
// on without this one.
func (q *IdentifyQueue) await(ctx context.Context, k int, ticket uint64, taken time.Time) error {
	var timer turnTimer
	defer timer.stop()
	for {
		q.mu.Lock()
		at, skipped := q.turnLocked(k, ticket, taken)
		changed := q.lanes[k].changed
		q.mu.Unlock()
		if skipped {
			return errSkipped
		}
		wait := time.Until(at)
		if wait <= 0 {
			return nil
		}
		if wait <= fineWait {
			// The turn's last moment is slept precisely (see sleepFine),
			// then looked at again.
			sleepFine(wait)
			continue
		}
		if err := q.waitTimeOrChange(ctx, &timer, wait-fineWait, changed); err != nil {
			return err
		}
	}
}

// waitTimeOrChange waits until d has passed on timer, changed is
// closed, ctx ends or the queue closes.
func (q *IdentifyQueue) waitTimeOrChange(ctx context.Context, timer *turnTimer, d time.Duration, changed <-chan struct{}) error {
	if timer.t == nil {
		timer.t = time.NewTimer(d)
	} else {
		timer.t.Reset(d)
	}
	return q.waitOn(ctx, timer.t.C, changed)
}

// turnTimer is a wait's timer, made on first use and reset after.
type turnTimer struct{ t *time.Timer }

func (t *turnTimer) stop() {
	if t.t != nil {
		t.t.Stop()
	}
}

// fineWait is how much of a wait for a turn is slept by sleepFine rather
// than on a Go timer, which may wake a millisecond late: long enough to
// cover that, short enough that a cancelled wait returns at once but for
// it.
const fineWait = 2 * time.Millisecond

// turnLocked is when ticket's turn in bucket k comes, as far as this
// process knows, or whether the bucket went past it.
func (q *IdentifyQueue) turnLocked(k int, ticket uint64, taken time.Time) (at time.Time, skipped bool) {
	v := &q.view[k]
	d := v.last()
	if d >= ticket {
		return time.Time{}, true
	}
	if d+1 == ticket {
		return v.usedAt.Add(q.cfg.Interval), false
	}
	// The blocks ahead began no earlier than the last ticket done or our
	// ticket, each no earlier than an Interval plus Lease after the one
	// before: past that, each is done.
	ahead := 1 // the block of d+1
	for _, b := range v.blocks {
		if b > d+1 && b < ticket && !v.isVoid(b) {
			ahead++
		}
	}
	at = v.doneAt
	if taken.After(at) {
		at = taken
	}
	return at.Add(time.Duration(ahead) * (q.cfg.Interval + q.cfg.Lease)), false
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
		q.done(shardID%len(q.lanes), ticket, true)
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

// done records ticket of bucket k done here, used if an IDENTIFY went out
// on it, and queues its report.
func (q *IdentifyQueue) done(k int, ticket uint64, used bool) {
	q.mu.Lock()
	q.doneLocked(k, ticket, used, time.Now())
	q.settleLocked(k)
	q.changedLocked(k)
	q.mu.Unlock()
	q.kick(k)
}

// doneLocked records ticket of bucket k done at now, here: the tickets
// after it in this process count from now without waiting for the report.
func (q *IdentifyQueue) doneLocked(k int, ticket uint64, used bool, now time.Time) {
	v := &q.view[k]
	if ticket > v.last() {
		v.doneAt = now
	}
	if used && now.After(v.usedAt) {
		v.usedAt = now
	}
	v.local = max(v.local, ticket)
	r := &q.reports[k]
	r.Done = max(r.Done, ticket)
	if used {
		r.Used, r.At, r.Clock = true, now.UnixNano(), q.clock
	}
}

// settleLocked records done, without an IDENTIFY, the tickets of bucket k
// given up here whose previous ticket is done: until then, the one before
// may be identifying, and the one after must still wait for it. It
// reports whether there were any.
func (q *IdentifyQueue) settleLocked(k int) bool {
	settled := false
	now := time.Now()
	for {
		progress := false
		kept := q.abandoned[k][:0]
		for _, t := range q.abandoned[k] {
			if t <= q.view[k].last()+1 {
				q.doneLocked(k, t, false, now)
				progress = true
			} else {
				kept = append(kept, t)
			}
		}
		q.abandoned[k] = kept
		if !progress {
			return settled
		}
		settled = true
	}
}

// kick wakes the reporter of bucket k.
func (q *IdentifyQueue) kick(k int) {
	select {
	case q.wake[k] <- struct{}{}:
	default:
	}
}

// report writes the queued reports of bucket k until Close. Each bucket
// has its own, so that a report never waits behind another bucket's.
func (q *IdentifyQueue) report(k int) {
	defer q.wg.Done()
	for {
		q.flush(q.ctx, k)
		select {
		case <-q.wake[k]:
		case <-q.stop:
			return
		}
	}
}

// flush writes the queued report of bucket k.
func (q *IdentifyQueue) flush(ctx context.Context, k int) {
	q.mu.Lock()
	r := q.reports[k]
	q.reports[k] = doneState{}
	q.mu.Unlock()
	if r.Done == 0 {
		return
	}
	if r.Used {
		// The others hear this before the done key's update.
		if data, err := json.Marshal(r); err == nil {
			_ = q.nc.Publish(q.subject+"."+strconv.Itoa(k), data)
		}
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
		q.closed = true
		now := time.Now()
		for shard, ticket := range q.held {
			// Its IDENTIFY may have gone out, and been read, until now:
			// the next turn counts from now, even if a report of an
			// earlier READY waits. The tickets given up behind it are
			// done with it.
			k := shard % len(q.lanes)
			q.doneLocked(k, ticket, true, now)
			r := &q.reports[k]
			r.At = now.UnixNano()
			q.settleLocked(k)
		}
		clear(q.held)
		q.mu.Unlock()
		q.cancel()
		_ = q.sub.Unsubscribe()
		q.wg.Wait() // the reporters and the watch loop
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, q.cfg.OpTimeout)
			defer cancel()
		}
		for k := range q.reports {
			q.flush(ctx, k)
		}
		for k := range q.abandoned {
			q.voidGivenUp(ctx, k)
		}
		_ = q.watcher.Stop()
		q.unwatch()
	})
}

// voidGivenUp records as void in bucket k's issued key the tickets given
// up here that could not be done yet, the tickets ahead of them not
// being done: without it, the fleet would wait out their Lease. It runs
// in Close, once the watcher no longer updates the view: a lost
// compare-and-set reads the key again.
func (q *IdentifyQueue) voidGivenUp(ctx context.Context, k int) {
	q.mu.Lock()
	tickets := slices.Clone(q.abandoned[k])
	q.mu.Unlock()
	if len(tickets) == 0 {
		return
	}
	slices.Sort(tickets)
	var ours []ticketRange
	for _, t := range tickets {
		if n := len(ours); n > 0 && ours[n-1].To+1 == t {
			ours[n-1].To = t
		} else {
			ours = append(ours, ticketRange{From: t, To: t})
		}
	}
	key := "t" + strconv.Itoa(k)
	for ctx.Err() == nil {
		q.mu.Lock()
		v := q.view[k]
		q.mu.Unlock()
		void := append(v.voidAfterDone(), ours...)
		slices.SortFunc(void, func(a, b ticketRange) int { return cmp.Compare(a.From, b.From) })
		if len(void) > maxBlocks {
			void = void[len(void)-maxBlocks:]
		}
		st := ticketState{Issued: v.issued, Blocks: v.blocks, Void: void}
		value, _ := json.Marshal(st)
		rev, err := q.kv.Update(ctx, key, value, v.issuedRev)
		if err == nil {
			q.learnIssued(k, st, rev)
			return
		}
		e, err := q.kv.Get(ctx, key)
		if err != nil {
			return // left to the Lease
		}
		q.learn(e)
	}
}
