package main

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/events"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

func init() { register("reshard", runReshard) }

type reshardResult struct {
	Scenario        string       `json:"scenario"`
	EventsPerSec    int          `json:"events_per_sec"`
	MaxConcurrency  int          `json:"max_concurrency"`
	IntervalMS      int          `json:"interval_ms"`
	Events          int          `json:"events"`
	LostEvents      int          `json:"lost_events"`
	DuplicateEvents int          `json:"duplicate_events"`
	Violations      int          `json:"identify_violations"`
	Runs            []reshardRun `json:"runs"`
}

type reshardRun struct {
	From            int     `json:"from"`
	To              int     `json:"to"`
	Lagging         bool    `json:"lagging"` // one old-generation listener takes 2 ms per event
	DurationS       float64 `json:"duration_s"`
	CutOverS        float64 `json:"cut_over_s"`
	LimitS          float64 `json:"limit_s"` // identify windows the new shards need
	Events          int     `json:"events"`
	LostEvents      int     `json:"lost_events"`
	DuplicateEvents int     `json:"duplicate_events"`
	Violations      int     `json:"identify_violations"`
}

// runReshard reshards 8 -> 16 and 16 -> 8 shards, each with the old
// generation keeping up and lagging, while 3,000 messages a second, each
// with a unique ID in its content, arrive from 300 ms before the reshard
// until 300 ms after it; it reports what user code lost or saw twice.
func runReshard() (any, error) {
	const rate, mc, interval = 3000, 4, 100 * time.Millisecond
	res := reshardResult{Scenario: "reshard", EventsPerSec: rate, MaxConcurrency: mc, IntervalMS: int(interval.Milliseconds())}
	for _, c := range []struct {
		from, to int
		lag      bool
	}{{8, 16, false}, {8, 16, true}, {16, 8, false}, {16, 8, true}} {
		run, err := reshardOnce(c.from, c.to, c.lag, rate, mc, interval)
		if err != nil {
			return nil, fmt.Errorf("reshard %d -> %d (lagging %t): %w", c.from, c.to, c.lag, err)
		}
		res.Runs = append(res.Runs, run)
		res.Events += run.Events
		res.LostEvents += run.LostEvents
		res.DuplicateEvents += run.DuplicateEvents
		res.Violations += run.Violations
	}
	return res, nil
}

func reshardOnce(from, to int, lag bool, rate, mc int, interval time.Duration) (reshardRun, error) {
	s := discordtest.NewServer(discordtest.WithGuilds(256), discordtest.WithRecommendedShards(from),
		discordtest.WithMaxConcurrency(mc), discordtest.WithIdentifyWindow(interval))
	defer s.Close()
	var mu sync.Mutex
	seen := map[string]int{}
	b := func(int) runtime.Bot {
		return runtime.BotFunc(func(_ context.Context, g *shardgroup.Group) error {
			old := g.ShardCount() == from
			g.Client().AddEventListeners(bot.NewListenerFunc(func(e *events.MessageCreate) {
				mu.Lock()
				seen[e.Message.Content]++
				mu.Unlock()
			}), bot.NewListenerFunc(func(*events.MessageCreate) {
				if lag && old {
					time.Sleep(2 * time.Millisecond) // the lagging listener under test
				}
			}))
			return nil
		})
	}
	rt, err := runtime.New(runtime.Config{
		Token: runtime.Token(s.Token()), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		IdentifyInterval: interval, Clusters: 2, Bot: b,
	})
	if err != nil {
		return reshardRun{}, err
	}
	var cutAt time.Time
	rt.Subscribe(func(e runtime.Event) {
		if _, ok := e.(runtime.ReshardCutOver); ok {
			cutAt = time.Now()
		}
	})
	go rt.Run(context.Background())
	if err := awaitFleet(s, from, rt); err != nil {
		return reshardRun{}, err
	}

	// The stream: a message per 1/rate s, each to the next guild.
	ctx, cancel := context.WithCancel(context.Background())
	sent := make(chan int, 1)
	go func() {
		n, start := 0, time.Now()
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				sent <- n
				return
			case <-t.C:
			}
			for due := int(time.Since(start).Seconds() * float64(rate)); n < due; n++ {
				g := s.GuildID(n % s.Guilds())
				_, _ = s.Dispatch(g, "MESSAGE_CREATE", s.MessageCreate(g, "m"+strconv.Itoa(n), n))
			}
		}
	}()
	time.Sleep(300 * time.Millisecond) // traffic before the reshard
	start := time.Now()
	rctx, rcancel := context.WithTimeout(context.Background(), fleetReadyBound(s, to))
	err = rt.Reshard(rctx, runtime.ReshardOptions{Shards: to, Clusters: 2})
	rcancel()
	duration := time.Since(start)
	if err == nil {
		time.Sleep(300 * time.Millisecond) // traffic after it
	}
	cancel()
	n := <-sent
	if err != nil {
		return reshardRun{}, err
	}
	// Wait for user code to have seen every message, up to 10 s; what is
	// still missing then is lost.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		got := len(seen)
		mu.Unlock()
		if got >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := rt.Shutdown(sctx); err != nil {
		return reshardRun{}, err
	}
	if <-rt.Done(); rt.Err() != nil {
		return reshardRun{}, rt.Err()
	}
	run := reshardRun{From: from, To: to, Lagging: lag, DurationS: duration.Seconds(), CutOverS: cutAt.Sub(start).Seconds(),
		LimitS: math.Ceil(float64(to)/float64(mc)) * interval.Seconds(), Events: n,
		Violations: s.Stats().Violations["identify_concurrency"]}
	mu.Lock()
	defer mu.Unlock()
	for i := range n {
		switch seen["m"+strconv.Itoa(i)] {
		case 0:
			run.LostEvents++
		case 1:
		default:
			run.DuplicateEvents++
		}
	}
	return run, nil
}
