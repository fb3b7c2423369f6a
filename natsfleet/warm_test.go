package natsfleet_test

import (
	"context"
	"testing"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/runtime"
)

// loadUntil sends MESSAGE_CREATEs at 500/s in the background until ctx
// ends.
func loadUntil(ctx context.Context, s *discordtest.Server) <-chan discordtest.LoadResult {
	out := make(chan discordtest.LoadResult, 1)
	go func() {
		res, _ := s.Load(ctx, discordtest.Load{Events: 1 << 30, Rate: 500})
		out <- res
	}()
	return out
}

// TestProcessesWarmStart: at Run the parent opens every shard's session
// through the fleet's identify queue while the children start, and each
// child RESUMEs its shards' sessions: every shard identified once, no
// identify violation, and every event sent during the start, before or
// after the hand-over, delivered once, from the first after each shard's
// guilds.
func TestProcessesWarmStart(t *testing.T) {
	s := procServer(t)
	ctx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	loaded := loadUntil(ctx, s) // during the whole start
	f := startProcFleet(t, s, 2)
	f.ledger.atLeast(t, 50) // and a little after
	stopLoad()
	res := <-loaded
	if dups := f.ledger.distinct(t, res.Dispatches); dups != 0 {
		t.Errorf("%d events delivered twice", dups)
	}
	st := s.Stats()
	if st.Identifies != 4 || st.Resumes != 4 || st.Violations["identify_concurrency"] != 0 {
		t.Errorf("identifies %d, resumes %d, identify violations %d; want 4, 4 (the children resume what the parent opened), 0",
			st.Identifies, st.Resumes, st.Violations["identify_concurrency"])
	}
	once := map[int]int{}
	for _, id := range s.Identifies() {
		once[id.Shard]++
	}
	// Each shard's session: READY (1), its 8 guilds, then the load's.
	first := map[int]int{}
	f.ledger.mu.Lock()
	for e := range f.ledger.count {
		if v, ok := first[e.Shard]; !ok || e.Seq < v {
			first[e.Shard] = e.Seq
		}
	}
	f.ledger.mu.Unlock()
	for shard := range 4 {
		if once[shard] != 1 {
			t.Errorf("shard %d identified %d times, want once", shard, once[shard])
		}
		if first[shard] > 10 {
			t.Errorf("shard %d: the first event delivered has sequence %d: the events between the READY and the child's RESUME (from 10) are missing",
				shard, first[shard])
		}
	}
	f.mu.Lock()
	identifyEvents := 0
	for _, e := range f.events {
		if _, ok := e.(runtime.ShardIdentify); ok {
			identifyEvents++
		}
	}
	f.mu.Unlock()
	if identifyEvents != 4 {
		t.Errorf("%d ShardIdentify events, want 4 (the parent's IDENTIFYs are reported)", identifyEvents)
	}
}
