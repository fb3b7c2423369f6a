package main

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/disgoorg/disgo"
	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/events"
	"github.com/disgoorg/disgo/gateway"
	"github.com/disgoorg/disgo/rest"
	"github.com/disgoorg/disgo/sharding"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

func init() {
	register("startup", runStartup)
	register("gateway", runGateway)
}

// startFleet runs a runtime against s until its fleet is ready; stop
// shuts it down.
func startFleet(s *discordtest.Server, clusters int, b func(int) runtime.Bot, compression shardgroup.Compression) (ready time.Duration, stop func() error, err error) {
	rt, err := runtime.New(runtime.Config{
		Token: runtime.Token(s.Token()), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		IdentifyInterval: s.IdentifyWindow(), Clusters: clusters, Bot: b,
		Compression: compression,
	})
	if err != nil {
		return 0, nil, err
	}
	start := time.Now()
	go rt.Run(context.Background())
	stop = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := rt.Shutdown(ctx); err != nil {
			return err
		}
		<-rt.Done()
		return rt.Err()
	}
	shards := s.RecommendedShards()
	bound := fleetReadyBound(s, shards)
	select {
	case <-rt.Ready():
		ready = time.Since(start)
	case <-rt.Done():
		return 0, nil, fmt.Errorf("run: %v", rt.Err())
	case <-time.After(bound):
		_ = stop()
		return 0, nil, fmt.Errorf("waited %s for the fleet_ready event of %d shards: %+v", bound, shards, s.Stats())
	}
	if err := waitSessionsReady(s, shards); err != nil {
		_ = stop()
		return 0, nil, err
	}
	return ready, stop, nil
}

func nopBot(int) runtime.Bot {
	return runtime.BotFunc(func(context.Context, *shardgroup.Group) error { return nil })
}

type startupResult struct {
	Scenario       string  `json:"scenario"`
	Shards         int     `json:"shards"`
	MaxConcurrency int     `json:"max_concurrency"`
	IntervalMS     int     `json:"interval_ms"`
	ReadyS         float64 `json:"ready_s"`
	LimitS         float64 `json:"limit_s"`
	Ratio          float64 `json:"ratio"`
	Violations     int     `json:"identify_violations"`
	// The same start-up with the runtime's default transport compression
	// (zstd-stream): the simulator then compresses every frame of 256
	// connections on the same cores as the fleet, which Discord does on
	// its own machines.
	ReadyZstdS     float64 `json:"ready_zstd_s"`
	RatioZstd      float64 `json:"ratio_zstd"`
	ViolationsZstd int     `json:"identify_violations_zstd"`
}

func runStartup() (any, error) {
	const shards, mc, interval = 256, 16, 50 * time.Millisecond
	limit := math.Ceil(float64(shards)/mc) * interval.Seconds()
	// Without compression the scenario measures the identify schedule
	// alone; with the default it also pays for the simulator's zstd.
	start := func(c shardgroup.Compression) (float64, int, error) {
		s := discordtest.NewServer(discordtest.WithGuilds(shards*2), discordtest.WithRecommendedShards(shards),
			discordtest.WithMaxConcurrency(mc), discordtest.WithIdentifyWindow(interval))
		defer s.Close()
		ready, stop, err := startFleet(s, 16, nopBot, c)
		if err != nil {
			return 0, 0, err
		}
		if err := stop(); err != nil {
			return 0, 0, err
		}
		return ready.Seconds(), s.Stats().Violations["identify_concurrency"], nil
	}
	res := startupResult{Scenario: "startup", Shards: shards, MaxConcurrency: mc, IntervalMS: int(interval.Milliseconds()), LimitS: limit}
	var err error
	if res.ReadyS, res.Violations, err = start(shardgroup.CompressionNone); err != nil {
		return nil, err
	}
	if res.ReadyZstdS, res.ViolationsZstd, err = start(shardgroup.CompressionZstd); err != nil {
		return nil, fmt.Errorf("with zstd-stream: %w", err)
	}
	res.Ratio, res.RatioZstd = limit/res.ReadyS, limit/res.ReadyZstdS
	return res, nil
}

type gatewayResult struct {
	Scenario          string  `json:"scenario"`
	Shards            int     `json:"shards"`
	Events            int     `json:"events"`
	FleetEventsPerSec float64 `json:"fleet_events_per_sec"`
	BareEventsPerSec  float64 `json:"bare_events_per_sec"`
	Ratio             float64 `json:"ratio"`
}

// countMessages is the listener both sides run.
func countMessages(n *atomic.Int64) bot.EventListener {
	return bot.NewListenerFunc(func(*events.MessageCreate) { n.Add(1) })
}

// measure streams events through s and returns events per second seen by
// the counter.
func measure(s *discordtest.Server, got *atomic.Int64, events int) (float64, error) {
	return loadAndWait(s, got, events, 0, 2_000)
}

func runGateway() (any, error) {
	const shards, events = 16, 200_000
	res := gatewayResult{Scenario: "gateway", Shards: shards, Events: events}
	// The two sides alternate, twice each, and the better run of each
	// counts, so neither pays for the other's warm-up or for a noisy
	// moment alone.
	for range 2 {
		fleet, err := fleetRate(shards, events)
		if err != nil {
			return nil, fmt.Errorf("fleet: %w", err)
		}
		bare, err := bareRate(shards, events)
		if err != nil {
			return nil, fmt.Errorf("bare disgo: %w", err)
		}
		res.FleetEventsPerSec = max(res.FleetEventsPerSec, fleet)
		res.BareEventsPerSec = max(res.BareEventsPerSec, bare)
	}
	res.Ratio = res.FleetEventsPerSec / res.BareEventsPerSec
	return res, nil
}

func gatewayServer(shards int) *discordtest.Server {
	return discordtest.NewServer(discordtest.WithGuilds(shards*4), discordtest.WithRecommendedShards(shards),
		discordtest.WithMaxConcurrency(shards), discordtest.WithIdentifyWindow(time.Millisecond))
}

func fleetRate(shards, events int) (float64, error) {
	s := gatewayServer(shards)
	defer s.Close()
	var got atomic.Int64
	b := func(int) runtime.Bot {
		return runtime.BotFunc(func(_ context.Context, g *shardgroup.Group) error {
			g.Client().AddEventListeners(countMessages(&got))
			return nil
		})
	}
	// One cluster: one disgo client, as the bare side has.
	_, stop, err := startFleet(s, 1, b, "")
	if err != nil {
		return 0, err
	}
	rate, err := measure(s, &got, events)
	if serr := stop(); err == nil {
		err = serr
	}
	return rate, err
}

func bareRate(shards, total int) (float64, error) {
	s := gatewayServer(shards)
	defer s.Close()
	var got atomic.Int64
	ids := make([]int, shards)
	for i := range ids {
		ids[i] = i
	}
	quiet := slog.New(slog.DiscardHandler)
	client, err := disgo.New(s.Token(),
		bot.WithLogger(quiet),
		bot.WithRestClientConfigOpts(rest.WithURL(s.RESTURL())),
		bot.WithShardManagerConfigOpts(
			sharding.WithShardIDs(ids...), sharding.WithShardCount(shards),
			// disgo v0.18.15's ShardManager writes its shard map from
			// one goroutine per shard (shard_manager_impl.go:113); a
			// limiter that lets one shard open at a time keeps that
			// write single, so the scenario cannot crash with a
			// concurrent map write. The identify window is 1 ms here.
			sharding.WithRateLimiter(&oneAtATime{}),
			sharding.WithGatewayConfigOpts(gateway.WithURL(s.GatewayURL()), gateway.WithLogger(quiet),
				gateway.WithIntents(gateway.IntentGuilds, gateway.IntentGuildMessages)),
		),
		bot.WithEventListeners(countMessages(&got)),
	)
	if err != nil {
		return 0, err
	}
	defer client.Close(context.Background())
	if err := client.OpenShardManager(context.Background()); err != nil {
		return 0, err
	}
	if err := waitSessionsReady(s, shards); err != nil {
		return 0, fmt.Errorf("bare shards: %w", err)
	}
	return measure(s, &got, total)
}

// oneAtATime is a sharding.RateLimiter that lets one shard open at a time.
type oneAtATime struct{ mu sync.Mutex }

func (*oneAtATime) Close(context.Context) {}

func (l *oneAtATime) WaitBucket(ctx context.Context, _ int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	return nil
}

func (l *oneAtATime) UnlockBucket(int) { l.mu.Unlock() }
