package runtime

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/gofleet/fleet/internal/clock"
	"github.com/gofleet/fleet/shardgroup"
)

// IdentifyQueue spaces IDENTIFYs by Discord's rule: one per bucket
// (shard_id % max_concurrency) per interval. It is disgo's
// sharding.RateLimiter; WaitBucket comes right before an IDENTIFY is
// sent, UnlockBucket when its READY arrives. One queue serves every cluster of a
// runtime, so all buckets are busy at once. A cross-host queue can
// replace it through Config.IdentifyQueue.
type IdentifyQueue interface {
	WaitBucket(ctx context.Context, shardID int) error
	UnlockBucket(shardID int)
	Close(ctx context.Context)
}

// LocalIdentifyQueue is the in-process IdentifyQueue. It starts no
// goroutine: waits are computed from the bucket's last IDENTIFY.
type LocalIdentifyQueue struct {
	interval time.Duration
	buckets  []*identifyBucket
	clock    clock.Clock // the real clock; tests step a fake one
}

type identifyBucket struct {
	turn chan struct{} // holds one token: whoever has it may identify next
	mu   sync.Mutex    // guards next
	next time.Time
}

// NewLocalIdentifyQueue returns a queue with maxConcurrency buckets and
// interval between two IDENTIFYs of a bucket. The interval counts from
// the previous IDENTIFY's READY, when the gateway has surely read it.
func NewLocalIdentifyQueue(maxConcurrency int, interval time.Duration) (*LocalIdentifyQueue, error) {
	if maxConcurrency < 1 || interval <= 0 {
		return nil, fmt.Errorf("runtime: identify queue needs max_concurrency >= 1 and an interval > 0, got %d and %s", maxConcurrency, interval)
	}
	q := &LocalIdentifyQueue{interval: interval, buckets: make([]*identifyBucket, maxConcurrency), clock: clock.Real{}}
	for i := range q.buckets {
		b := &identifyBucket{turn: make(chan struct{}, 1)}
		b.turn <- struct{}{}
		q.buckets[i] = b
	}
	return q, nil
}

// MaxConcurrency is the number of buckets.
func (q *LocalIdentifyQueue) MaxConcurrency() int { return len(q.buckets) }

// WaitBucket blocks until the shard's bucket may IDENTIFY, or ctx ends.
func (q *LocalIdentifyQueue) WaitBucket(ctx context.Context, shardID int) error {
	b := q.buckets[shardID%len(q.buckets)]
	select {
	case <-b.turn:
	case <-ctx.Done():
		return ctx.Err()
	}
	b.mu.Lock()
	wait := b.next.Sub(q.clock.Now())
	b.mu.Unlock()
	if wait > 0 {
		t := q.clock.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C():
		case <-ctx.Done():
			b.turn <- struct{}{}
			return ctx.Err()
		}
	}
	return nil
}

// UnlockBucket records that the shard's IDENTIFY was answered and lets
// the bucket's next waiter go after the interval.
func (q *LocalIdentifyQueue) UnlockBucket(shardID int) {
	b := q.buckets[shardID%len(q.buckets)]
	b.mu.Lock()
	b.next = q.clock.Now().Add(q.interval)
	b.mu.Unlock()
	select {
	case b.turn <- struct{}{}:
	default: // unlocked without a wait: nothing to give back
	}
}

// Close does nothing: the queue holds no goroutine.
func (q *LocalIdentifyQueue) Close(context.Context) {}

// pacer paces the connections of the shards that will IDENTIFY, mc
// being the bot's max_concurrency (see Config.ConnectAhead); nil when
// they connect at once.
func (r *Runtime) pacer(mc int) (*shardgroup.Pacer, error) {
	ahead := r.cfg.ConnectAhead
	if ahead < 0 {
		return nil, nil
	}
	if ahead == 0 {
		ahead = 1
	}
	return shardgroup.NewPacer(mc, ahead)
}
