package shardgroup

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/gateway"

	"github.com/gofleet/fleet/discordtest"
)

func TestNewPacerRejectsBadInput(t *testing.T) {
	for _, tc := range []struct {
		buckets, ahead int
		want           string
	}{
		{0, 1, "buckets is 0"},
		{16, 0, "ahead is 0"},
		{16, -2, "ahead is -2"},
	} {
		_, err := NewPacer(tc.buckets, tc.ahead)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewPacer(%d, %d) = %v, want an error saying %q", tc.buckets, tc.ahead, err, tc.want)
		}
	}
}

// waiting is how many shards of bucket b wait for a place, and how many
// places are taken.
func (p *Pacer) waiting(b int) (waiting, taken int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.buckets[b].waiting), p.buckets[b].taken
}

// waitPacer waits until bucket b of p has want waiters.
func waitPacer(t *testing.T, p *Pacer, b, want int) {
	t.Helper()
	waitFor(t, func() bool { n, _ := p.waiting(b); return n == want })
}

// TestPacerOrder: places go by bucket, in the order of the shard IDs
// waiting; a wait ended by its ctx or a stop takes none and leaves the
// line, and a place given as a wait ends goes to the next shard.
func TestPacerOrder(t *testing.T) {
	p, err := NewPacer(2, 1)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := p.wait(ctx, nil, 4); err != nil { // bucket 0
		t.Fatal(err)
	}
	if err := p.wait(ctx, nil, 1); err != nil { // bucket 1: a place of its own
		t.Fatal(err)
	}
	got := make(chan int, 8)
	waitAsync := func(ctx context.Context, stop <-chan struct{}, shard int) <-chan error {
		errc := make(chan error, 1)
		go func() {
			err := p.wait(ctx, stop, shard)
			if err == nil {
				got <- shard
			}
			errc <- err
		}()
		return errc
	}
	e6 := waitAsync(ctx, nil, 6)
	waitPacer(t, p, 0, 1)
	e2 := waitAsync(ctx, nil, 2)
	waitPacer(t, p, 0, 2)
	cctx, cancel := context.WithCancel(ctx)
	e0 := waitAsync(cctx, nil, 0)
	waitPacer(t, p, 0, 3)
	stop := make(chan struct{})
	e8 := waitAsync(ctx, stop, 8)
	waitPacer(t, p, 0, 4)

	cancel()
	if err := <-e0; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait = %v, want context.Canceled", err)
	}
	close(stop)
	if err := <-e8; !errors.Is(err, errStopped) {
		t.Fatalf("stopped wait = %v, want errStopped", err)
	}
	if n, taken := p.waiting(0); n != 2 || taken != 1 {
		t.Fatalf("bucket 0: %d waiting, %d taken; want 2 and 1", n, taken)
	}
	p.release(4)
	if s := <-got; s != 2 {
		t.Fatalf("first place to shard %d, want 2 (the lowest ID waiting)", s)
	}
	p.release(2)
	if s := <-got; s != 6 {
		t.Fatalf("next place to shard %d, want 6", s)
	}
	for _, errc := range []<-chan error{e2, e6} {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	p.release(6)
	p.release(1)
	for b := range 2 {
		if n, taken := p.waiting(b); n != 0 || taken != 0 {
			t.Fatalf("bucket %d: %d waiting, %d taken after every release; want 0 and 0", b, n, taken)
		}
	}
}

// gatedLimiter grants a turn only when the test says so: each WaitBucket
// is announced on asked and waits on its shard's channel of turns.
type gatedLimiter struct {
	asked chan int
	turns map[int]chan struct{}
}

func newGatedLimiter(shards int) *gatedLimiter {
	l := &gatedLimiter{asked: make(chan int, shards), turns: map[int]chan struct{}{}}
	for i := range shards {
		l.turns[i] = make(chan struct{}, 1)
	}
	return l
}

func (l *gatedLimiter) WaitBucket(ctx context.Context, shard int) error {
	l.asked <- shard
	select {
	case <-l.turns[shard]:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *gatedLimiter) UnlockBucket(int) {}

func (l *gatedLimiter) next(t *testing.T) int {
	t.Helper()
	select {
	case s := <-l.asked:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no shard asked for its turn")
		return -1
	}
}

func pacedGroup(t *testing.T, srv *discordtest.Server, shards int, p *Pacer, l IdentifyLimiter) *Runner {
	t.Helper()
	ids := make([]int, shards)
	for i := range ids {
		ids[i] = i
	}
	r, err := New(Config{ID: 1, ShardIDs: ids, ShardCount: shards, Token: Token(srv.Token()), GatewayURL: srv.GatewayURL(),
		Intents: gateway.IntentGuilds, IdentifyLimiter: l, Pacer: p, ClientOptions: []bot.ConfigOpt{quietREST}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestPacedShardsConnectInTurn: with one shard of a bucket ahead, a
// bucket's next shard (the lowest ID waiting) connects only once the one
// before is granted its turn, the gateway never has more connections than
// the shards granted plus one per bucket, and every shard becomes ready
// on one connection each.
func TestPacedShardsConnectInTurn(t *testing.T) {
	const shards, buckets = 6, 2
	srv := discordtest.NewServer(discordtest.WithGuilds(shards), discordtest.WithMaxConcurrency(shards))
	defer srv.Close()
	p, err := NewPacer(buckets, 1)
	if err != nil {
		t.Fatal(err)
	}
	l := newGatedLimiter(shards)
	r := pacedGroup(t, srv, shards, p, l)
	r.Start(context.Background())
	defer r.Stop(context.Background(), false)

	first := map[int]int{} // by bucket, the shard that asked
	for range buckets {
		s := l.next(t)
		first[s%buckets] = s
	}
	if len(first) != buckets {
		t.Fatalf("the first shards to ask are of buckets %v, want one of each", first)
	}
	for b := range buckets {
		waitPacer(t, p, b, shards/buckets-1)
	}
	granted := 0
	left := map[int][]int{} // by bucket, the shards not yet connected, by ID
	for s := range shards {
		if first[s%buckets] != s {
			left[s%buckets] = append(left[s%buckets], s)
		}
	}
	turn := func(s int) {
		t.Helper()
		if n := srv.Stats().Connections; n > granted+buckets {
			t.Fatalf("%d connections with %d shards granted: want at most %d", n, granted, granted+buckets)
		}
		l.turns[s] <- struct{}{}
		granted++
	}
	for b := range buckets {
		s := first[b]
		for len(left[b]) > 0 {
			turn(s)
			next := l.next(t)
			if next != left[b][0] {
				t.Fatalf("after shard %d was granted, shard %d asked; want %d (bucket %d's lowest ID waiting)", s, next, left[b][0], b)
			}
			s, left[b] = next, left[b][1:]
		}
		turn(s)
	}
	waitReady(t, r)
	st := srv.Stats()
	if st.Connections != shards || st.Identifies != shards {
		t.Fatalf("%d connections and %d IDENTIFYs for %d shards, want one each", st.Connections, st.Identifies, shards)
	}
	for b := range buckets {
		if n, taken := p.waiting(b); n != 0 || taken != 0 {
			t.Fatalf("bucket %d: %d waiting, %d places taken once every shard is ready; want 0 and 0", b, n, taken)
		}
	}
}

// TestStopWhilePaced: shards waiting for a place, and the one waiting for
// its turn, stop at once, and give their places back.
func TestStopWhilePaced(t *testing.T) {
	const shards = 4
	srv := discordtest.NewServer(discordtest.WithGuilds(shards), discordtest.WithMaxConcurrency(shards))
	defer srv.Close()
	p, err := NewPacer(1, 1)
	if err != nil {
		t.Fatal(err)
	}
	l := newGatedLimiter(shards)
	r := pacedGroup(t, srv, shards, p, l)
	r.Start(context.Background())
	l.next(t)
	waitPacer(t, p, 0, shards-1)
	stopNow(t, r)
	if n, taken := p.waiting(0); n != 0 || taken != 0 {
		t.Fatalf("%d waiting, %d places taken after Stop; want 0 and 0", n, taken)
	}
	if n := srv.Stats().Connections; n != 1 {
		t.Fatalf("%d connections, want 1: the others were never dialled", n)
	}
}
