package natsfleet

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gofleet/fleet/shardgroup"
)

func TestClusterSessionsFencedByLease(t *testing.T) {
	t.Parallel()
	s, err := StartServer(ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, err := s.Connect(ctx, Logger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	kv, err := keyValue(ctx, nc, "fenced", "sessions", jetstream.FileStorage)
	if err != nil {
		t.Fatal(err)
	}
	lease := func(epoch uint64, valid bool) *heldLease {
		l := &heldLease{key: leaseKey(3), epoch: epoch}
		if valid {
			l.deadline.Store(time.Now().Add(time.Hour).UnixNano())
		}
		return l
	}
	sess := func(seq int) []shardgroup.Session {
		return []shardgroup.Session{{ShardID: 6, ShardCount: 8, SessionID: "s6", Sequence: seq}, {ShardID: 7, ShardCount: 8, SessionID: "s7", Sequence: seq}, {ShardID: 1, ShardCount: 8, SessionID: "other"}}
	}
	oldOwner := newClusterSessions(kv, "a", &clusterRun{ID: 3, Shards: []int{6, 7}, Lease: lease(1, true)}, time.Second)
	if err := oldOwner.Save(ctx, sess(10)); err != nil {
		t.Fatal(err)
	}
	newOwner := newClusterSessions(kv, "b", &clusterRun{ID: 3, Shards: []int{6, 7}, Lease: lease(2, true)}, time.Second)
	got, err := newOwner.Load(ctx)
	if err != nil || len(got) != 2 || got[0].Sequence != 10 || got[1].Sequence != 10 {
		t.Fatalf("new owner loaded %+v, %v; want shards 6 and 7 at sequence 10 (not shard 1 of another cluster)", got, err)
	}
	if err := newOwner.Save(ctx, sess(20)); err != nil {
		t.Fatal(err)
	}
	// The old owner, still thinking its lease valid, writes again: refused
	// by the epoch, and nothing is overwritten.
	if err := oldOwner.Save(ctx, sess(15)); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("old owner's save after the new owner's: %v, want ErrLeaseLost", err)
	}
	// An owner whose lease ended locally does not even try.
	expired := newClusterSessions(kv, "b", &clusterRun{ID: 3, Shards: []int{6, 7}, Lease: lease(2, false)}, time.Second)
	if err := expired.Save(ctx, sess(30)); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("save with an expired lease: %v, want ErrLeaseLost", err)
	}
	got, _ = newOwner.Load(ctx)
	for _, g := range got {
		if g.Sequence != 20 {
			t.Errorf("shard %d at sequence %d, want the new owner's 20", g.ShardID, g.Sequence)
		}
	}
	if _, err := kv.Get(ctx, sessionKey(1)); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("shard 1, not of the cluster, was written: %v", err)
	}
}

// The checkpoints of a cluster are fresh (its events delivered) until a
// save has failed for an interval, or the last one written was taken two
// intervals ago; a save that succeeds again makes them fresh again.
func TestFencedSessionsAreFreshWhileCheckpointsKeepUp(t *testing.T) {
	t.Parallel()
	s, err := StartServer(ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, err := s.Connect(ctx, Logger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	kv, err := keyValue(ctx, nc, "fresh", "sessions", jetstream.FileStorage)
	if err != nil {
		t.Fatal(err)
	}
	const interval = time.Second
	lease := &heldLease{key: leaseKey(0), epoch: 1}
	store := newClusterSessions(kv, "a", &clusterRun{ID: 0, Shards: []int{0}, Lease: lease}, interval)
	t0 := time.Now()
	save := func(taken time.Time, valid bool) {
		t.Helper()
		lease.deadline.Store(0)
		if valid {
			lease.deadline.Store(time.Now().Add(time.Hour).UnixNano())
		}
		err := store.Save(ctx, []shardgroup.Session{{ShardID: 0, ShardCount: 1, SessionID: "s", Sequence: 1, SavedAt: taken}})
		if (err == nil) != valid {
			t.Fatalf("save with the lease valid=%v: %v", valid, err)
		}
	}
	check := func(what string, at time.Duration, want bool) {
		t.Helper()
		if got := store.fresh(t0.Add(at)); got != want {
			t.Errorf("%s: fresh at t0+%v = %v, want %v", what, at, got, want)
		}
	}
	check("before any save", 0, true)
	save(t0, true)
	check("a save written", interval/2, true)
	check("the last save written taken almost two intervals ago", 2*interval-time.Millisecond, true)
	check("the last save written taken two intervals ago", 2*interval, false)
	// A save of sessions taken a quarter interval after the last one
	// written fails: an interval later, before the last one written is
	// two intervals old, the checkpoints are not fresh.
	t1 := t0.Add(interval / 4)
	save(t1, false)
	check("a save failing for half an interval", interval/4+interval/2, true)
	check("a save failing for an interval", interval/4+interval, false)
	if !store.pending() {
		t.Error("the failed save's sessions are not pending")
	}
	t2 := t0.Add(3 * interval)
	save(t2, true)
	check("a save written again", 3*interval+interval/2, true)
	if store.pending() {
		t.Error("sessions pending after a save written")
	}
}
