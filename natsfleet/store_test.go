package natsfleet_test

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/natsfleet"
	"github.com/gofleet/fleet/services"
	"github.com/gofleet/fleet/shardgroup"
)

// TestKVStoreThroughBus: the services' store helpers reach a store whose
// data is in KV, from a Bus in another "process" (another Transport),
// and a second store on the same bucket sees the same data.
func TestKVStoreThroughBus(t *testing.T) {
	t.Parallel()
	prefix := newPrefix()
	ctx := testCtx(t)
	kv, err := natsfleet.NewKVStore(ctx, connect(t), prefix)
	if err != nil {
		t.Fatal(err)
	}
	st, ct := newTransport(t, prefix), newTransport(t, prefix)
	sb := newBus(t, bus.Options{}, st)
	cb := newBus(t, bus.Options{}, ct)
	m, err := services.NewManager(sb, services.ManagerConfig{Specs: []services.Spec{services.NewStoreOn(kv).Spec()}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(context.Background()) })

	type prefs struct{ Prefix string }
	if err := services.StoreSet(ctx, cb, "guild/1", prefs{"!"}); err != nil {
		t.Fatal(err)
	}
	if err := services.StoreSet(ctx, cb, "a key with spaces", 7); err != nil {
		t.Fatal(err)
	}
	got, ok, err := services.StoreGet[prefs](ctx, cb, "guild/1")
	if err != nil || !ok || got.Prefix != "!" {
		t.Errorf("StoreGet = %+v, %v, %v", got, ok, err)
	}
	other, err := natsfleet.NewKVStore(ctx, connect(t), prefix)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok, err := other.Get(ctx, "a key with spaces"); err != nil || !ok || string(v) != "7" {
		t.Errorf("another process's store: %s, %v, %v", v, ok, err)
	}
	keys, err := services.StoreKeys(ctx, cb)
	if err != nil || !slices.Equal(keys, []string{"a key with spaces", "guild/1"}) {
		t.Errorf("StoreKeys = %v, %v", keys, err)
	}
	if n, err := services.StoreIncrement(ctx, cb, "a key with spaces", 3); err != nil || n != 10 {
		t.Errorf("StoreIncrement through the KV backend = %d, %v; want 10", n, err)
	}
	if ok, err := services.StoreDelete(ctx, cb, "guild/1"); err != nil || !ok {
		t.Errorf("StoreDelete = %v, %v", ok, err)
	}
	if n, err := services.StoreClear(ctx, cb); err != nil || n != 1 {
		t.Errorf("StoreClear = %d, %v; want 1", n, err)
	}
}

// TestKVStoreIncrementLosesNothing: concurrent writers on separate
// connections never lose an increment.
func TestKVStoreIncrementLosesNothing(t *testing.T) {
	t.Parallel()
	prefix := newPrefix()
	ctx := testCtx(t)
	const writers, each = 4, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for range writers {
		s, err := natsfleet.NewKVStore(ctx, connect(t), prefix)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			for range each {
				if _, err := s.Increment(ctx, "counter", 1); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	s, _ := natsfleet.NewKVStore(ctx, connect(t), prefix)
	v, ok, err := s.Get(ctx, "counter")
	var n int
	if err != nil || !ok || json.Unmarshal(v, &n) != nil || n != writers*each {
		t.Errorf("counter = %s (%v, %v), want %d", v, ok, err, writers*each)
	}
}

func TestKVSessionStore(t *testing.T) {
	t.Parallel()
	prefix := newPrefix()
	ctx := testCtx(t)
	a, err := natsfleet.NewKVSessionStore(ctx, connect(t), prefix, "host-a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := natsfleet.NewKVSessionStore(ctx, connect(t), prefix, "host-b")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := a.Load(ctx); err != nil || len(got) != 0 {
		t.Fatalf("empty Load = %v, %v", got, err)
	}
	before := time.Now()
	s0 := shardgroup.Session{ShardID: 0, ShardCount: 2, SessionID: "s0", Sequence: 5, ResumeURL: "ws://x"}
	s1 := shardgroup.Session{ShardID: 1, ShardCount: 2, SessionID: "s1", Sequence: 9, ResumeURL: "ws://y"}
	if err := a.Save(ctx, []shardgroup.Session{s0}); err != nil {
		t.Fatal(err)
	}
	if err := b.Save(ctx, []shardgroup.Session{s1}); err != nil {
		t.Fatal(err)
	}
	recs, err := a.Records(ctx)
	if err != nil || len(recs) != 2 {
		t.Fatalf("Records = %+v, %v; want both processes' sessions", recs, err)
	}
	if recs[0].Session != s0 || recs[0].Owner != "host-a" || recs[1].Session != s1 || recs[1].Owner != "host-b" {
		t.Errorf("Records = %+v", recs)
	}
	if recs[0].WrittenAt.Before(before.Add(-time.Second)) {
		t.Errorf("WrittenAt = %v, want the time of Save", recs[0].WrittenAt)
	}
	loaded, err := b.Load(ctx)
	if err != nil || len(loaded) != 2 || loaded[1] != s1 {
		t.Errorf("Load = %+v, %v", loaded, err)
	}
}
