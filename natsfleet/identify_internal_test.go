package natsfleet

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestIdentifyQueueDeadBlock: a process that took a block of three
// tickets and died delays its bucket by one Interval plus Lease, as one
// dead ticket would, not by one per ticket.
func TestIdentifyQueueDeadBlock(t *testing.T) {
	t.Parallel()
	srv, err := StartServer(ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close) // after the queues' and connections' cleanups
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := IdentifyConfig{Prefix: "deadblock", MaxConcurrency: 1, Interval: 20 * time.Millisecond, Lease: time.Second}
	queue := func() *IdentifyQueue {
		nc, err := srv.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		q, err := NewIdentifyQueue(ctx, nc, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { q.Close(ctx) })
		return q
	}
	dead, live := queue(), queue()
	first, err := dead.take(ctx, 0, 3) // three shards waiting, then silence
	if err != nil {
		t.Fatal(err)
	}
	taken := time.Now()
	if first != 1 {
		t.Fatalf("the first block begins at ticket %d, want 1", first)
	}
	if err := live.WaitBucket(ctx, 0); err != nil {
		t.Fatal(err)
	}
	waited := time.Since(taken)
	live.UnlockBucket(0)
	lease := cfg.Interval + cfg.Lease
	if waited < lease {
		t.Errorf("the turn after a dead block came %v after it was taken, before its lease (%v) ran out", waited, lease)
	}
	// One lease per ticket would be 3 s.
	if waited >= 2*lease {
		t.Errorf("the turn after a dead block of 3 tickets came %v after it was taken: more than one lease (%v) per block", waited, lease)
	}
}

// TestIdentifyQueueBlockPassesLocally: the turns of a block pass from one
// shard's READY to the next an Interval later inside the process, with
// no trip through NATS: they still come with its connection closed.
func TestIdentifyQueueBlockPassesLocally(t *testing.T) {
	t.Parallel()
	srv, err := StartServer(ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := IdentifyConfig{Prefix: "local", MaxConcurrency: 1, Interval: 20 * time.Millisecond, Lease: time.Hour}
	queue := func() (*IdentifyQueue, *nats.Conn) {
		nc, err := srv.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		q, err := NewIdentifyQueue(ctx, nc, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { q.Close(ctx) })
		return q, nc
	}
	other, _ := queue()
	q, nc := queue()
	// until waits for the lane of q to be so: it looks again when the
	// lane changes, and every millisecond for the waiters that join it,
	// which do not change it.
	until := func(what string, ok func(l *lane) bool) {
		t.Helper()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			q.mu.Lock()
			done, changed := ok(&q.lanes[0]), q.lanes[0].changed
			q.mu.Unlock()
			if done {
				return
			}
			select {
			case <-changed:
			case <-tick.C:
			case <-ctx.Done():
				t.Fatalf("waiting for %s: %v", what, ctx.Err())
			}
		}
	}

	if err := other.WaitBucket(ctx, 9); err != nil { // ticket 1, elsewhere
		t.Fatal(err)
	}
	type result struct {
		shard int
		err   error
	}
	results := make(chan result, 3)
	wait := func(shard int) { results <- result{shard, q.WaitBucket(ctx, shard)} }
	next := func() int {
		t.Helper()
		select {
		case r := <-results:
			if r.err != nil {
				t.Fatalf("shard %d: %v", r.shard, r.err)
			}
			return r.shard
		case <-ctx.Done():
			t.Fatal("no turn came")
		}
		return -1
	}
	go wait(0)
	until("a block for shard 0", func(l *lane) bool { return l.first != 0 })
	go wait(1)
	go wait(2)
	until("shards 1 and 2 waiting", func(l *lane) bool { return len(l.waiters) == 3 })
	other.UnlockBucket(9) // ticket 1's READY: shard 0's turn, then one block for 1 and 2
	if s := next(); s != 0 {
		t.Fatalf("shard %d went first, want 0", s)
	}
	until("one block for shards 1 and 2", func(l *lane) bool {
		return len(l.waiters) == 2 && l.waiters[0].ticket != 0 && l.waiters[1].ticket != 0
	})
	nc.Close() // no more reports, nor news from the others

	prev := 0
	for range 2 {
		unlocked := time.Now()
		q.UnlockBucket(prev) // its READY
		prev = next()
		if gap := time.Since(unlocked); gap < cfg.Interval {
			t.Errorf("shard %d's turn came %v after the READY before it, less than the interval %v", prev, gap, cfg.Interval)
		}
	}
	q.UnlockBucket(prev)
}

// TestIdentifyQueueTurnPassesOnAnnouncement: a used ticket done is
// announced on its subject, and the next turn, in another process, comes
// an Interval after the announced READY, before the done key says so.
func TestIdentifyQueueTurnPassesOnAnnouncement(t *testing.T) {
	t.Parallel()
	srv, err := StartServer(ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := IdentifyConfig{Prefix: "announce", MaxConcurrency: 1, Interval: 20 * time.Millisecond, Lease: time.Hour}
	conn := func() *nats.Conn {
		nc, err := srv.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	queue := func() *IdentifyQueue {
		q, err := NewIdentifyQueue(ctx, conn(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { q.Close(ctx) })
		return q
	}
	a, b := queue(), queue()
	watch := conn()
	heard, err := watch.SubscribeSync(a.subject + ".*")
	if err != nil {
		t.Fatal(err)
	}
	if err := watch.Flush(); err != nil {
		t.Fatal(err)
	}

	if err := a.WaitBucket(ctx, 0); err != nil { // ticket 1
		t.Fatal(err)
	}
	berr := make(chan error, 1)
	go func() { berr <- b.WaitBucket(ctx, 1) }() // ticket 2
	for {
		b.mu.Lock()
		taken := len(b.lanes[0].waiters) == 1 && b.lanes[0].waiters[0].ticket == 2
		changed := b.lanes[0].changed
		b.mu.Unlock()
		if taken {
			break
		}
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatal("b took no ticket")
		}
	}

	// Ticket 1's READY, announced alone: the done key does not move.
	ready := time.Now()
	data, _ := json.Marshal(doneState{Done: 1, Used: true, At: ready.UnixNano(), Clock: a.clock})
	if err := watch.Publish(a.subject+".0", data); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-berr:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("the turn after an announced READY did not come")
	}
	if gap := time.Since(ready); gap < cfg.Interval {
		t.Errorf("the turn came %v after the announced READY, less than the interval %v", gap, cfg.Interval)
	}
	e, err := b.kv.Get(ctx, "d0")
	if err != nil {
		t.Fatal(err)
	}
	var st doneState
	if err := json.Unmarshal(e.Value(), &st); err != nil || st.Done != 0 {
		t.Fatalf("done key %s (%v): the turn did not come on the announcement alone", e.Value(), err)
	}
	if _, err := heard.NextMsg(10 * time.Second); err != nil { // the test's own
		t.Fatal(err)
	}

	// A READY reported by the queue is announced.
	a.UnlockBucket(0)
	m, err := heard.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no announcement of ticket 1 done: %v", err)
	}
	if err := json.Unmarshal(m.Data, &st); err != nil || st.Done != 1 || !st.Used || st.At <= ready.UnixNano() {
		t.Errorf("announcement %s (%v), want ticket 1 done and used, with the time of its READY", m.Data, err)
	}
	b.UnlockBucket(1)
}
