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
	Scenario        string  `json:"scenario"`
	From            int     `json:"from"`
	To              int     `json:"to"`
	MaxConcurrency  int     `json:"max_concurrency"`
	IntervalMS      int     `json:"interval_ms"`
	DurationS       float64 `json:"duration_s"`
	LimitS          float64 `json:"limit_s"`
	Events          int     `json:"events"`
	LostEvents      int     `json:"lost_events"`
	DuplicateEvents int     `json:"duplicate_events"`
	Violations      int     `json:"identify_violations"`
}

// runReshard reshards 8 -> 16 shards while 2,000 messages a second, each
// with its own nonce, arrive; it reports the time to the cut-over against
// the identify limit for the new shards, and what user code lost or saw
// twice across the cut-over.
func runReshard() (any, error) {
	const from, to, mc, interval, rate = 8, 16, 4, 100 * time.Millisecond, 2000
	s := discordtest.NewServer(discordtest.WithGuilds(256), discordtest.WithRecommendedShards(from),
		discordtest.WithMaxConcurrency(mc), discordtest.WithIdentifyWindow(interval))
	defer s.Close()
	var mu sync.Mutex
	seen := map[string]int{}
	b := func(int) runtime.Bot {
		return runtime.BotFunc(func(_ context.Context, g *shardgroup.Group) error {
			g.Client().AddEventListeners(bot.NewListenerFunc(func(e *events.MessageCreate) {
				mu.Lock()
				seen[string(e.Message.Nonce)]++
				mu.Unlock()
			}))
			return nil
		})
	}
	rt, err := runtime.New(runtime.Config{
		Token: runtime.Token(s.Token()), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		IdentifyInterval: interval, Clusters: 2, Bot: b,
	})
	if err != nil {
		return nil, err
	}
	ready := make(chan struct{}, 1)
	rt.Subscribe(func(e runtime.Event) {
		if e.Kind == runtime.EventFleetReady {
			select { // only the first fleet_ready counts; never block the runtime
			case ready <- struct{}{}:
			default:
			}
		}
	})
	errc := make(chan error, 1)
	go func() { errc <- rt.Run(context.Background()) }()
	if err := awaitFleet(s, from, ready, errc); err != nil {
		return nil, err
	}

	// The stream: one message per tick, each to the next guild.
	ctx, cancel := context.WithCancel(context.Background())
	sent := make(chan int, 1)
	go func() {
		n := 0
		t := time.NewTicker(time.Second / rate)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				sent <- n
				return
			case <-t.C:
				g := s.GuildID(n % s.Guilds())
				_, _ = s.Dispatch(g, "MESSAGE_CREATE", s.MessageCreate(g, "x", n))
				n++
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	rctx, rcancel := context.WithTimeout(context.Background(), fleetReadyBound(s, to))
	err = rt.Reshard(rctx, runtime.ReshardOptions{Shards: to, Clusters: 4})
	rcancel()
	if err != nil {
		cancel()
		_ = rt.Shutdown(context.Background())
		<-errc
		return nil, fmt.Errorf("reshard %d -> %d: %w", from, to, err)
	}
	duration := time.Since(start)
	time.Sleep(300 * time.Millisecond)
	cancel()
	n := <-sent
	time.Sleep(200 * time.Millisecond) // the last messages reach user code

	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := rt.Shutdown(sctx); err != nil {
		return nil, err
	}
	if err := <-errc; err != nil {
		return nil, err
	}
	res := reshardResult{Scenario: "reshard", From: from, To: to, MaxConcurrency: mc, IntervalMS: int(interval.Milliseconds()),
		DurationS: duration.Seconds(), LimitS: math.Ceil(float64(to)/mc) * interval.Seconds(), Events: n,
		Violations: s.Stats().Violations["identify_concurrency"]}
	mu.Lock()
	defer mu.Unlock()
	for i := range n {
		switch seen[strconv.Itoa(i)] {
		case 0:
			res.LostEvents++
		case 1:
		default:
			res.DuplicateEvents++
		}
	}
	return res, nil
}
