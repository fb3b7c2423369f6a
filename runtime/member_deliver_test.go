package runtime

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofleet/fleet/discordtest"
)

// A member's Serving check holds a cluster's events while it says
// false: the event refused is not delivered then, and is delivered once
// (in order, before the next one) when the check says true again.
func TestMemberServingHoldsEventsWhileFalse(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	b, q := memberShared(t, s)
	l := newLedger()
	cfg := memberConfig(s, b, q, ClusterPlan{ID: 2, Shards: []int{0, 1, 2, 3}})
	cfg.Bot = l.bot
	var open atomic.Bool
	var refused, foreign atomic.Int64
	open.Store(true)
	cfg.Member.Serving = func(cluster int) bool {
		if cluster != 2 {
			foreign.Add(1)
		}
		if !open.Load() {
			refused.Add(1)
			return false
		}
		return true
	}
	_, stop := startFleet(t, cfg)
	defer stop()
	g := s.GuildID(0)
	send := func(content string, nonce int) {
		t.Helper()
		if n, _ := s.Dispatch(g, "MESSAGE_CREATE", s.MessageCreate(g, content, nonce)); n != 1 {
			t.Fatalf("%s: dispatched to %d sessions", content, n)
		}
	}
	send("before", 1)
	l.waitN(t, 1)
	open.Store(false)
	send("held", 2)
	waitFor(t, func() bool { return refused.Load() > 1 }) // asked again while held
	l.mu.Lock()
	got := l.n
	l.mu.Unlock()
	if got != 1 {
		t.Fatalf("%d messages delivered while Serving says false, want 1 (the one before)", got)
	}
	open.Store(true)
	send("after", 3)
	l.waitN(t, 3)
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, n := range l.seen {
		if n != 1 {
			t.Errorf("event %v delivered %d times, want once", k, n)
		}
	}
	if n := foreign.Load(); n != 0 {
		t.Errorf("Serving asked %d times for a cluster other than 2", n)
	}
}

// An event held when the member stops is not delivered, and the session
// saved stops before it, so that whoever resumes the session gets it
// replayed.
func TestMemberStoppedWhileHoldingSavesTheSessionBeforeTheHeldEvent(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(1), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	b, q := memberShared(t, s)
	l := newLedger()
	store := &MemorySessionStore{}
	cfg := memberConfig(s, b, q, ClusterPlan{ID: 0, Shards: []int{0, 1, 2, 3}})
	cfg.Bot, cfg.SessionStore, cfg.CheckpointInterval = l.bot, store, CheckpointOff
	var open atomic.Bool
	var refused atomic.Int64
	open.Store(true)
	cfg.Member.Serving = func(int) bool {
		if !open.Load() {
			refused.Add(1)
			return false
		}
		return true
	}
	_, stop := startFleet(t, cfg)
	g := s.GuildID(0)
	if n, _ := s.Dispatch(g, "MESSAGE_CREATE", s.MessageCreate(g, "before", 1)); n != 1 {
		t.Fatalf("dispatched to %d sessions", n)
	}
	l.waitN(t, 1)
	var shard, seq int
	l.mu.Lock()
	for k := range l.seen {
		shard, seq = k[0], k[1]
	}
	l.mu.Unlock()
	open.Store(false)
	if n, _ := s.Dispatch(g, "MESSAGE_CREATE", s.MessageCreate(g, "held", 2)); n != 1 {
		t.Fatalf("dispatched to %d sessions", n)
	}
	waitFor(t, func() bool { return refused.Load() > 0 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	delivered := l.n
	l.mu.Unlock()
	if delivered != 1 {
		t.Errorf("%d messages delivered, want 1: the held one must not be", delivered)
	}
	saved, err := store.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, sess := range saved {
		if sess.ShardID == shard {
			found = true
			if sess.Sequence != seq {
				t.Errorf("shard %d saved at sequence %d, want %d (the last event delivered, before the held one)", shard, sess.Sequence, seq)
			}
		}
	}
	if !found {
		t.Errorf("no session saved for shard %d: %+v", shard, saved)
	}
}
