package shardgroup

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
)

// Pacer paces the connections of shards that will IDENTIFY, so that a
// fleet's start does not dial every shard at once. At most ahead shards
// (see [NewPacer]) of a bucket (shard ID % buckets: Discord's
// max_concurrency) are
// connecting, or connected and waiting for their turn in the identify
// queue, at a time; the bucket's next shard dials when one of them is
// granted its turn, or its connection ends first. A bucket's turns come
// one interval apart, so a shard that dials then has at least an
// interval to connect before its turn can come, and the gateway (and the
// process) take a bucket's handshakes one interval apart instead of every
// shard's in the first moments, when the first turns' IDENTIFYs would
// wait behind them. Shards waiting for a place take it in the order of
// their IDs. A connection that RESUMEs a session is not paced.
//
// One Pacer serves every group of a bot, as the identify queue does
// (Config.Pacer). It starts no goroutine and is safe for concurrent use.
type Pacer struct {
	ahead   int
	mu      sync.Mutex // guards buckets
	buckets []pacerBucket
}

type pacerBucket struct {
	taken   int            // places taken
	waiting []*pacerWaiter // in the order of their shard IDs
}

type pacerWaiter struct {
	shard int
	given chan struct{} // closed when a place is given to it
}

// NewPacer returns a pacer for buckets buckets (the bot's
// max_concurrency) that lets ahead shards of each connect ahead of their
// turn.
func NewPacer(buckets, ahead int) (*Pacer, error) {
	if buckets < 1 {
		return nil, fmt.Errorf("shardgroup: NewPacer: buckets is %d: give the bot's max_concurrency (>= 1)", buckets)
	}
	if ahead < 1 {
		return nil, fmt.Errorf("shardgroup: NewPacer: ahead is %d: let at least 1 shard of a bucket connect", ahead)
	}
	return &Pacer{ahead: ahead, buckets: make([]pacerBucket, buckets)}, nil
}

// errStopped ends a shard's wait for a place when the shard is stopped.
var errStopped = errors.New("shardgroup: shard stopped before it connected")

// wait takes a place for shard in its bucket. It returns ctx's error, or
// errStopped once stop is closed, if either comes first; then no place
// is taken.
func (p *Pacer) wait(ctx context.Context, stop <-chan struct{}, shard int) error {
	b := &p.buckets[shard%len(p.buckets)]
	p.mu.Lock()
	if b.taken < p.ahead && len(b.waiting) == 0 {
		b.taken++
		p.mu.Unlock()
		return nil
	}
	w := &pacerWaiter{shard: shard, given: make(chan struct{})}
	i, _ := slices.BinarySearchFunc(b.waiting, shard, func(o *pacerWaiter, id int) int { return cmp.Compare(o.shard, id) })
	b.waiting = slices.Insert(b.waiting, i, w)
	p.mu.Unlock()
	var err error
	select {
	case <-w.given:
		return nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-stop:
		err = errStopped
	}
	p.mu.Lock()
	select {
	case <-w.given:
		// Given as the wait ended: it goes to the next one.
		p.mu.Unlock()
		p.release(shard)
		return err
	default:
	}
	b.waiting = slices.DeleteFunc(b.waiting, func(o *pacerWaiter) bool { return o == w })
	p.mu.Unlock()
	return err
}

// release gives back a place of shard's bucket: to the first shard
// waiting, if any.
func (p *Pacer) release(shard int) {
	b := &p.buckets[shard%len(p.buckets)]
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(b.waiting) > 0 {
		w := b.waiting[0]
		b.waiting = slices.Delete(b.waiting, 0, 1)
		close(w.given)
		return
	}
	b.taken--
}
