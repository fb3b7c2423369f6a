package natsfleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	// Lease bounds how long a bucket stays taken by a process that took
	// it and then went silent (crashed, cut off): after Lease plus
	// Interval another process takes it. It must cover the time from
	// WaitBucket's return to the IDENTIFY being sent (default 10 s).
	Lease time.Duration
	// MaxClockSkew is the largest difference between two hosts' clocks
	// (default 1 s). It only matters for a bucket released long ago;
	// a fresh release is timed on the waiter's own clock.
	MaxClockSkew time.Duration
	// OpTimeout bounds one key-value operation when the caller gives no
	// deadline: UnlockBucket and Close (default 5 s).
	OpTimeout time.Duration
}

// IdentifyQueue is a runtime.IdentifyQueue shared by every process of a
// fleet through JetStream KV: one IDENTIFY per bucket (shard_id %
// max_concurrency) per Interval fleet-wide, every bucket busy at once.
//
// Each bucket is a key. WaitBucket takes it with a compare-and-set as soon
// as its holder releases it, then waits for the Interval on its own clock,
// counted from the moment it saw the release; UnlockBucket (after READY)
// releases it. Processes watch the keys, so a waiter reacts to a release
// without polling. In one process the shards of a bucket take turns
// locally first, so only one of them competes for the key.
type IdentifyQueue struct {
	cfg     IdentifyConfig
	kv      jetstream.KeyValue
	watcher jetstream.KeyWatcher
	unwatch context.CancelFunc // ends the watcher's context
	id      string
	done    chan struct{} // closed when the watch loop has returned
	stop    chan struct{} // closed by Close

	mu      sync.Mutex // guards entries, changed
	entries []bucketEntry
	changed chan struct{} // closed when an entry changes
	primed  bool          // the watcher delivered the initial values

	buckets []*queueBucket
}

type bucketEntry struct {
	state    identifyState
	revision uint64
	seen     time.Time // when this process saw this revision
	exists   bool
}

// identifyState is a bucket key's value.
type identifyState struct {
	Holder string `json:"holder,omitempty"` // the holding queue; empty when free
	At     int64  `json:"at"`               // unix ns, by the writer's clock: taken or released
	Lease  int64  `json:"lease,omitempty"`  // ns; the holder's lease
}

type queueBucket struct {
	turn     chan struct{} // one token: whoever has it may compete for the key
	mu       sync.Mutex    // guards revision, held
	revision uint64        // our hold's revision
	held     bool
}

// NewIdentifyQueue creates (or opens) the fleet's identify bucket on nc
// and starts watching it. Close it when done (the runtime closes the
// queue it is given when Run returns).
func NewIdentifyQueue(ctx context.Context, nc *nats.Conn, cfg IdentifyConfig) (*IdentifyQueue, error) {
	if cfg.MaxConcurrency < 1 || cfg.Interval <= 0 {
		return nil, fmt.Errorf("natsfleet: identify queue needs MaxConcurrency >= 1 and Interval > 0, got %d and %s", cfg.MaxConcurrency, cfg.Interval)
	}
	if cfg.Lease < 0 || cfg.MaxClockSkew < 0 || cfg.OpTimeout < 0 {
		return nil, errors.New("natsfleet: IdentifyConfig: Lease, MaxClockSkew and OpTimeout must be >= 0 (0 for the default)")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "fleet"
	}
	if cfg.Lease == 0 {
		cfg.Lease = 10 * time.Second
	}
	if cfg.MaxClockSkew == 0 {
		cfg.MaxClockSkew = time.Second
	}
	if cfg.OpTimeout == 0 {
		cfg.OpTimeout = 5 * time.Second
	}
	kv, err := keyValue(ctx, nc, cfg.Prefix, "identify", jetstream.MemoryStorage)
	if err != nil {
		return nil, err
	}
	q := &IdentifyQueue{
		cfg:     cfg,
		kv:      kv,
		id:      nats.NewInbox()[len(nats.InboxPrefix):],
		done:    make(chan struct{}),
		stop:    make(chan struct{}),
		entries: make([]bucketEntry, cfg.MaxConcurrency),
		changed: make(chan struct{}),
		buckets: make([]*queueBucket, cfg.MaxConcurrency),
	}
	for i := range q.buckets {
		b := &queueBucket{turn: make(chan struct{}, 1)}
		b.turn <- struct{}{}
		q.buckets[i] = b
	}
	wctx, unwatch := context.WithCancel(context.Background())
	w, err := kv.WatchAll(wctx)
	if err != nil {
		unwatch()
		return nil, fmt.Errorf("natsfleet: watch the identify buckets: %w", err)
	}
	q.watcher, q.unwatch = w, unwatch
	go q.watch()
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
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket, History: 1, Storage: storage})
	if err != nil {
		return nil, fmt.Errorf("natsfleet: key-value bucket %s: %w (is JetStream enabled on the server?)", bucket, err)
	}
	return kv, nil
}

// watch keeps entries up to date until Close stops the watcher.
func (q *IdentifyQueue) watch() {
	defer close(q.done)
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
		q.mu.Lock()
		if e == nil {
			q.primed = true
		} else if i, err := strconv.Atoi(strings.TrimPrefix(e.Key(), "b")); err == nil && i >= 0 && i < len(q.entries) {
			var st identifyState
			if json.Unmarshal(e.Value(), &st) == nil && e.Revision() > q.entries[i].revision {
				q.entries[i] = bucketEntry{state: st, revision: e.Revision(), seen: time.Now(), exists: true}
			}
		}
		close(q.changed)
		q.changed = make(chan struct{})
		q.mu.Unlock()
	}
}

// MaxConcurrency is the number of buckets.
func (q *IdentifyQueue) MaxConcurrency() int { return len(q.buckets) }

// WaitBucket blocks until the shard's bucket may IDENTIFY, fleet-wide, or
// ctx ends.
func (q *IdentifyQueue) WaitBucket(ctx context.Context, shardID int) error {
	k := shardID % len(q.buckets)
	b := q.buckets[k]
	select {
	case <-b.turn:
	case <-ctx.Done():
		return ctx.Err()
	case <-q.stop:
		return errors.New("natsfleet: identify queue closed")
	}
	if err := q.take(ctx, k, b); err != nil {
		b.turn <- struct{}{}
		return err
	}
	return nil
}

// take takes bucket k's key and waits for its turn.
func (q *IdentifyQueue) take(ctx context.Context, k int, b *queueBucket) error {
	key := "b" + strconv.Itoa(k)
	for {
		q.mu.Lock()
		e, primed, changed := q.entries[k], q.primed, q.changed
		q.mu.Unlock()
		if !primed {
			if err := q.waitChange(ctx, changed, time.Time{}); err != nil {
				return err
			}
			continue
		}
		now := time.Now()
		mine := q.encode(identifyState{Holder: q.id, At: now.UnixNano(), Lease: int64(q.cfg.Lease)})
		var notBefore time.Time
		var rev uint64
		var err error
		switch {
		case !e.exists:
			rev, err = q.kv.Create(ctx, key, mine)
		case e.state.Holder == "":
			// Free: our turn comes an Interval after the release, as we
			// saw it (or, for an old release, by its stamp).
			notBefore = e.seen
			if stamp := time.Unix(0, e.state.At).Add(q.cfg.MaxClockSkew); stamp.Before(notBefore) {
				notBefore = stamp
			}
			notBefore = notBefore.Add(q.cfg.Interval)
			rev, err = q.kv.Update(ctx, key, mine, e.revision)
		default:
			// Taken: wait for its release, or for its lease to run out.
			expiry := e.seen.Add(time.Duration(e.state.Lease) + q.cfg.Interval)
			if now.Before(expiry) {
				if err := q.waitChange(ctx, changed, expiry); err != nil {
					return err
				}
				continue
			}
			rev, err = q.kv.Update(ctx, key, mine, e.revision)
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, jetstream.ErrKeyExists) || strings.Contains(err.Error(), "wrong last sequence") {
				// Another process was first: wait for its write to arrive.
				if err := q.waitNewer(ctx, k, e.revision); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("natsfleet: identify bucket %d: %w", k, err)
		}
		b.mu.Lock()
		b.revision, b.held = rev, true
		b.mu.Unlock()
		if wait := time.Until(notBefore); wait > 0 {
			t := time.NewTimer(wait)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
				q.release(k, b, e.state.At) // give the turn back, release time unchanged
				return ctx.Err()
			}
		}
		return nil
	}
}

func (q *IdentifyQueue) waitChange(ctx context.Context, changed <-chan struct{}, until time.Time) error {
	var timer <-chan time.Time
	if !until.IsZero() {
		t := time.NewTimer(time.Until(until))
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-changed:
	case <-timer:
	case <-ctx.Done():
		return ctx.Err()
	case <-q.stop:
		return errors.New("natsfleet: identify queue closed")
	}
	return nil
}

// waitNewer waits until bucket k's entry is newer than revision.
func (q *IdentifyQueue) waitNewer(ctx context.Context, k int, revision uint64) error {
	for {
		q.mu.Lock()
		e, changed := q.entries[k], q.changed
		q.mu.Unlock()
		if e.revision > revision {
			return nil
		}
		if err := q.waitChange(ctx, changed, time.Time{}); err != nil {
			return err
		}
	}
}

func (q *IdentifyQueue) encode(st identifyState) []byte {
	data, _ := json.Marshal(st)
	return data
}

// UnlockBucket releases the shard's bucket after its READY: the next
// IDENTIFY of the bucket, in any process, waits an Interval from now.
func (q *IdentifyQueue) UnlockBucket(shardID int) {
	k := shardID % len(q.buckets)
	b := q.buckets[k]
	if q.release(k, b, time.Now().UnixNano()) {
		b.turn <- struct{}{}
	}
}

// release writes bucket k free with release time at, if this queue holds
// it; it reports whether it did hold it.
func (q *IdentifyQueue) release(k int, b *queueBucket, at int64) bool {
	b.mu.Lock()
	rev, held := b.revision, b.held
	b.held = false
	b.mu.Unlock()
	if !held {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), q.cfg.OpTimeout)
	defer cancel()
	// A failure means another process took the bucket after our lease:
	// nothing to release then.
	_, _ = q.kv.Update(ctx, "b"+strconv.Itoa(k), q.encode(identifyState{At: at}), rev)
	return true
}

// Close releases the buckets this queue holds and stops watching. It does
// not close the connection.
func (q *IdentifyQueue) Close(ctx context.Context) {
	select {
	case <-q.stop:
		return
	default:
	}
	for k, b := range q.buckets {
		q.release(k, b, time.Now().UnixNano())
	}
	close(q.stop)
	_ = q.watcher.Stop()
	q.unwatch()
	select {
	case <-q.done:
	case <-ctx.Done():
	}
}
