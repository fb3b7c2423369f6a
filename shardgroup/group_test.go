package shardgroup

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/events"
	"github.com/disgoorg/disgo/gateway"
	"github.com/disgoorg/disgo/rest"

	"github.com/gofleet/fleet/discordtest"
)

// noLimit lets every IDENTIFY through; the servers in these tests have a
// bucket per shard.
type noLimit struct{}

func (noLimit) WaitBucket(context.Context, int) error { return nil }
func (noLimit) UnlockBucket(int)                      {}

// seen records MESSAGE_CREATE nonces as user code sees them.
type seen struct {
	mu      sync.Mutex
	nonces  []string
	seqs    [][2]int // shard and sequence of each event
	changed chan struct{}
}

func newSeen() *seen { return &seen{changed: make(chan struct{}, 1)} }

func (s *seen) listener() bot.ConfigOpt {
	return bot.WithEventListenerFunc(func(e *events.MessageCreate) {
		s.mu.Lock()
		s.nonces = append(s.nonces, string(e.Message.Nonce))
		s.seqs = append(s.seqs, [2]int{e.ShardID(), e.SequenceNumber()})
		s.mu.Unlock()
		select {
		case s.changed <- struct{}{}:
		default:
		}
	})
}

func (s *seen) reset() {
	s.mu.Lock()
	s.nonces, s.seqs = nil, nil
	s.mu.Unlock()
}

func (s *seen) waitN(t *testing.T, n int) []string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		s.mu.Lock()
		got := slices.Clone(s.nonces)
		s.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-s.changed:
		case <-timeout:
			t.Fatalf("saw %d events, want %d", len(got), n)
		}
	}
}

func newGroup(t *testing.T, srv *discordtest.Server, ids []int, count int, sessions map[int]Session, opts ...bot.ConfigOpt) *Runner {
	t.Helper()
	g, err := New(Config{
		ID: 0, ShardIDs: ids, ShardCount: count, Token: Token(srv.Token()), GatewayURL: srv.GatewayURL(),
		Intents:         gateway.IntentGuilds | gateway.IntentGuildMessages,
		IdentifyLimiter: noLimit{}, Sessions: sessions,
		ClientOptions: append([]bot.ConfigOpt{quietREST}, opts...),
	})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// quietREST gives the test clients a REST limiter that starts no goroutine
// (disgo's default one starts a cleanup loop nothing stops).
var quietREST = bot.WithRestClientConfigOpts(rest.WithRateLimiter(rest.NewNoopRateLimiter()))

func waitReady(t *testing.T, r *Runner) {
	t.Helper()
	g := r.Group()
	deadline := time.Now().Add(10 * time.Second)
	for g.State() != StateReady {
		if time.Now().After(deadline) {
			t.Fatalf("group not ready: %+v", g.Shards())
		}
		time.Sleep(time.Millisecond)
	}
}

func dispatch(t *testing.T, srv *discordtest.Server, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		gid := srv.GuildID(i % srv.Guilds())
		if _, err := srv.Dispatch(gid, "MESSAGE_CREATE", srv.MessageCreate(gid, "x", i)); err != nil {
			t.Fatal(err)
		}
	}
}

// exactlyOnce checks that nonces 0..n-1 each appear once.
func exactlyOnce(t *testing.T, got []string, n int) {
	t.Helper()
	count := map[string]int{}
	for _, g := range got {
		count[g]++
	}
	for i := range n {
		if c := count[itoa(i)]; c != 1 {
			t.Fatalf("event %d seen %d times (%d events in all)", i, c, len(got))
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

func itoa(i int) string { return string(appendInt(nil, i)) }

func appendInt(b []byte, i int) []byte {
	if i >= 10 {
		b = appendInt(b, i/10)
	}
	return append(b, byte('0'+i%10))
}

func TestGroupSurvivesFaults(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithMaxConcurrency(2),
		discordtest.WithIdentifyWindow(time.Nanosecond),
		discordtest.WithHeartbeatInterval(100*time.Millisecond), discordtest.WithHeartbeatGrace(time.Second))
	defer srv.Close()
	sn := newSeen()
	g := newGroup(t, srv, []int{0, 1}, 2, nil, sn.listener())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g.Start(ctx)
	defer g.Stop(context.Background(), false)
	waitReady(t, g)

	next := 0
	faults := []struct {
		name     string
		fault    func()
		identify int // new IDENTIFYs the fault causes
	}{
		{"drop", func() { srv.DropShard(0) }, 0},
		{"op 7", func() { srv.Reconnect(1) }, 0},
		{"op 9 resumable", func() { srv.InvalidateSession(0, true) }, 0},
		{"zombie", func() { srv.StopAcks(discordtest.AllShards, true) }, 0},
		{"restart keeping sessions", func() { srv.Restart(true) }, 0},
		{"op 9 not resumable", func() { srv.InvalidateSession(1, false) }, 1},
		{"restart losing sessions", func() { srv.Restart(false) }, 2},
	}
	for _, f := range faults {
		before := srv.Stats()
		if f.identify == 0 {
			// A resumed session loses nothing: events sent before, during
			// and after the fault are each seen once.
			dispatch(t, srv, next, 20)
			f.fault()
			dispatch(t, srv, next+20, 20)
			next += 40
			exactlyOnce(t, sn.waitN(t, next), next)
			waitReady(t, g)
			if after := srv.Stats(); after.Identifies != before.Identifies {
				t.Fatalf("%s: identified again (%d -> %d)", f.name, before.Identifies, after.Identifies)
			}
		} else {
			// A lost session identifies anew and serves again.
			f.fault()
			waitFor(t, func() bool { return srv.Stats().Identifies >= before.Identifies+f.identify })
			if n := srv.Stats().Identifies; n != before.Identifies+f.identify {
				t.Fatalf("%s: identifies %d -> %d, want +%d", f.name, before.Identifies, n, f.identify)
			}
			waitReady(t, g)
			sn.reset()
			dispatch(t, srv, 0, 20)
			exactlyOnce(t, sn.waitN(t, 20), 20)
			sn.reset()
			next = 0
		}
		if v := srv.Stats().Violations; len(v) != 0 {
			t.Fatalf("%s: violations %v", f.name, v)
		}
	}
}

func TestHandOverLosesNothing(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithMaxConcurrency(4),
		discordtest.WithIdentifyWindow(time.Nanosecond))
	defer srv.Close()
	sn := newSeen()
	ids := []int{0, 1, 2, 3}
	old := newGroup(t, srv, ids, 4, nil, sn.listener())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	old.Start(ctx)
	waitReady(t, old)

	// A steady 5,000 events/s while the sessions change hands.
	const total = 3000
	loadDone := make(chan error, 1)
	go func() {
		_, err := srv.Load(context.Background(), discordtest.Load{Events: total, Rate: 5000, Guilds: 8})
		loadDone <- err
	}()
	sn.waitN(t, 500)
	identifies := srv.Stats().Identifies
	sessions, err := old.Stop(context.Background(), true)
	if err != nil || len(sessions) != 4 {
		t.Fatalf("stop: %v, %d sessions", err, len(sessions))
	}
	nw := newGroup(t, srv, ids, 4, sessions, sn.listener())
	nw.Start(ctx)
	defer nw.Stop(context.Background(), false)
	waitReady(t, nw)
	if err := <-loadDone; err != nil {
		t.Fatal(err)
	}
	sent := total
	sn.waitN(t, sent)
	sn.mu.Lock()
	seqs := slices.Clone(sn.seqs)
	sn.mu.Unlock()
	dup := map[[2]int]bool{}
	for _, k := range seqs {
		if dup[k] {
			t.Fatalf("shard %d seq %d seen twice", k[0], k[1])
		}
		dup[k] = true
	}
	if len(seqs) != sent {
		t.Fatalf("saw %d events, sent %d", len(seqs), sent)
	}
	if n := srv.Stats().Identifies; n != identifies {
		t.Fatalf("identifies %d -> %d: the hand-over identified", identifies, n)
	}
	if srv.Stats().Resumes != 4 {
		t.Fatalf("resumes %d, want 4", srv.Stats().Resumes)
	}
}

func TestPanickingListenerKeepsShard(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(2))
	defer srv.Close()
	sn := newSeen()
	boom := bot.WithEventListenerFunc(func(e *events.MessageCreate) {
		if e.Message.Nonce == "0" {
			panic("listener bug")
		}
	})
	g := newGroup(t, srv, []int{0}, 1, nil, sn.listener(), boom)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g.Start(ctx)
	defer g.Stop(context.Background(), false)
	waitReady(t, g)
	dispatch(t, srv, 0, 3)
	sn.waitN(t, 3)
	if g.Group().ListenerPanics() != 1 {
		t.Fatalf("panics %d, want 1", g.Group().ListenerPanics())
	}
	if g.Group().State() != StateReady {
		t.Fatalf("state %s", g.Group().State())
	}
}

func TestFatalClose(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(2), discordtest.WithPrivilegedIntents(0))
	defer srv.Close()
	fatal := make(chan *CloseError, 1)
	g, err := New(Config{ShardIDs: []int{0}, ShardCount: 1, Token: Token(srv.Token()), GatewayURL: srv.GatewayURL(),
		Intents: gateway.IntentMessageContent, IdentifyLimiter: noLimit{}, ClientOptions: []bot.ConfigOpt{quietREST},
		Hooks: Hooks{Fatal: func(_ *Group, e *CloseError) { fatal <- e }}})
	if err != nil {
		t.Fatal(err)
	}
	g.Start(context.Background())
	defer g.Stop(context.Background(), false)
	select {
	case e := <-fatal:
		if e.Code != 4014 {
			t.Fatalf("code %d", e.Code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no fatal close")
	}
	if g.Group().State() != StateStopped {
		t.Fatalf("state %s, want stopped", g.Group().State())
	}
}

// deadGateway accepts TCP connections and closes them at once, as a
// gateway host that is down behind its load balancer; it counts them.
type deadGateway struct {
	ln    net.Listener
	conns chan struct{}
	wg    sync.WaitGroup
}

func newDeadGateway(t *testing.T) *deadGateway {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &deadGateway{ln: ln, conns: make(chan struct{}, 1000)}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
			d.conns <- struct{}{}
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		d.wg.Wait()
	})
	return d
}

func (d *deadGateway) URL() string { return "ws://" + d.ln.Addr().String() }

// A stored session whose resume URL does not answer is dropped after a
// few attempts; the shard identifies and serves, and the dead session is
// not handed back as if it were live.
func TestDeadResumeURLFallsBackToIdentify(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(2), discordtest.WithRecommendedShards(1))
	defer srv.Close()
	dead := newDeadGateway(t)
	g := newGroup(t, srv, []int{0}, 1, map[int]Session{0: {ShardID: 0, ShardCount: 1, SessionID: "gone", Sequence: 7, ResumeURL: dead.URL()}})
	g.Start(context.Background())
	waitReady(t, g)
	sessions, err := g.Stop(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(dead.conns); n != maxResumeFailures {
		t.Fatalf("the dead resume URL was dialled %d times, want %d", n, maxResumeFailures)
	}
	if st := srv.Stats(); st.Identifies != 1 {
		t.Fatalf("%d IDENTIFYs, want 1", st.Identifies)
	}
	if s := sessions[0]; s.SessionID == "gone" || s.ResumeURL != srv.ResumeURL() {
		t.Fatalf("handed back %+v, want the new session", s)
	}
}

// A RESUME the gateway closes with 4002 (here: a session ID that makes it
// longer than 4096 bytes) is not retried forever.
func TestRejectedResumeFallsBackToIdentify(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(2), discordtest.WithRecommendedShards(1))
	defer srv.Close()
	huge := strings.Repeat("x", 5000)
	g := newGroup(t, srv, []int{0}, 1, map[int]Session{0: {ShardID: 0, ShardCount: 1, SessionID: huge, Sequence: 7, ResumeURL: srv.ResumeURL()}})
	g.Start(context.Background())
	waitReady(t, g)
	defer g.Stop(context.Background(), false)
	st := srv.Stats()
	if n := st.Violations["payload_too_large"]; n != maxResumeFailures {
		t.Fatalf("%d RESUMEs closed with 4002, want %d", n, maxResumeFailures)
	}
	if st.Identifies != 1 {
		t.Fatalf("%d IDENTIFYs, want 1", st.Identifies)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// A gateway that cannot be reached is a warning with its cause, not
// repeated for every retry.
func TestDialFailuresWarnOnce(t *testing.T) {
	srv := discordtest.NewServer() // only for a token of the right shape
	defer srv.Close()
	dead := newDeadGateway(t)
	var logs syncBuffer
	g, err := New(Config{ShardIDs: []int{0}, ShardCount: 1, Token: Token(srv.Token()), GatewayURL: dead.URL(),
		IdentifyLimiter: noLimit{}, ClientOptions: []bot.ConfigOpt{quietREST},
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	g.Start(context.Background())
	for range 3 {
		<-dead.conns
	}
	if _, err := g.Stop(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if n := strings.Count(out, "gateway dial failed"); n != 1 {
		t.Fatalf("%d dial warnings for 3 failed dials, want 1:\n%s", n, out)
	}
	// The cause follows the wrapper: EOF, a reset or a bad handshake,
	// depending on when the dead gateway's close reaches the dialler.
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, `err="dial gateway: `) {
		t.Fatalf("the warning does not give the cause:\n%s", out)
	}
	if strings.Contains(out, srv.Token()) {
		t.Fatal("the token is in the log")
	}
}

// A hand-over that finds an IDENTIFY sent but unanswered (the gateway
// holds it) waits for its READY and hands that session over, rather than
// leaving it live on the gateway with nobody reading it; if the stop's
// ctx ends first it gives up and no session is left behind.
func TestHandOverWaitsForHeldIdentify(t *testing.T) {
	for _, release := range []bool{true, false} {
		t.Run(fmt.Sprintf("released=%t", release), func(t *testing.T) {
			srv := discordtest.NewServer(discordtest.WithGuilds(2), discordtest.WithRecommendedShards(1))
			defer srv.Close()
			srv.HoldShard(0)
			sent := make(chan struct{}, 1)
			g, err := New(Config{ShardIDs: []int{0}, ShardCount: 1, Token: Token(srv.Token()), GatewayURL: srv.GatewayURL(),
				Intents: gateway.IntentGuilds, IdentifyLimiter: noLimit{}, ClientOptions: []bot.ConfigOpt{quietREST},
				Hooks: Hooks{Identify: func(*Group, int, time.Duration) { sent <- struct{}{} }}})
			if err != nil {
				t.Fatal(err)
			}
			g.Start(context.Background())
			<-sent
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			type result struct {
				sessions map[int]Session
				err      error
			}
			stopped := make(chan result, 1)
			go func() {
				s, err := g.Stop(ctx, true)
				stopped <- result{s, err}
			}()
			if release {
				srv.ReleaseShard(0)
			} else {
				cancel()
			}
			r := <-stopped
			st := srv.Stats()
			if !release {
				if len(r.sessions) != 0 || st.Sessions != 0 {
					t.Fatalf("gave up with sessions %v; %d live on the gateway, want none", r.sessions, st.Sessions)
				}
				return
			}
			if r.err != nil || r.sessions[0].SessionID == "" {
				t.Fatalf("stop: %v, sessions %v: want the held IDENTIFY's session", r.err, r.sessions)
			}
			if st.Identifies != 1 || st.Sessions != 1 {
				t.Fatalf("%d IDENTIFYs, %d sessions live, want 1 and 1", st.Identifies, st.Sessions)
			}
		})
	}
}
