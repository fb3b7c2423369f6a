package shardgroup

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/gateway"

	"github.com/gofleet/fleet/discordtest"
	fclock "github.com/gofleet/fleet/internal/clock"
)

// within waits for a value on ch for up to 10 s.
func within[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: not within 10s", what)
	}
	var zero T
	return zero
}

// stopWithin stops g, giving up after d (a test that failed may have
// left a shard stuck).
func stopWithin(g *Runner, d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_, _ = g.Stop(ctx, false)
}

// stopNow stops r within 10 s and fails the test if Stop errs or
// returns before every shard did.
func stopNow(t *testing.T, r *Runner) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.Stop(ctx, false); err != nil {
		t.Fatalf("Stop = %v", err)
	}
	select {
	case <-r.Done():
	default:
		t.Fatal("Stop returned before the shards did")
	}
}

// note sends v on ch unless ch is full: hooks must not block.
func note[T any](ch chan<- T, v T) {
	select {
	case ch <- v:
	default:
	}
}

// TestZombieConnectionIsCountedAndResumed makes the gateway stop
// acknowledging a shard's heartbeats: the shard must count a zombie
// connection, close it, and RESUME on a new one without losing an event.
func TestZombieConnectionIsCountedAndResumed(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithIdentifyWindow(time.Nanosecond),
		discordtest.WithHeartbeatInterval(250*time.Millisecond), discordtest.WithHeartbeatGrace(time.Second))
	defer srv.Close()
	zombies, resumed := make(chan int, 16), make(chan int, 16)
	sn := newSeen()
	g, err := New(Config{
		ID: 0, ShardIDs: []int{0}, ShardCount: 1, Token: Token(srv.Token()), GatewayURL: srv.GatewayURL(),
		Intents:         gateway.IntentGuilds | gateway.IntentGuildMessages,
		IdentifyLimiter: noLimit{},
		ClientOptions:   []bot.ConfigOpt{quietREST, sn.listener()},
		Hooks: Hooks{
			Zombie: func(_ *Group, shard int) { note(zombies, shard) },
			ShardReady: func(_ *Group, shard, _ int, wasResumed bool) {
				if wasResumed {
					note(resumed, shard)
				}
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g.Start(ctx)
	defer stopWithin(g, 10*time.Second)
	var before discordtest.Stats
	var counted int64
	for attempt := 1; ; attempt++ {
		// A loaded machine may miss an ACK now and then: count from a
		// ready shard, with nothing pending.
		waitReady(t, g)
		for len(zombies) > 0 || len(resumed) > 0 {
			select {
			case <-zombies:
			case <-resumed:
			}
		}
		before, counted = srv.Stats(), g.Group().Shards()[0].Zombies
		dispatch(t, srv, 0, 10)
		if srv.StopAcks(0, true) == 1 {
			break
		}
		if attempt == 5 {
			t.Fatal("StopAcks found no connection of shard 0")
		}
		sn.waitN(t, 10)
		sn.reset()
	}
	within(t, zombies, "zombie connection detected")
	within(t, resumed, "zombie connection resumed")
	if got := g.Group().Shards()[0].Zombies; got < counted+1 {
		t.Fatalf("ShardInfo.Zombies = %d, want at least %d", got, counted+1)
	}
	dispatch(t, srv, 10, 10)
	exactlyOnce(t, sn.waitN(t, 20), 20)
	after := srv.Stats()
	if after.Identifies != before.Identifies || after.Resumes <= before.Resumes {
		t.Fatalf("identifies %d -> %d, resumes %d -> %d: want a RESUME and no IDENTIFY",
			before.Identifies, after.Identifies, before.Resumes, after.Resumes)
	}
	if v := after.Violations; len(v) != 0 {
		t.Fatalf("violations %v", v)
	}
}

// TestCommandWindowSteps steps the gateway command limit in made-up
// time: Discord allows 120 payloads per connection per 60 s, the IDENTIFY
// and heartbeats included, and two slots are kept for heartbeats.
func TestCommandWindowSteps(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fake := fclock.NewFake(t0)
	s := &shard{g: &Group{clock: fake}}
	for i, st := range []struct {
		at        time.Duration // since t0
		handshake bool          // the connection's IDENTIFY is sent first
		send      int           // commands that must go at once
		wait      time.Duration // then the next one's wait (0: it goes)
	}{
		{at: 0, handshake: true, send: 117, wait: time.Minute}, // the IDENTIFY's minute: 117
		{at: 30 * time.Second, wait: 30 * time.Second},
		{at: time.Minute, send: 118, wait: time.Minute}, // all have left the window: 118 a minute
		{at: 90 * time.Second, wait: 30 * time.Second},
		{at: 2*time.Minute - 1, wait: 1},
		{at: 2 * time.Minute, send: 118, wait: time.Minute},
	} {
		fake.Set(t0.Add(st.at))
		if st.handshake {
			_ = s.sendNow(gateway.OpcodeIdentify, gateway.MessageDataIdentify{}) // not connected: counted, not written
		}
		for n := range st.send {
			if w := s.reserveSend(fake.Now()); w != 0 {
				t.Fatalf("step %d (at %s): command %d waits %s, want it to go", i, st.at, n+1, w)
			}
		}
		if w := s.reserveSend(fake.Now()); w != st.wait {
			t.Fatalf("step %d (at %s): after %d commands the next waits %s, want %s", i, st.at, st.send, w, st.wait)
		}
	}
}

// TestSendLimitKeepsRoomForHeartbeats checks the gateway command limit at
// its boundary against the simulator, which enforces Discord's 120 per
// 60 s: after the IDENTIFY, 117 commands go at once, the 118th waits for
// the minute to pass, and a heartbeat still goes meanwhile.
func TestSendLimitKeepsRoomForHeartbeats(t *testing.T) {
	// The only heartbeat is the one the gateway asks for.
	srv := discordtest.NewServer(discordtest.WithGuilds(1), discordtest.WithIdentifyWindow(time.Nanosecond),
		discordtest.WithHeartbeatInterval(24*time.Hour))
	defer srv.Close()
	g := newGroup(t, srv, []int{0}, 1, nil)
	fake := fclock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	g.g.clock = fake
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g.Start(ctx)
	defer stopWithin(g, 10*time.Second)
	waitReady(t, g)
	s := g.g.shards[0]
	presence := gateway.MessageDataPresenceUpdate{Status: discord.OnlineStatusIdle}

	for i := range 117 {
		if err := s.Send(ctx, gateway.OpcodePresenceUpdate, presence); err != nil {
			t.Fatalf("command %d: %v", i+1, err)
		}
		if p := fake.Timers(); len(p) != 0 {
			t.Fatalf("command %d waited (%v)", i+1, p)
		}
	}
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	sent := make(chan error, 1)
	go func() { sent <- s.Send(sctx, gateway.OpcodePresenceUpdate, presence) }()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	waiting := make(chan []time.Duration, 1)
	go func() {
		pending, _ := fake.WaitTimers(wctx, 1)
		waiting <- pending
	}()
	var pending []time.Duration
	select {
	case err := <-sent:
		t.Fatalf("the 118th command was sent at once (err %v)", err)
	case pending = <-waiting:
	}
	if len(pending) != 1 {
		t.Fatalf("the 118th command did not wait (timers %v)", pending)
	}
	if pending[0] != time.Minute {
		t.Fatalf("the 118th command waits %s, want 1m (until the IDENTIFY leaves the window)", pending[0])
	}

	// A heartbeat does not wait: it is written and acknowledged.
	hb := s.hb.Load()
	hb.mu.Lock()
	if hb.ackCh == nil {
		hb.ackCh = make(chan struct{})
	}
	acked := hb.ackCh
	hb.mu.Unlock()
	if n := srv.RequestHeartbeat(0); n != 1 {
		t.Fatalf("RequestHeartbeat reached %d connections", n)
	}
	within(t, acked, "heartbeat acknowledged while a command waits")

	fake.Advance(time.Minute - time.Nanosecond)
	select {
	case err := <-sent:
		t.Fatalf("the 118th command went before the window moved on (err %v)", err)
	default:
	}
	scancel()
	if err := within(t, sent, "a waiting Send returns when its ctx ends"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Send = %v, want context.Canceled", err)
	}
	if st := srv.Stats(); len(st.Violations) != 0 || st.OpenConnections != 1 {
		t.Fatalf("violations %v, open connections %d: want none and 1", st.Violations, st.OpenConnections)
	}
	if got := g.Group().Shards()[0].State; got != StateReady {
		t.Fatalf("shard %s, want ready", got)
	}
}
