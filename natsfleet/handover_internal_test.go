package natsfleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gofleet/fleet/shardgroup"
)

// handOverFleet is two hosts running a two-cluster plan with runners that
// checkpoint to the sessions bucket as a member does, and whose final
// save, on a drain, comes after their lease lapsed (renewals too slow).
type handOverFleet struct {
	kv    jetstream.KeyValue
	hosts map[string]*hostCore

	mu     sync.Mutex       // guards loaded
	loaded map[string][]int // by host, the sequences its runners resumed
}

// final is the sequence a drained cluster's shards stop at.
const final = 42

func startHandOverFleet(t *testing.T, steal bool) *handOverFleet {
	t.Helper()
	s, err := StartServer(ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := &handOverFleet{hosts: map[string]*hostCore{}, loaded: map[string][]int{}}
	ttl := 1500 * time.Millisecond
	for _, id := range []string{"a", "b"} {
		nc, err := s.Connect(ctx, Logger(slog.New(slog.DiscardHandler)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		kv, err := keyValue(ctx, nc, "handover", "sessions", jetstream.FileStorage)
		if err != nil {
			t.Fatal(err)
		}
		f.kv = kv
		core, err := newHostCore(ctx, nc, coreConfig{fleet: "handover", id: id, weight: 1, ttl: ttl, margin: ttl / 10, interval: ttl / 3,
			log: slog.New(slog.DiscardHandler), run: f.runner(t, id, kv, steal),
			plan: func(context.Context) (planRecord, error) {
				return planRecord{Shards: 2, MaxConcurrency: 1, Clusters: [][]int{{0}, {1}}}, nil
			}})
		if err != nil {
			t.Fatal(err)
		}
		f.hosts[id] = core
		runCtx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- core.runLoop(runCtx, 5*time.Second) }()
		t.Cleanup(func() {
			stop()
			<-done
		})
	}
	return f
}

func (f *handOverFleet) runner(t *testing.T, id string, kv jetstream.KeyValue, steal bool) clusterRunner {
	return func(ctx context.Context, c *clusterRun) error {
		store := newClusterSessions(kv, id, c, time.Hour)
		c.sessions = store
		got, err := store.Load(ctx)
		if err != nil {
			return err
		}
		f.mu.Lock()
		for _, s := range got {
			f.loaded[id] = append(f.loaded[id], s.Sequence)
		}
		f.mu.Unlock()
		sess := func(seq int) []shardgroup.Session {
			return []shardgroup.Session{{ShardID: c.Shards[0], ShardCount: 2, SessionID: fmt.Sprint("s", c.ID), Sequence: seq, SavedAt: time.Now()}}
		}
		if len(got) == 0 { // a first checkpoint
			if err := store.Save(ctx, sess(1)); err != nil {
				return err
			}
		}
		<-ctx.Done()
		// The lease lapses while the shards close, as when renewals are
		// slow on a loaded machine; the shards held what came after the
		// lapse, so they stop at final.
		c.Lease.deadline.Store(0)
		if steal {
			// Another host takes the lease meanwhile.
			data, _ := json.Marshal(leaseRecord{Owner: "thief", Epoch: c.Lease.epoch + 1})
			if _, err := f.hosts[id].kv.Put(context.Background(), c.Lease.key, data); err != nil {
				t.Error(err)
			}
		}
		if err := store.Save(context.Background(), sess(final)); !errors.Is(err, ErrLeaseLost) {
			t.Errorf("final save after the lease lapsed: %v, want ErrLeaseLost", err)
		}
		return nil
	}
}

// resumed returns how many sessions host id's runners resumed.
func (f *handOverFleet) resumed(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.loaded[id])
}

// drainA drains host a and waits until it runs nothing.
func (f *handOverFleet) drainA(t *testing.T) {
	t.Helper()
	a := f.hosts["a"]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.waitFor(ctx, func(s fleetSnapshot) bool { return len(s.Owned) == 1 }); err != nil {
		t.Fatalf("a never ran a cluster: %v", err)
	}
	a.startDrain()
	if err := a.waitFor(ctx, func(s fleetSnapshot) bool { return s.Draining && len(s.Owned) == 0 }); err != nil {
		t.Fatalf("a still runs clusters: %v", err)
	}
}

// A drain whose lease lapsed before the final save is still exact: the
// old owner reclaims its lease (nobody took it), writes the sessions it
// stopped with and releases it, and the new owner resumes those.
func TestDrainAfterALapsedLeaseIsExact(t *testing.T) {
	t.Parallel()
	f := startHandOverFleet(t, false)
	f.drainA(t)
	b := f.hosts["b"]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := b.waitFor(ctx, func(s fleetSnapshot) bool { return len(s.Owned) == 2 }); err != nil {
		t.Fatalf("b did not take a's cluster: %v", err)
	}
	// b's runner loads the sessions once it runs.
	for f.resumed("b") == 0 && ctx.Err() == nil {
		time.Sleep(time.Millisecond) // polls the runner's record; what is asserted is its content
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if got := f.loaded["b"]; len(got) != 1 || got[0] != final {
		t.Errorf("b resumed a's cluster at sequences %v, want [%d] (the exact sessions a stopped with)", got, final)
	}
	if errs := f.hosts["a"].handOverErrsSince(0); len(errs) != 0 {
		t.Errorf("hand-over errors: %v", errs)
	}
}

// A drain whose lease was taken by another host before the final save
// cannot be exact, and says so.
func TestDrainWhoseLeaseWasTakenFailsLoudly(t *testing.T) {
	t.Parallel()
	f := startHandOverFleet(t, true)
	f.drainA(t)
	errs := f.hosts["a"].handOverErrsSince(0)
	if len(errs) != 1 || !isConflict(errs[0]) || !strings.Contains(errs[0].Error(), "not exact") {
		t.Fatalf("hand-over errors %v, want one saying the hand-over was not exact, for a conflict on the lease", errs)
	}
}
