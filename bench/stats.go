package main

import (
	"context"
	"fmt"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/cache"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/metrics"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

func init() { register("stats", runStats) }

type statsResult struct {
	Scenario              string  `json:"scenario"`
	Shards                int     `json:"shards"`
	Clusters              int     `json:"clusters"`
	Guilds                int     `json:"guilds"`
	Rate                  int     `json:"target_events_per_sec"`
	Events                int     `json:"events"`
	WithStatsEventsPerSec float64 `json:"with_stats_events_per_sec"`
	WithoutEventsPerSec   float64 `json:"without_events_per_sec"`
	Ratio                 float64 `json:"ratio"`
	SnapshotEveryMS       int     `json:"snapshot_every_ms"`
	ScrapeEveryMS         int     `json:"scrape_every_ms"`
	Snapshots             int     `json:"snapshots"`
	SnapshotMeanMS        float64 `json:"snapshot_mean_ms"`
	Scrapes               int     `json:"scrapes"`
	ScrapeMeanMS          float64 `json:"scrape_mean_ms"`
}

// runStats streams MESSAGE_CREATEs at 5,000/s through a 16-shard fleet
// with 5,000 guilds in its caches, once bare and once with the metrics
// observer and REST hooks installed, a runtime.Stats snapshot every 10 ms
// (6,000 times the default StatsInterval's rate) and a /metrics scrape
// every 100 ms, and compares the rates at which user code received the
// events. The two sides alternate, twice each, and the better run of each
// counts.
func runStats() (any, error) {
	const shards, clusters, guilds, rate, events = 16, 4, 5000, 5000, 25_000
	const snapEvery, scrapeEvery = 10 * time.Millisecond, 100 * time.Millisecond
	res := statsResult{Scenario: "stats", Shards: shards, Clusters: clusters, Guilds: guilds, Rate: rate, Events: events,
		SnapshotEveryMS: int(snapEvery / time.Millisecond), ScrapeEveryMS: int(scrapeEvery / time.Millisecond)}
	for range 2 {
		without, _, err := statsRun(shards, clusters, guilds, rate, events, false, snapEvery, scrapeEvery)
		if err != nil {
			return nil, fmt.Errorf("without stats: %w", err)
		}
		with, c, err := statsRun(shards, clusters, guilds, rate, events, true, snapEvery, scrapeEvery)
		if err != nil {
			return nil, fmt.Errorf("with stats: %w", err)
		}
		res.WithoutEventsPerSec = max(res.WithoutEventsPerSec, without)
		if with > res.WithStatsEventsPerSec {
			res.WithStatsEventsPerSec = with
			res.Snapshots, res.Scrapes = c.snapshots, c.scrapes
			res.SnapshotMeanMS, res.ScrapeMeanMS = c.snapshotMean(), c.scrapeMean()
		}
	}
	res.Ratio = res.WithStatsEventsPerSec / res.WithoutEventsPerSec
	return res, nil
}

// collection counts what the collectors did during a run.
type collection struct {
	snapshots, scrapes   int
	snapTime, scrapeTime time.Duration
}

func (c collection) snapshotMean() float64 {
	return c.snapTime.Seconds() * 1000 / float64(max(c.snapshots, 1))
}

func (c collection) scrapeMean() float64 {
	return c.scrapeTime.Seconds() * 1000 / float64(max(c.scrapes, 1))
}

// statsRun starts a fleet, streams events at rate and returns the rate
// at which user code received them.
func statsRun(shards, clusters, guilds, rate, events int, withStats bool, snapEvery, scrapeEvery time.Duration) (float64, collection, error) {
	var col collection
	s := discordtest.NewServer(discordtest.WithGuilds(guilds), discordtest.WithRecommendedShards(shards),
		discordtest.WithMaxConcurrency(shards), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	var got atomic.Int64
	cfg := runtime.Config{
		Token: runtime.Token(s.Token()), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		IdentifyInterval: s.IdentifyWindow(), Clusters: clusters,
		StatsInterval: runtime.StatsOff, // the snapshots are the ones this scenario takes
		ClientOptions: []bot.ConfigOpt{bot.WithCacheConfigOpts(cache.WithCaches(cache.FlagsAll))},
		Bot: func(int) runtime.Bot {
			return runtime.BotFunc(func(_ context.Context, g *shardgroup.Group) error {
				g.Client().AddEventListeners(countMessages(&got))
				return nil
			})
		},
	}
	reg := prometheus.NewRegistry()
	var m *metrics.Metrics
	if withStats {
		var err error
		if m, err = metrics.New(reg); err != nil {
			return 0, col, err
		}
		cfg.Observer = m.Observer()
		cfg.RESTLimiterConfig.Hooks = m.RESTHooks()
	}
	rt, stop, err := runFleet(cfg, fleetReadyBound(s, shards))
	if err != nil {
		return 0, col, err
	}
	defer stop()
	if err := waitSessionsReady(s, shards); err != nil {
		return 0, col, err
	}
	// Every guild is in the caches before the measurement.
	err = waitFor(10*time.Second+time.Duration(guilds/1000)*time.Second, fmt.Sprintf("%d guilds in the fleet's caches", guilds),
		func() (bool, string) {
			n := rt.Stats().Guilds
			return n >= guilds, fmt.Sprintf("%d cached", n)
		})
	if err != nil {
		return 0, col, err
	}

	quit := make(chan struct{})
	var wg sync.WaitGroup
	if withStats {
		m.Attach(rt)
		scrape := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
		wg.Go(func() {
			snap, scr := time.NewTicker(snapEvery), time.NewTicker(scrapeEvery)
			defer snap.Stop()
			defer scr.Stop()
			for {
				select {
				case <-quit:
					return
				case <-snap.C:
					t := time.Now()
					rt.Stats()
					col.snapTime += time.Since(t)
					col.snapshots++
				case <-scr.C:
					t := time.Now()
					rec := httptest.NewRecorder()
					scrape.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
					col.scrapeTime += time.Since(t)
					col.scrapes++
				}
			}
		})
	}
	perSec, err := measureAt(s, &got, events, rate)
	close(quit)
	wg.Wait()
	return perSec, col, err
}

// runFleet runs a runtime until its fleet is ready, for at most bound.
func runFleet(cfg runtime.Config, bound time.Duration) (*runtime.Runtime, func() error, error) {
	rt, err := runtime.New(cfg)
	if err != nil {
		return nil, nil, err
	}
	readyc := make(chan struct{}, 1)
	unsub := rt.Subscribe(func(e runtime.Event) {
		if e.Kind == runtime.EventFleetReady {
			select { // only the first fleet_ready counts; never block the runtime
			case readyc <- struct{}{}:
			default:
			}
		}
	})
	defer unsub()
	errc := make(chan error, 1)
	go func() { errc <- rt.Run(context.Background()) }()
	stop := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := rt.Shutdown(ctx); err != nil {
			return err
		}
		return <-errc
	}
	select {
	case <-readyc:
		return rt, stop, nil
	case err := <-errc:
		return nil, nil, fmt.Errorf("run: %v", err)
	case <-time.After(bound):
		_ = stop()
		return nil, nil, fmt.Errorf("waited %s for the fleet_ready event", bound)
	}
}

// measureAt streams events at rate and returns the events per second user
// code received, from the first sent to the last received.
func measureAt(s *discordtest.Server, got *atomic.Int64, events, rate int) (float64, error) {
	return loadAndWait(s, got, events, float64(rate), float64(rate)/4)
}
