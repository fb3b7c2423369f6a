package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
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
	Mode          string  `json:"mode"` // proxy: the clients go through restproxy's HTTP form
	Requests      int     `json:"requests"`
	RateLimit429s int     `json:"rate_limit_429s"`
	DurationS     float64 `json:"duration_s"`
	LimitS        float64 `json:"limit_s"`     // the least time the simulator's limits allow
	Ratio         float64 `json:"ratio"`       // limit_s / duration_s
	OverheadUS    float64 `json:"overhead_us"` // WaitBucket+UnlockBucket, no limit in the way
	// The median request, one at a time with no limit in the way, of a
	// disgo client straight to the simulator (with an in-process
	// Limiter, as a fleet in one process has) and of one through the
	// proxy, alternating in the same run; proxy_overhead_us is the
	// difference: what the proxy adds to a request.
	DirectUS        float64 `json:"direct_us"`
	ProxiedUS       float64 `json:"proxied_us"`
	ProxyOverheadUS float64 `json:"proxy_overhead_us"`
}

// The workload of the restproxy issue: 8 clusters, each a disgo REST
// client, post 200 messages each to the same 5 channels at once, through
// one restproxy HTTP proxy: the clients have no limiter and no token of
// their own, and their connections to the proxy are open before the
// clock starts. The route limit is set so that the limiter, not this
// machine's HTTP stack, is what bounds the run.
const (
	restClusters   = 8
	restPerCluster = 200
	restChannels   = 5
	restRouteLimit = 50
	restRouteWin   = 250 * time.Millisecond
	restGlobal     = 10_000 // per second; does not bind here
)

// proxy is a restproxy Server on a loopback port.
type proxy struct {
	url   string
	p     *restproxy.Server
	srv   *http.Server
	serve chan error
}

func startProxy(l *restproxy.Limiter, upstream, token string) (*proxy, error) {
	p, err := restproxy.NewServer(l, restproxy.ServerConfig{Upstream: upstream, Token: token})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	x := &proxy{url: "http://" + ln.Addr().String(), p: p, serve: make(chan error, 1),
		srv: &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 40 * time.Second, IdleTimeout: time.Minute}}
	go func() { x.serve <- x.srv.Serve(ln) }()
	return x, nil
}

// close stops the proxy, waiting at most 5 s for requests to end.
func (x *proxy) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := x.srv.Shutdown(ctx)
	if err != nil {
		err = fmt.Errorf("proxy shutdown: waited 5s for requests to end: %w", err)
		_ = x.srv.Close()
	}
	<-x.serve
	x.p.Close()
	return err
}

// restClient is a disgo REST client with its own keep-alive connections.
func restClient(url, token string, opts ...rest.ConfigOpt) (rest.Rest, func()) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 256
	c := rest.NewClient(token, append([]rest.ConfigOpt{rest.WithURL(url), rest.WithLogger(slog.New(slog.DiscardHandler)),
		rest.WithHTTPClient(&http.Client{Timeout: 20 * time.Second, Transport: tr})}, opts...)...)
	return rest.New(c), func() { c.Close(context.Background()); tr.CloseIdleConnections() }
}

func runREST() (res any, err error) {
	r := restResult{Scenario: "rest", Mode: "proxy", Requests: restClusters * restPerCluster}
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
	px, err := startProxy(l, "http://"+srv.Addr(), srv.Token())
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, px.close()) }()
	clients := make([]rest.Rest, restClusters)
	for i := range clients {
		c, closeClient := restClient(px.url+"/api/v10", "", rest.WithRateLimiter(rest.NewNoopRateLimiter()))
		defer closeClient()
		clients[i] = c
	}
	chans := make([]snowflake.ID, restChannels)
	for i := range chans {
		chans[i] = snowflake.ID(srv.ChannelID(0, i))
	}

	// Every request has its goroutine, started before the clock and
	// released at once; each is bounded by its client's 20 s timeout.
	var (
		wg, ready sync.WaitGroup
		gate      = make(chan struct{})
		failed    atomic.Int64
		first     atomic.Value
	)
	// A running fleet's clients hold their connections to the proxy:
	// open them before the clock (GET /gateway has no route limit).
	for _, c := range clients {
		for range restPerCluster {
			wg.Go(func() {
				if _, err := c.GetGateway(); err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, err)
				}
			})
		}
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		return nil, fmt.Errorf("warm-up: %d of %d GET /gateway through the proxy failed, first: %v", n, r.Requests, first.Load())
	}
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
		return nil, fmt.Errorf("%d of %d requests through the proxy failed, first: %v", n, r.Requests, first.Load())
	}
	for _, n := range srv.Stats().REST.RateLimited {
		r.RateLimit429s += n
	}
	perChannel := r.Requests / restChannels
	limit := time.Duration((perChannel+restRouteLimit-1)/restRouteLimit-1) * restRouteWin
	limit = max(limit, time.Duration((r.Requests+restGlobal-1)/restGlobal-1)*time.Second)
	r.DurationS = elapsed.Seconds()
	r.LimitS = limit.Seconds()
	r.Ratio = limit.Seconds() / elapsed.Seconds()
	if r.OverheadUS, err = restOverhead(); err != nil {
		return nil, err
	}
	if r.DirectUS, r.ProxiedUS, err = proxyOverhead(); err != nil {
		return nil, err
	}
	r.ProxyOverheadUS = r.ProxiedUS - r.DirectUS
	return r, nil
}

// proxyOverhead times GET /users/@me one request at a time, alternating
// a disgo client straight to a simulator (with an in-process Limiter)
// and one through a proxy in front of it, with limits far above the
// rate, and returns each one's median in µs.
func proxyOverhead() (direct, proxied float64, err error) {
	srv, err := discordtest.Start(discordtest.WithGuilds(1), discordtest.WithRouteRateLimit(1<<30, time.Second),
		discordtest.WithGlobalRateLimit(1<<30, time.Second))
	if err != nil {
		return 0, 0, err
	}
	defer srv.Close()
	lp, err := restproxy.New(restproxy.Config{GlobalLimit: 1 << 20})
	if err != nil {
		return 0, 0, err
	}
	px, err := startProxy(lp, "http://"+srv.Addr(), srv.Token())
	if err != nil {
		return 0, 0, err
	}
	defer func() { err = errors.Join(err, px.close()) }()
	ld, err := restproxy.New(restproxy.Config{GlobalLimit: 1 << 20})
	if err != nil {
		return 0, 0, err
	}
	dc, closeDirect := restClient(srv.RESTURL(), srv.Token(), ld.ConfigOpt())
	defer closeDirect()
	pc, closeProxied := restClient(px.url+"/api/v10", "", rest.WithRateLimiter(rest.NewNoopRateLimiter()))
	defer closeProxied()

	const warm, n = 200, 3000
	ds, ps := make([]time.Duration, 0, n), make([]time.Duration, 0, n)
	for i := range warm + n {
		for _, c := range []struct {
			r rest.Rest
			d *[]time.Duration
		}{{dc, &ds}, {pc, &ps}} {
			start := time.Now()
			if _, err := c.r.GetCurrentUser(""); err != nil {
				return 0, 0, fmt.Errorf("GET /users/@me: %w", err)
			}
			if i >= warm {
				*c.d = append(*c.d, time.Since(start))
			}
		}
	}
	return medianUS(ds), medianUS(ps), nil
}

func medianUS(ds []time.Duration) float64 {
	slices.Sort(ds)
	return float64(ds[len(ds)/2].Nanoseconds()) / 1e3
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
