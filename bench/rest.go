package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/rest"
	"github.com/disgoorg/snowflake/v2"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/restproxy"
)

func init() { register("rest", runREST) }

// restResult is the rest scenario's line.
type restResult struct {
	Scenario      string  `json:"scenario"`
	Requests      int     `json:"requests"`
	RateLimit429s int     `json:"rate_limit_429s"`
	DurationS     float64 `json:"duration_s"`
	LimitS        float64 `json:"limit_s"`     // the least time the simulator's limits allow
	Ratio         float64 `json:"ratio"`       // limit_s / duration_s
	OverheadUS    float64 `json:"overhead_us"` // WaitBucket+UnlockBucket, no limit in the way
}

// The workload of the restproxy issue: 8 clusters, each a disgo REST
// client, post 200 messages each to the same 5 channels at once, through
// one shared restproxy.Limiter. The route limit is set so that the
// limiter, not this machine's HTTP stack, is what bounds the run.
const (
	restClusters   = 8
	restPerCluster = 200
	restChannels   = 5
	restRouteLimit = 50
	restRouteWin   = 250 * time.Millisecond
	restGlobal     = 10_000 // per second; does not bind here
)

func runREST() (any, error) {
	res := restResult{Scenario: "rest", Requests: restClusters * restPerCluster}
	srv, err := discordtest.Start(discordtest.WithGuilds(1), discordtest.WithGuildShape(2, restChannels, 0),
		discordtest.WithRouteRateLimit(restRouteLimit, restRouteWin), discordtest.WithGlobalRateLimit(restGlobal, time.Second))
	if err != nil {
		return nil, err
	}
	defer srv.Close()
	l, err := restproxy.New(restproxy.Config{GlobalLimit: restGlobal})
	if err != nil {
		return nil, err
	}
	quiet := slog.New(slog.DiscardHandler)
	clients := make([]rest.Rest, restClusters)
	for i := range clients {
		c := rest.NewClient(srv.Token(), rest.WithURL(srv.RESTURL()), rest.WithLogger(quiet), l.ConfigOpt())
		defer c.Close(context.Background())
		clients[i] = rest.New(c)
	}
	chans := make([]snowflake.ID, restChannels)
	for i := range chans {
		chans[i] = snowflake.ID(srv.ChannelID(0, i))
	}

	// Every request has its goroutine, started before the clock and
	// released at once.
	var (
		wg, ready sync.WaitGroup
		gate      = make(chan struct{})
		failed    atomic.Int64
		first     atomic.Value
	)
	for _, c := range clients {
		for i := range restPerCluster {
			ready.Add(1)
			wg.Go(func() {
				ready.Done()
				<-gate
				if _, err := c.CreateMessage(chans[i%restChannels], discord.MessageCreate{Content: "bench"}); err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, err)
				}
			})
		}
	}
	ready.Wait()
	start := time.Now()
	close(gate)
	wg.Wait()
	elapsed := time.Since(start)
	if n := failed.Load(); n > 0 {
		return nil, fmt.Errorf("%d of %d requests failed, first: %v", n, res.Requests, first.Load())
	}
	for _, n := range srv.Stats().REST.RateLimited {
		res.RateLimit429s += n
	}
	perChannel := res.Requests / restChannels
	limit := time.Duration((perChannel+restRouteLimit-1)/restRouteLimit-1) * restRouteWin
	limit = max(limit, time.Duration((res.Requests+restGlobal-1)/restGlobal-1)*time.Second)
	res.DurationS = elapsed.Seconds()
	res.LimitS = limit.Seconds()
	res.Ratio = limit.Seconds() / elapsed.Seconds()
	if res.OverheadUS, err = restOverhead(); err != nil {
		return nil, err
	}
	return res, nil
}

// restOverhead is the limiter's own cost per request, in µs: WaitBucket
// then UnlockBucket with Discord's headers, over 64 channels, with limits
// far above the rate.
func restOverhead() (float64, error) {
	l, err := restproxy.New(restproxy.Config{GlobalLimit: 1 << 20})
	if err != nil {
		return 0, err
	}
	eps := make([]*rest.CompiledEndpoint, 64)
	for i := range eps {
		eps[i] = rest.CreateMessage.Compile(nil, 1_000_000+i)
	}
	h := http.Header{}
	h.Set("Via", "1.1 google")
	h.Set("X-RateLimit-Limit", "1000000000")
	h.Set("X-RateLimit-Remaining", "999999999")
	h.Set("X-RateLimit-Reset-After", "3600.000")
	h.Set("X-RateLimit-Reset", strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10))
	h.Set("X-RateLimit-Bucket", "bench")
	rs := &http.Response{StatusCode: http.StatusOK, Header: h}
	ctx := context.Background()
	run := func(n int) (time.Duration, error) {
		start := time.Now()
		for i := range n {
			ep := eps[i%len(eps)]
			if err := l.WaitBucket(ctx, ep); err != nil {
				return 0, err
			}
			if err := l.UnlockBucket(ep, rs); err != nil {
				return 0, err
			}
		}
		return time.Since(start), nil
	}
	if _, err := run(10_000); err != nil { // warm up: learn the buckets
		return 0, err
	}
	const n = 200_000
	d, err := run(n)
	if err != nil {
		return 0, err
	}
	return float64(d.Microseconds()) / n, nil
}
