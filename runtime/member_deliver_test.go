package runtime

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/discordtest"
)

// A member's Delivering check drops a cluster's events while it says
// false: the listeners see the messages before and after, not the one in
// between (a shard delivers in order, so the last one's arrival proves the
// middle one was handled).
func TestMemberDeliveringDropsEventsWhileFalse(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	b := bus.New(bus.Options{})
	defer b.Close()
	q, err := NewLocalIdentifyQueue(1, s.IdentifyWindow())
	if err != nil {
		t.Fatal(err)
	}
	l := newLedger()
	cfg := memberConfig(s, b, q, ClusterPlan{ID: 2, Shards: []int{0, 1, 2, 3}})
	cfg.Bot = l.bot
	var open atomic.Bool
	var dropped, foreign atomic.Int64
	open.Store(true)
	cfg.Member.Delivering = func(cluster int) bool {
		if cluster != 2 {
			foreign.Add(1)
		}
		if !open.Load() {
			dropped.Add(1)
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
	send("dropped", 2)
	waitFor(t, func() bool { return dropped.Load() > 0 })
	open.Store(true)
	send("after", 3)
	l.waitN(t, 2)
	if n := foreign.Load(); n != 0 {
		t.Errorf("Delivering asked %d times for a cluster other than 2", n)
	}
}
