package runtime

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	devents "github.com/disgoorg/disgo/events"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/shardgroup"
)

// tally counts each message as user code saw it, by the unique ID in its
// content, and which generation delivered it.
type tally struct {
	mu      sync.Mutex
	seen    map[string]int
	byCount map[int]int // deliveries by the delivering group's shard count
	wrong   int         // delivered by a shard that does not own the guild
	lagGen  atomic.Int64
}

func newTally() *tally { return &tally{seen: map[string]int{}, byCount: map[int]int{}} }

// bot records every MESSAGE_CREATE; a second listener takes 2 ms per
// event in the generation whose shard count lagGen holds.
func (l *tally) bot(int) Bot {
	return BotFunc(func(_ context.Context, g *shardgroup.Group) error {
		g.Client().AddEventListeners(bot.NewListenerFunc(func(e *devents.MessageCreate) {
			gid, _ := strconv.ParseUint(e.GuildID.String(), 10, 64)
			l.mu.Lock()
			l.seen[e.Message.Content]++
			l.byCount[g.ShardCount()]++
			if discordtest.ShardFor(gid, g.ShardCount()) != e.ShardID() {
				l.wrong++
			}
			l.mu.Unlock()
		}), bot.NewListenerFunc(func(*devents.MessageCreate) {
			if l.lagGen.Load() == int64(g.ShardCount()) {
				time.Sleep(2 * time.Millisecond) // a slow listener, not synchronisation
			}
		}))
		return nil
	})
}

// check reports messages 0..n-1 that user code saw other than once.
func (l *tally) check(n int) (lost, dup int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range n {
		switch l.seen["m"+strconv.Itoa(i)] {
		case 0:
			lost++
		case 1:
		default:
			dup++
		}
	}
	return lost, dup
}

// stream sends MESSAGE_CREATEs from, from+1, ... at rate per second over
// the server's guilds, each with its unique ID in its content, until it
// has sent n or stop closes; it returns the next ID.
func stream(s *discordtest.Server, rate, from, n int, stop <-chan struct{}) int {
	start := time.Now()
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	next := from
	for next < from+n {
		select {
		case <-stop:
			return next
		case <-t.C:
		}
		for due := from + min(n, int(time.Since(start).Seconds()*float64(rate))); next < due; next++ {
			g := s.GuildID(next % s.Guilds())
			_, _ = s.Dispatch(g, "MESSAGE_CREATE", s.MessageCreate(g, "m"+strconv.Itoa(next), next))
		}
	}
	return next
}

// TestReshardExactlyOnce reshards 8 -> 16 -> 8 ... ten times each way,
// each while 3,000 messages a second arrive from the moment the first new
// shard has its guilds until 50 ms after the cut-over,
// with the old generation keeping up and with it lagging (one listener
// taking 2 ms per event): user code sees every message once.
func TestReshardExactlyOnce(t *testing.T) {
	// Each burst runs from the first new shard's guilds to 50 ms after the
	// cut-over, with at most 150 ms before it.
	// Under -race, five each way keep the suite short.
	const rate, maxBurst, after = 3000, 450, 150
	runs := 10
	if raceEnabled {
		runs = 5
	}
	for _, lag := range []bool{false, true} {
		t.Run(map[bool]string{false: "prompt", true: "lagging"}[lag], func(t *testing.T) {
			s := discordtest.NewServer(discordtest.WithGuilds(64), discordtest.WithRecommendedShards(8),
				discordtest.WithMaxConcurrency(8), discordtest.WithIdentifyWindow(5*time.Millisecond),
				discordtest.WithSessionStartLimit(10000, time.Hour), discordtest.WithRouteRateLimit(1000, time.Second))
			defer s.Close()
			l := newTally()
			cfg := testConfig(s)
			cfg.Bot, cfg.Clusters = l.bot, 2
			rt, stop := startFleet(t, cfg)
			defer stop()
			cuts := 0
			var begin, cut atomic.Pointer[chan struct{}]
			rt.Subscribe(func(e Event) {
				switch e := e.(type) {
				case ReshardCutOver:
					cuts++
					close(*cut.Load())
				case ReshardProgress:
					if e.Loaded != 1 {
						break
					}
					close(*begin.Load()) // the first new shard has its guilds
				}
			})

			counts := []int{16, 8}
			n := 0
			for i := range 2 * runs {
				to := counts[i%2]
				if lag {
					l.lagGen.Store(int64(24 - to)) // the generation being replaced
				}
				halt, started, over := make(chan struct{}), make(chan struct{}), make(chan struct{})
				begin.Store(&started)
				cut.Store(&over)
				sent := make(chan int, 1)
				go func() {
					select {
					case <-started:
					case <-halt:
					}
					next := stream(s, rate, n, maxBurst, over)
					sent <- stream(s, rate, next, after, halt)
				}()
				err := rt.Reshard(context.Background(), ReshardOptions{Shards: to, Clusters: 2})
				if err != nil {
					close(halt)
				}
				n = <-sent
				if err != nil {
					t.Fatalf("reshard %d to %d: %v", i, to, err)
				}
			}
			waitFor(t, func() bool {
				l.mu.Lock()
				defer l.mu.Unlock()
				return len(l.seen) >= n
			})
			lost, dup := l.check(n)
			l.mu.Lock()
			wrong, by := l.wrong, l.byCount
			l.mu.Unlock()
			t.Logf("%d reshards, %d messages: %d lost, %d duplicated; delivered by 8 shards %d, by 16 %d", 2*runs, n, lost, dup, by[8], by[16])
			if lost != 0 || dup != 0 || wrong != 0 {
				t.Fatalf("%d messages: %d lost, %d duplicated, %d delivered by a shard that does not own the guild", n, lost, dup, wrong)
			}
			// Both generations delivered in each direction: the held
			// events after the cut-over reached user code.
			if cuts != 2*runs || by[8] < after*runs || by[16] < after*runs {
				t.Fatalf("%d cut-overs; deliveries by generation %v", cuts, by)
			}
			if v := s.Stats().Violations; len(v) != 0 {
				t.Fatalf("violations %v", v)
			}
		})
	}
}

// TestReshardWaitsForInvalidatedShard invalidates a new shard's session
// after every new shard has its guilds, before the cut-over: the cut-over
// waits for its new session, and nothing is lost meanwhile.
func TestReshardWaitsForInvalidatedShard(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(64), discordtest.WithRecommendedShards(8),
		discordtest.WithMaxConcurrency(8), discordtest.WithIdentifyWindow(5*time.Millisecond), discordtest.WithRouteRateLimit(1000, time.Second))
	defer s.Close()
	l := newTally()
	cfg := testConfig(s)
	cfg.Bot, cfg.Clusters = l.bot, 2
	rt, stop := startFleet(t, cfg)
	defer stop()
	const victim = 12 // a shard only the new generation has
	var mu sync.Mutex
	var invalidated, cut time.Time
	rt.Subscribe(func(e Event) {
		mu.Lock()
		defer mu.Unlock()
		switch e := e.(type) {
		case ReshardProgress:
			if e.Loaded == e.Of {
				s.InvalidateSession(victim, false)
				invalidated = time.Now()
			}
		case ReshardCutOver:
			cut = time.Now()
		}
	})
	halt := make(chan struct{})
	sent := make(chan int, 1)
	go func() { sent <- stream(s, 3000, 0, 900, halt) }()
	err := rt.Reshard(context.Background(), ReshardOptions{Shards: 16, Clusters: 2})
	n := <-sent
	if err != nil {
		t.Fatal(err)
	}
	var again time.Time
	for _, id := range s.Identifies() {
		if id.Shard == victim && id.Shards == 16 {
			again = id.At
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if invalidated.IsZero() || !again.After(invalidated) || !cut.After(again) {
		t.Fatalf("invalidated at %v, shard %d identified again at %v, cut-over at %v: want the cut-over after the new session",
			invalidated, victim, again, cut)
	}
	waitFor(t, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.seen) >= n
	})
	if lost, dup := l.check(n); lost != 0 || dup != 0 {
		t.Fatalf("%d messages: %d lost, %d duplicated", n, lost, dup)
	}
}

func TestShutdownDuringReshard(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(16), discordtest.WithRecommendedShards(2),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	rt, stop := startFleet(t, testConfig(s))
	s.HoldShard(3) // one shard of the new generation never gets READY
	defer s.ReleaseShard(3)
	started := make(chan struct{})
	rt.Subscribe(func(e Event) {
		if _, ok := e.(ReshardStarted); ok {
			close(started)
		}
	})
	resharded := make(chan error, 1)
	go func() { resharded <- rt.Reshard(context.Background(), ReshardOptions{Shards: 4}) }()
	<-started
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := <-resharded; !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Reshard: %v, want ErrNotRunning", err)
	}
}

// A reshard replaces a fleet one of whose clusters failed before it ever
// ran a group: the new generation covers that cluster's guilds too, and
// delivers every message once.
func TestReshardReplacesAFailedCluster(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(32), discordtest.WithRecommendedShards(2),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(5*time.Millisecond), discordtest.WithRouteRateLimit(1000, time.Second))
	defer s.Close()
	l := newTally()
	var broken atomic.Bool
	broken.Store(true)
	cfg := testConfig(s)
	cfg.Clusters, cfg.MaxRestarts, cfg.RestartBackoff = 2, 1, time.Millisecond
	cfg.Bot = func(id int) Bot {
		if id == 1 && broken.Load() {
			return BotFunc(func(context.Context, *shardgroup.Group) error { return errors.New("broken setup") })
		}
		return l.bot(id)
	}
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	failed := make(chan ClusterFailed, 1)
	ready := make(chan ClusterReady, 1)
	rt.Subscribe(func(e Event) {
		switch e := e.(type) {
		case ClusterFailed:
			select {
			case failed <- e:
			default:
			}
		case ClusterReady:
			select {
			case ready <- e:
			default:
			}
		}
	})
	stop := runUntil(t, rt)
	defer stop()
	if e := waitEvent(t, failed); e.Cluster != 1 {
		t.Fatalf("cluster %d failed, want 1", e.Cluster)
	}
	if e := waitEvent(t, ready); e.Cluster != 0 { // the healthy cluster serves
		t.Fatalf("cluster %d ready, want 0", e.Cluster)
	}
	broken.Store(false)
	if err := rt.Reshard(context.Background(), ReshardOptions{Shards: 4, Clusters: 2}); err != nil {
		t.Fatalf("Reshard with a failed cluster: %v", err)
	}
	const n = 200
	for i := range n {
		gid := s.GuildID(i % 32)
		if _, err := s.Dispatch(gid, "MESSAGE_CREATE", s.MessageCreate(gid, "m"+strconv.Itoa(i), 1)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.seen) >= n
	})
	if lost, dup := l.check(n); lost != 0 || dup != 0 {
		t.Fatalf("%d messages after the reshard: %d lost, %d duplicated", n, lost, dup)
	}
}
