package shardgroup

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/events"
	"github.com/disgoorg/disgo/gateway"

	"github.com/gofleet/fleet/discordtest"
)

// guildOf returns the index of a guild that shard owns out of count.
func guildOf(t *testing.T, srv *discordtest.Server, shard, count int) int {
	t.Helper()
	for i := range srv.Guilds() {
		if discordtest.ShardFor(srv.GuildID(i), count) == shard {
			return i
		}
	}
	t.Fatalf("no guild on shard %d", shard)
	return 0
}

// A listener blocked on shard 0 does not hold back shard 1 of the same
// group: shard 1's events reach user code while shard 0's listener waits.
func TestBlockedListenerDelaysNoOtherShard(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithMaxConcurrency(2),
		discordtest.WithIdentifyWindow(time.Nanosecond))
	defer srv.Close()
	blocked, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(release) })
	block := bot.WithEventListenerFunc(func(e *events.MessageCreate) {
		if e.ShardID() == 0 && e.Message.Content == "block" {
			close(blocked)
			<-release
		}
	})
	sn := newSeen()
	g := newGroup(t, srv, []int{0, 1}, 2, nil, block, sn.listener())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g.Start(ctx)
	defer g.Stop(context.Background(), false)
	waitReady(t, g)

	g0 := srv.GuildID(guildOf(t, srv, 0, 2))
	if _, err := srv.Dispatch(g0, "MESSAGE_CREATE", srv.MessageCreate(g0, "block", 1000)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-blocked:
	case <-time.After(10 * time.Second):
		t.Fatal("shard 0's listener never ran")
	}
	g1 := srv.GuildID(guildOf(t, srv, 1, 2))
	for i := range 20 {
		if _, err := srv.Dispatch(g1, "MESSAGE_CREATE", srv.MessageCreate(g1, "x", i)); err != nil {
			t.Fatal(err)
		}
	}
	// Shard 0's listener is still blocked: nothing released it.
	got := sn.waitN(t, 20)
	exactlyOnce(t, got, 20)
	once.Do(func() { close(release) })
	if n := len(sn.waitN(t, 21)); n != 21 {
		t.Fatalf("saw %d events after the release, want 21", n)
	}
}

// A listener that panics on every event does not keep the listeners
// registered after it from the event; each panic is counted with its
// shard.
func TestPanickingListenerDoesNotStarveLaterOnes(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(2))
	defer srv.Close()
	boom := bot.WithEventListenerFunc(func(*events.MessageCreate) { panic("listener bug") })
	sn := newSeen()
	var mu sync.Mutex
	var shards []int
	g, err := New(Config{
		ShardIDs: []int{0}, ShardCount: 1, Token: Token(srv.Token()), GatewayURL: srv.GatewayURL(),
		IdentifyLimiter: noLimit{}, ClientOptions: []bot.ConfigOpt{quietREST, boom, sn.listener()},
		Hooks: Hooks{ListenerPanic: func(_ *Group, shard int, _ any) {
			mu.Lock()
			shards = append(shards, shard)
			mu.Unlock()
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g.Start(ctx)
	defer g.Stop(context.Background(), false)
	waitReady(t, g)
	dispatch(t, srv, 0, 3)
	exactlyOnce(t, sn.waitN(t, 3), 3)
	if n := g.Group().ListenerPanics(); n != 3 {
		t.Fatalf("panics %d, want 3", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(shards) != 3 || shards[0] != 0 || shards[1] != 0 || shards[2] != 0 {
		t.Fatalf("panic hook saw shards %v, want [0 0 0]", shards)
	}
}

// A new generation that would have to hold more than MaxHeld events per
// shard, because the old generation lags, makes CutOver give up with
// ErrOldGenerationLags; the old generation goes on delivering everything.
func TestCutOverGivesUpWhenOldGenerationLags(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithMaxConcurrency(2),
		discordtest.WithIdentifyWindow(time.Nanosecond))
	defer srv.Close()
	blocked, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(release) })
	block := bot.WithEventListenerFunc(func(e *events.MessageCreate) {
		if e.Message.Content == "block" {
			close(blocked)
			<-release
		}
	})
	sn := newSeen()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	old := newGroup(t, srv, []int{0}, 1, nil, block, sn.listener())
	old.Start(ctx)
	defer old.Stop(context.Background(), false)
	waitReady(t, old)
	old.Record(2)

	var gate Gate
	next, err := New(Config{ShardIDs: []int{0, 1}, ShardCount: 2, Token: Token(srv.Token()), GatewayURL: srv.GatewayURL(),
		Intents:         gateway.IntentGuilds | gateway.IntentGuildMessages,
		IdentifyLimiter: noLimit{}, ClientOptions: []bot.ConfigOpt{quietREST, sn.listener()},
		Gate: &gate, Generation: 1, MaxHeld: 5})
	if err != nil {
		t.Fatal(err)
	}
	next.Start(ctx)
	defer next.Stop(context.Background(), false)
	waitFor(t, next.Group().Loaded)

	g := srv.GuildID(guildOf(t, srv, 0, 2))
	if _, err := srv.Dispatch(g, "MESSAGE_CREATE", srv.MessageCreate(g, "block", 1000)); err != nil {
		t.Fatal(err)
	}
	<-blocked
	for i := range 20 {
		if _, err := srv.Dispatch(g, "MESSAGE_CREATE", srv.MessageCreate(g, "x", i)); err != nil {
			t.Fatal(err)
		}
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	if err := CutOver(cctx, nil, []*Runner{old}, []*Runner{next}); !errors.Is(err, ErrOldGenerationLags) {
		t.Fatalf("CutOver: %v, want ErrOldGenerationLags", err)
	}
	old.EndRecording()
	once.Do(func() { close(release) })
	// Only the old generation delivered, every message once.
	exactlyOnce(t, sn.waitN(t, 21), 20)
	if n := len(sn.waitN(t, 21)); n != 21 {
		t.Fatalf("saw %d events, want 21", n)
	}
}
