//go:build !race

// disgo v0.18.15's gateway races with itself when it reconnects: its
// heartbeat goroutine writes the heartbeat cancel func while the listen
// goroutine reads it in CloseWithCode (gateway_impl.go:136 and :237). disgo's
// ShardManager also writes its shard map from several goroutines
// (shard_manager_impl.go:113). These tests drive real disgo shards, so they run without the
// race detector; .ci/run runs them in a second, race-free pass. The fleet's
// own gateway client is tested against the same faults under -race.

package discordtest

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/disgoorg/disgo/gateway"
	"github.com/disgoorg/disgo/sharding"
	"go.uber.org/goleak"
)

// disgoLeaks ignores the two disgo gateway goroutines that nothing can
// stop: a heartbeat loop whose cancel func a reconnect overwrites, and a
// reconnect loop that runs on context.Background.
var disgoLeaks = []goleak.Option{
	goleak.IgnoreTopFunction("github.com/disgoorg/disgo/gateway.(*gatewayImpl).heartbeat"),
	goleak.IgnoreTopFunction("github.com/disgoorg/disgo/gateway.(*gatewayImpl).reconnectTry"),
}

// serialLimiter lets one shard open at a time. disgo's ShardManager writes
// its shard map from one goroutine per shard; serialising the opens keeps
// that race-free.
type serialLimiter struct{ mu sync.Mutex }

func (l *serialLimiter) Close(context.Context) {}
func (l *serialLimiter) WaitBucket(ctx context.Context, _ int) error {
	l.mu.Lock()
	return nil
}
func (l *serialLimiter) UnlockBucket(int) { l.mu.Unlock() }

// recorder collects what disgo's shards deliver.
type recorder struct {
	mu       sync.Mutex
	ready    map[int]int
	resumed  map[int]int
	guilds   map[int][]uint64
	messages map[int][]int // sequence numbers of MESSAGE_CREATE and RESUMED by shard
	changed  chan struct{}
}

func newRecorder() *recorder {
	return &recorder{ready: map[int]int{}, resumed: map[int]int{}, guilds: map[int][]uint64{},
		messages: map[int][]int{}, changed: make(chan struct{}, 1)}
}

func (r *recorder) handle(t gateway.EventType, seq, shard int, e gateway.EventData) {
	r.mu.Lock()
	if t == gateway.EventTypeResumed {
		r.resumed[shard]++
		r.messages[shard] = append(r.messages[shard], seq)
	}
	switch ev := e.(type) {
	case gateway.EventReady:
		r.ready[shard]++
	case gateway.EventGuildCreate:
		r.guilds[shard] = append(r.guilds[shard], uint64(ev.ID))
	case gateway.EventMessageCreate:
		r.messages[shard] = append(r.messages[shard], seq)
	}
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// wait blocks until cond holds (checked under the lock after each event).
func (r *recorder) wait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		ok := cond()
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-r.changed:
		case <-timeout:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func openShards(t *testing.T, s *Server, shards int, limiter sharding.RateLimiter, r *recorder) sharding.ShardManager {
	t.Helper()
	ids := make([]int, shards)
	for i := range ids {
		ids[i] = i
	}
	sm := sharding.New(s.Token(), r.handle,
		sharding.WithShardIDs(ids...),
		sharding.WithShardCount(shards),
		sharding.WithRateLimiter(limiter),
		sharding.WithLogger(slog.New(slog.DiscardHandler)),
		sharding.WithGatewayConfigOpts(
			gateway.WithURL(s.GatewayURL()),
			gateway.WithIntents(gateway.IntentGuilds, gateway.IntentGuildMessages),
			gateway.WithLogger(slog.New(slog.DiscardHandler)),
		),
	)
	sm.Open(context.Background())
	t.Cleanup(func() { sm.Close(context.Background()) })
	return sm
}

func TestDisgoShardsGetTheirGuilds(t *testing.T) {
	t.Parallel()
	const shards = 4
	s := NewServer(WithGuilds(40), WithMaxConcurrency(shards), WithIdentifyWindow(time.Nanosecond))
	defer s.Close()
	r := newRecorder()
	sm := openShards(t, s, shards, &serialLimiter{}, r)
	defer sm.Close(context.Background())
	r.wait(t, "every guild", func() bool {
		n := 0
		for _, g := range r.guilds {
			n += len(g)
		}
		return len(r.ready) == shards && n == 40
	})
	for shard := range shards {
		var want []uint64
		for i := range 40 {
			if ShardFor(s.GuildID(i), shards) == shard {
				want = append(want, s.GuildID(i))
			}
		}
		r.mu.Lock()
		got := slices.Clone(r.guilds[shard])
		r.mu.Unlock()
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("shard %d guilds %v, want %v", shard, got, want)
		}
	}
	if v := s.Stats().Violations; len(v) != 0 {
		t.Fatalf("violations %v", v)
	}
}

// gapless reports whether seqs rise by one each step.
func gapless(seqs []int) bool {
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]+1 {
			return false
		}
	}
	return true
}

func TestDisgoResumeLosesNothing(t *testing.T) {
	t.Parallel()
	s := NewServer(WithGuilds(2), WithIdentifyWindow(time.Nanosecond))
	defer s.Close()
	r := newRecorder()
	sm := openShards(t, s, 1, &serialLimiter{}, r)
	defer sm.Close(context.Background())
	r.wait(t, "guilds", func() bool { return len(r.guilds[0]) == 2 })

	send := func(n int) {
		for i := range n {
			if _, err := s.Dispatch(s.GuildID(i%2), "MESSAGE_CREATE", s.MessageCreate(s.GuildID(i%2), "hi", i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	total := 0
	faults := []struct {
		name  string
		fault func()
	}{
		{"dropped connection", func() { s.DropShard(0) }},
		{"close 4000", func() { s.CloseShard(0, CloseUnknownError, "boom") }},
		{"op 7", func() { s.Reconnect(0) }},
		{"op 9 resumable", func() { s.InvalidateSession(0, true) }},
	}
	for _, f := range faults {
		before := s.Stats().Resumes
		send(20)
		f.fault()
		send(30) // sent while the shard reconnects: replayed on RESUME
		total += 50
		total++ // RESUMED
		r.wait(t, f.name+": every message", func() bool { return len(r.messages[0]) == total })
		if got := s.Stats().Resumes; got != before+1 {
			t.Fatalf("%s: resumes %d, want %d", f.name, got, before+1)
		}
	}
	r.mu.Lock()
	msgs := slices.Clone(r.messages[0])
	r.mu.Unlock()
	if !gapless(msgs) {
		t.Fatalf("sequence gap or repeat: %v", msgs)
	}
	if id := s.Stats().Identifies; id != 1 {
		t.Fatalf("identifies %d, want 1 (every fault resumed)", id)
	}

	// op 9 d=false: the session is gone; disgo identifies anew.
	s.InvalidateSession(0, false)
	r.wait(t, "a new READY", func() bool { return r.ready[0] == 2 })
	send(5)
	r.wait(t, "messages on the new session", func() bool { return len(r.messages[0]) == total+5 })
	if id := s.Stats().Identifies; id != 2 {
		t.Fatalf("identifies %d, want 2", id)
	}
}

func TestDisgoIdentifyTooFastIsAViolation(t *testing.T) {
	t.Parallel()
	s := NewServer(WithGuilds(4), WithMaxConcurrency(1), WithIdentifyWindow(time.Hour))
	defer s.Close()
	r := newRecorder()
	// One bucket, two shards, and a limiter that does not wait.
	sm := openShards(t, s, 2, &serialLimiter{}, r)
	defer sm.Close(context.Background())
	waitFor(t, func() bool { return s.Stats().Violations["identify_concurrency"] >= 1 })
	var early []Identify
	for _, id := range s.Identifies() {
		if id.Violation {
			early = append(early, id)
		}
	}
	if len(early) == 0 || early[0].Bucket != 0 {
		t.Fatalf("identifies %+v", s.Identifies())
	}
}
