package natsfleet

import (
	"context"
	"testing"
	"time"
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
