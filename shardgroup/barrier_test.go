package shardgroup

import (
	"context"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/events"

	"github.com/gofleet/fleet/discordtest"
)

// TestBarrierWaitsForQueuedEvents: Barrier returns only once the
// listeners have seen every event the gateway sent before the call, even
// behind a slow listener; on a stopped group it returns at once.
func TestBarrierWaitsForQueuedEvents(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(8))
	defer srv.Close()
	s := newSeen()
	slow := bot.WithEventListenerFunc(func(*events.MessageCreate) {
		time.Sleep(time.Millisecond) // a slow listener, not synchronisation
	})
	r := newGroup(t, srv, []int{0, 1}, 2, nil, slow, s.listener())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r.Start(ctx)
	waitReady(t, r)
	const n = 200
	dispatch(t, srv, 0, n)
	if err := r.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	got := len(s.nonces)
	s.mu.Unlock()
	if got != n {
		t.Fatalf("%d of %d events delivered when Barrier returned", got, n)
	}
	if _, err := r.Stop(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := r.Barrier(ctx); err != nil {
		t.Fatalf("Barrier on a stopped group: %v", err)
	}
}
