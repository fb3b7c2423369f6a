package shardgroup

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/gateway"

	"github.com/gofleet/fleet/discordtest"
)

// reservingLimiter is a TurnReserver whose reservations the test lets
// through one by one. It notes each call, and how many connections the
// simulator had as each reservation was asked for.
type reservingLimiter struct {
	srv   *discordtest.Server
	grant chan struct{} // one per reservation let through

	mu      sync.Mutex // guards calls, conns and the reservations' taken
	calls   []string
	conns   []int // the simulator's connections at each ReserveTurn
	changed chan struct{}
}

func newReservingLimiter(srv *discordtest.Server) *reservingLimiter {
	return &reservingLimiter{srv: srv, grant: make(chan struct{}, 16), changed: make(chan struct{}, 64)}
}

func (l *reservingLimiter) note(s string) {
	l.mu.Lock()
	l.calls = append(l.calls, s)
	l.mu.Unlock()
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

type reservedKey struct{}

func (l *reservingLimiter) ReserveTurn(ctx context.Context, shard int) (context.Context, func(), error) {
	conns := 0
	if l.srv != nil {
		conns = l.srv.Stats().Connections
	}
	l.mu.Lock()
	l.conns = append(l.conns, conns)
	l.mu.Unlock()
	l.note(fmt.Sprintf("reserve %d", shard))
	select {
	case <-l.grant:
	case <-ctx.Done():
		l.note(fmt.Sprintf("reserve %d ended", shard))
		return ctx, func() {}, ctx.Err()
	}
	taken := new(bool)
	giveUp := func() {
		l.mu.Lock()
		was := !*taken
		*taken = true
		l.mu.Unlock()
		if was {
			l.note(fmt.Sprintf("cancel %d", shard))
		}
	}
	return context.WithValue(ctx, reservedKey{}, taken), giveUp, nil
}

// WaitBucket takes the reservation its ctx carries; a wait without one is
// noted as such.
func (l *reservingLimiter) WaitBucket(ctx context.Context, shard int) error {
	taken, ok := ctx.Value(reservedKey{}).(*bool)
	if !ok {
		l.note(fmt.Sprintf("wait %d without a reservation", shard))
		return nil
	}
	l.mu.Lock()
	*taken = true
	l.mu.Unlock()
	l.note(fmt.Sprintf("wait %d", shard))
	return nil
}

func (l *reservingLimiter) UnlockBucket(shard int) { l.note(fmt.Sprintf("unlock %d", shard)) }

// waitCalls waits until the calls noted begin with want.
func (l *reservingLimiter) waitCalls(t *testing.T, want ...string) []string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		l.mu.Lock()
		got := slices.Clone(l.calls)
		l.mu.Unlock()
		if len(got) >= len(want) {
			if !slices.Equal(got[:len(want)], want) {
				t.Fatalf("calls %q, want them to begin with %q", got, want)
			}
			return got
		}
		select {
		case <-l.changed:
		case <-timeout:
			t.Fatalf("calls %q, want %q", got, want)
		}
	}
}

func reservingGroup(t *testing.T, srv *discordtest.Server, url string, l IdentifyLimiter) *Runner {
	t.Helper()
	r, err := New(Config{ID: 1, ShardIDs: []int{0}, ShardCount: 1, Token: Token(srv.Token()), GatewayURL: url,
		Intents: gateway.IntentGuilds, IdentifyLimiter: l, ClientOptions: []bot.ConfigOpt{quietREST}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestTurnReservedBeforeDial: with a TurnReserver, a shard that will
// IDENTIFY reserves its turn first and dials only once it is through;
// its WaitBucket takes the reservation (nothing is given back), and a
// RESUME reserves nothing.
func TestTurnReservedBeforeDial(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(1))
	defer srv.Close()
	l := newReservingLimiter(srv)
	r := reservingGroup(t, srv, srv.GatewayURL(), l)
	r.Start(context.Background())
	defer stopWithin(r, 10*time.Second)
	l.waitCalls(t, "reserve 0")
	l.grant <- struct{}{}
	waitReady(t, r)
	l.waitCalls(t, "reserve 0", "wait 0", "unlock 0")
	l.mu.Lock()
	conns := l.conns[0]
	l.mu.Unlock()
	if conns != 0 {
		t.Fatalf("the simulator had %d connections when the shard reserved its turn, want 0: it dialled first", conns)
	}
	// A dropped connection resumes its session: no turn is reserved.
	srv.DropShard(0)
	waitFor(t, func() bool { return srv.Stats().Resumes >= 1 })
	waitReady(t, r)
	if got := l.waitCalls(t, "reserve 0", "wait 0", "unlock 0"); len(got) != 3 {
		t.Fatalf("calls %q after a RESUME, want no more", got)
	}
}

// TestTurnGivenBackWhenTheDialFails: a shard whose dial fails after it
// reserved its turn gives the turn back, and reserves again for its next
// attempt; it never waits for a turn it cannot use.
func TestTurnGivenBackWhenTheDialFails(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "ws://" + ln.Addr().String()
	_ = ln.Close()                 // nothing listens there now: each dial is refused
	srv := discordtest.NewServer() // its token: the dials go elsewhere
	defer srv.Close()
	l := newReservingLimiter(nil)
	r := reservingGroup(t, srv, url, l)
	r.Start(context.Background())
	l.grant <- struct{}{}
	l.grant <- struct{}{}
	l.waitCalls(t, "reserve 0", "cancel 0", "reserve 0", "cancel 0", "reserve 0")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.Stop(ctx, false); err != nil {
		t.Fatalf("Stop = %v", err)
	}
	got := l.waitCalls(t, "reserve 0", "cancel 0", "reserve 0", "cancel 0", "reserve 0", "reserve 0 ended")
	if slices.Contains(got, "wait 0") {
		t.Fatalf("calls %q: the shard waited for a turn without a connection", got)
	}
}

// TestStopWhileReservingTurn: a shard stopped while it waits for its
// turn to come near stops at once, without dialling.
func TestStopWhileReservingTurn(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(1))
	defer srv.Close()
	l := newReservingLimiter(srv)
	r := reservingGroup(t, srv, srv.GatewayURL(), l)
	r.Start(context.Background())
	l.waitCalls(t, "reserve 0")
	stopNow(t, r)
	l.waitCalls(t, "reserve 0", "reserve 0 ended")
	if n := srv.Stats().Connections; n != 0 {
		t.Fatalf("%d connections, want 0: the shard dialled without its turn", n)
	}
}

// TestReservationsPaceWithoutThePacer: with a TurnReserver, every shard of
// a bucket asks for its turn at once, though a Pacer lets one of them
// connect ahead (the reservations pace the dials), so that a queue can
// give them consecutive turns; none dials before its reservation.
func TestReservationsPaceWithoutThePacer(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(4))
	defer srv.Close()
	l := newReservingLimiter(srv)
	p, err := NewPacer(1, 1) // one bucket for the pacer: it would let 0 and 1 ahead through alone
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{ID: 1, ShardIDs: []int{0, 1, 2, 3}, ShardCount: 4, Token: Token(srv.Token()),
		GatewayURL: srv.GatewayURL(), Intents: gateway.IntentGuilds, IdentifyLimiter: l, Pacer: p,
		ClientOptions: []bot.ConfigOpt{quietREST}})
	if err != nil {
		t.Fatal(err)
	}
	r.Start(context.Background())
	defer stopWithin(r, 10*time.Second)
	// All four ask before any is let through; the pacer alone would let
	// one (and one ahead) connect.
	var got []string
	waitFor(t, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		got = slices.Clone(l.calls)
		return len(got) >= 4
	})
	got = got[:4]
	slices.Sort(got)
	if want := []string{"reserve 0", "reserve 1", "reserve 2", "reserve 3"}; !slices.Equal(got, want) {
		t.Fatalf("first calls %q, want every shard's reservation %q", got, want)
	}
	if c := srv.Stats().Connections; c != 0 {
		t.Fatalf("%d connections before any reservation was through", c)
	}
	for range 4 {
		l.grant <- struct{}{}
	}
	waitReady(t, r)
}
