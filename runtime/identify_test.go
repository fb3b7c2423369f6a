package runtime

import (
	"context"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/internal/clock"
)

// identifyStep is one row of an identify queue step table: the clock
// moves to at, then the READYs of unlock arrive, the waits of cancel are
// given up, and the shards of wait queue, in that order. By the end of the step exactly
// the shards of pass have been let through, and those of gaveUp have
// returned their ctx's error.
type identifyStep struct {
	at                   time.Duration // since t0
	unlock, cancel, wait []int
	pass, gaveUp         []int
}

func runIdentifySteps(t *testing.T, q *LocalIdentifyQueue, steps []identifyStep) {
	t.Helper()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	fake := clock.NewFake(t0)
	q.clock = fake
	type result struct {
		shard int
		err   error
	}
	results := make(chan result, 64)
	cancels := map[int]context.CancelFunc{}
	defer func() {
		for _, cancel := range cancels {
			cancel()
		}
		synctest.Wait()
	}()
	for i, s := range steps {
		fake.Set(t0.Add(s.at))
		for _, sh := range s.unlock {
			q.UnlockBucket(sh)
		}
		for _, sh := range s.cancel {
			cancels[sh]()
		}
		for _, sh := range s.wait {
			ctx, cancel := context.WithCancel(context.Background())
			cancels[sh] = cancel
			go func() { results <- result{sh, q.WaitBucket(ctx, sh)} }()
			synctest.Wait() // queued in the order listed
		}
		synctest.Wait() // every waiter has passed, given up or blocked
		var pass, gaveUp []int
		for len(results) > 0 {
			r := <-results
			if r.err == nil {
				pass = append(pass, r.shard)
			} else {
				gaveUp = append(gaveUp, r.shard)
			}
		}
		slices.Sort(pass)
		slices.Sort(gaveUp)
		if !slices.Equal(pass, s.pass) || !slices.Equal(gaveUp, s.gaveUp) {
			t.Fatalf("step %d (at %s): passed %v and gave up %v; want %v and %v", i, s.at, pass, gaveUp, s.pass, s.gaveUp)
		}
	}
}

func TestLocalIdentifyQueueSteps(t *testing.T) {
	const ms = time.Millisecond
	synctest.Test(t, func(t *testing.T) {
		// Two buckets (shard % 2), an IDENTIFY per bucket every 5 s,
		// counted from the previous one's READY.
		q, err := NewLocalIdentifyQueue(2, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		runIdentifySteps(t, q, []identifyStep{
			{at: 0, wait: []int{0, 1, 2}, pass: []int{0, 1}}, // one per bucket: 2 queues behind 0
			{at: 1000 * ms, wait: []int{3}},                  // bucket 1 is busy until 1's READY
			{at: 2000 * ms, unlock: []int{0}},                // 0's READY: 2 goes 5 s later
			{at: 6999 * ms},
			{at: 7000 * ms, pass: []int{2}},
			{at: 8000 * ms, unlock: []int{1}}, // 3 goes at 13 s
			{at: 9000 * ms, cancel: []int{3}, gaveUp: []int{3}},
			{at: 10000 * ms, wait: []int{5}}, // the turn 3 gave back: still not before 13 s
			{at: 12999 * ms},
			{at: 13000 * ms, wait: []int{4}, pass: []int{5}}, // bucket 0 waits for 2's READY
			{at: 20000 * ms, unlock: []int{2}},               // 4 goes 5 s after 2's READY
			{at: 24999 * ms},
			{at: 25000 * ms, pass: []int{4}},
			{at: 25000 * ms, unlock: []int{4, 5}, wait: []int{6, 7}}, // both READYs just now: both wait 5 s
			{at: 29999 * ms},
			{at: 30000 * ms, pass: []int{6, 7}},
		})
	})
}

// askingQueue records, at each WaitBucket, how many connections the
// gateway has accepted and how many turns were granted before; with
// hold, no turn is granted before hold shards have asked.
type askingQueue struct {
	q    *LocalIdentifyQueue
	s    *discordtest.Server
	hold int

	mu      sync.Mutex // guards the fields below
	asked   int
	granted int
	seen    [][2]int      // connections, grants: at each ask
	all     chan struct{} // closed when hold shards have asked
}

func (a *askingQueue) WaitBucket(ctx context.Context, shard int) error {
	conns := a.s.Stats().Connections
	a.mu.Lock()
	a.seen = append(a.seen, [2]int{conns, a.granted})
	a.asked++
	if a.asked == a.hold {
		close(a.all)
	}
	a.mu.Unlock()
	if a.hold > 0 {
		select {
		case <-a.all:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	err := a.q.WaitBucket(ctx, shard)
	if err == nil {
		a.mu.Lock()
		a.granted++
		a.mu.Unlock()
	}
	return err
}

func (a *askingQueue) UnlockBucket(shard int)    { a.q.UnlockBucket(shard) }
func (a *askingQueue) Close(ctx context.Context) { a.q.Close(ctx) }

// TestConnectAhead: by default a shard of each bucket connects ahead of
// its turn, so the gateway never has more connections than the turns
// granted plus max_concurrency; with ConnectAhead negative every shard
// connects (and asks for its turn) at once.
func TestConnectAhead(t *testing.T) {
	const shards, mc = 8, 2
	for _, tc := range []struct {
		name  string
		ahead int
		hold  int // grant nothing until this many asked
	}{
		{"default", 0, 0},
		{"at once", -1, shards},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := discordtest.NewServer(discordtest.WithGuilds(shards), discordtest.WithRecommendedShards(shards),
				discordtest.WithMaxConcurrency(mc), discordtest.WithIdentifyWindow(time.Millisecond))
			defer s.Close()
			lq, err := NewLocalIdentifyQueue(mc, time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			q := &askingQueue{q: lq, s: s, hold: tc.hold, all: make(chan struct{})}
			cfg := testConfig(s)
			cfg.IdentifyQueue, cfg.ConnectAhead, cfg.Clusters = q, tc.ahead, 2
			rt, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			stop := runUntil(t, rt)
			waitReady(t, rt)
			if err := stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			st := s.Stats()
			if len(st.Violations) != 0 || st.Identifies != shards || st.Connections != shards {
				t.Fatalf("violations %v, %d IDENTIFYs and %d connections; want none, %d and %d", st.Violations, st.Identifies, st.Connections, shards, shards)
			}
			q.mu.Lock()
			defer q.mu.Unlock()
			if len(q.seen) != shards {
				t.Fatalf("%d asks, want %d", len(q.seen), shards)
			}
			if tc.ahead >= 0 {
				for i, at := range q.seen {
					if at[0] > at[1]+mc {
						t.Fatalf("ask %d: %d connections with %d turns granted; want at most %d", i, at[0], at[1], at[1]+mc)
					}
				}
			}
		})
	}
}
