package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/rest"
	"github.com/disgoorg/snowflake/v2"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/restproxy"
)

func init() {
	register("rest", runREST)
	childKinds["restproxy"] = runProxyChild
	childKinds["reverseproxy"] = runReverseProxyChild
}

// restResult is the rest scenario's line.
type restResult struct {
	Scenario      string  `json:"scenario"`
	Mode          string  `json:"mode"` // proxy: the clients go through restproxy's HTTP form
	Requests      int     `json:"requests"`
	RateLimit429s int     `json:"rate_limit_429s"`
	DurationS     float64 `json:"duration_s"`
	LimitS        float64 `json:"limit_s"` // the least time the simulator's limits allow
	Ratio         float64 `json:"ratio"`   // limit_s / duration_s
	// The same workload with the clients sharing one in-process Limiter,
	// in the same run: what the machine allows at the moment.
	InProcessRatio float64 `json:"in_process_ratio"`
	InProcess429s  int     `json:"in_process_rate_limit_429s"`
	OverheadUS     float64 `json:"overhead_us"` // WaitBucket+UnlockBucket, no limit in the way
	// The median request, one at a time with no limit in the way, of a
	// disgo client straight to the simulator (with an in-process
	// Limiter, as a fleet in one process has) and of one through the
	// proxy, alternating in the same run; proxy_overhead_us is the
	// difference: what the proxy adds to a request.
	DirectUS        float64 `json:"direct_us"`
	ProxiedUS       float64 `json:"proxied_us"`
	ProxyOverheadUS float64 `json:"proxy_overhead_us"`
	// The same pair measured again with net/http's ReverseProxy (adding
	// the token, no limiter) in the proxy's place, in a child process
	// served alike: what any Go HTTP proxy in its own process adds on
	// this machine.
	ReverseProxyOverheadUS float64 `json:"reverse_proxy_overhead_us"`
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

// proxy is a restproxy Server in a child process, as cmd/restproxy runs
// it: the clients' goroutines and the proxy's do not share a scheduler.
type proxy struct {
	url   string
	cmd   *exec.Cmd
	stdin io.Closer
}

// startProxy starts the child, with a global limit of global requests a
// second, and waits at most 30 s for its address.
func startProxy(upstream, token string, global int) (*proxy, error) {
	return startProxyKind("restproxy", token, upstream, strconv.Itoa(global))
}

// startProxyKind starts a child of kind with args, and waits at most 30 s
// for its address.
func startProxyKind(kind, token string, args ...string) (*proxy, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, append([]string{"-child", kind}, args...)...)
	cmd.Env = append(os.Environ(), "BENCH_RESTPROXY_TOKEN="+token) // not on the command line
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	x := &proxy{cmd: cmd, stdin: stdin}
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- l
	}()
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	select {
	case l := <-line:
		addr, ok := strings.CutPrefix(strings.TrimSpace(l), "ready ")
		if !ok {
			_ = x.close()
			return nil, fmt.Errorf("restproxy child: said %q, want \"ready <addr>\"", l)
		}
		x.url = "http://" + addr
		return x, nil
	case <-t.C:
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, errors.New("restproxy child: no address in 30s")
	}
}

// close ends the child (it shuts down when its stdin closes) and waits
// for it, at most 10 s.
func (x *proxy) close() error {
	_ = x.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- x.cmd.Wait() }()
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		_ = x.cmd.Process.Kill()
		<-done
		return errors.New("restproxy child: did not stop within 10s of its stdin closing")
	}
}

// runProxyChild serves a restproxy for upstream until stdin closes.
func runProxyChild(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("restproxy child: want the upstream URL and the global limit, got %q", args)
	}
	global, err := strconv.Atoi(args[1])
	if err != nil {
		return fmt.Errorf("restproxy child: global limit %q: %w", args[1], err)
	}
	l, err := restproxy.New(restproxy.Config{GlobalLimit: global})
	if err != nil {
		return err
	}
	p, err := restproxy.NewServer(l, restproxy.ServerConfig{Upstream: args[0], Token: os.Getenv("BENCH_RESTPROXY_TOKEN")})
	if err != nil {
		return err
	}
	defer p.Close()
	return serveChild(p)
}

// serveChild serves h on a loopback port, as cmd/restproxy serves the
// proxy, prints its address, and shuts down when stdin closes.
func serveChild(h http.Handler) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 40 * time.Second, IdleTimeout: time.Minute}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Println("ready", ln.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = srv.Shutdown(ctx)
	if serr := <-served; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}

// runReverseProxyChild serves net/http's ReverseProxy for upstream,
// adding the bot's token, until stdin closes.
func runReverseProxyChild(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("reverseproxy child: want the upstream URL, got %q", args)
	}
	u, err := url.Parse(args[0])
	if err != nil {
		return fmt.Errorf("reverseproxy child: upstream: %w", err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 1024, 1024
	auth := "Bot " + os.Getenv("BENCH_RESTPROXY_TOKEN")
	rp := &httputil.ReverseProxy{Transport: tr, Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(u)
		r.Out.Host = u.Host
		r.Out.Header.Set("Authorization", auth)
	}}
	defer tr.CloseIdleConnections()
	return serveChild(rp)
}

// restClient is a disgo REST client with its own keep-alive connections,
// and its transport.
func restClient(url, token string, opts ...rest.ConfigOpt) (rest.Rest, *http.Transport, func()) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// net/http keeps 2 idle connections per host and 100 in all by
	// default: a client with more requests in flight would open new ones.
	tr.MaxIdleConns = 0
	tr.MaxIdleConnsPerHost = 256
	c := rest.NewClient(token, append([]rest.ConfigOpt{rest.WithURL(url), rest.WithLogger(slog.New(slog.DiscardHandler)),
		rest.WithHTTPClient(&http.Client{Timeout: 20 * time.Second, Transport: tr})}, opts...)...)
	return rest.New(c), tr, func() { c.Close(context.Background()); tr.CloseIdleConnections() }
}

// openConns opens n keep-alive connections of tr to gatewayURL (GET
// /gateway has no rate limit): n requests at once, whose bodies are read
// only once all n have their answer, so that no two share a connection.
// The connections then wait idle in tr.
func openConns(ctx context.Context, tr *http.Transport, gatewayURL string, n int) error {
	rss := make([]*http.Response, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, gatewayURL, nil)
			if err == nil {
				rss[i], err = tr.RoundTrip(req)
			}
			if err == nil && rss[i].StatusCode != http.StatusOK {
				err = fmt.Errorf("GET /gateway: %s", rss[i].Status)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for _, rs := range rss {
		if rs != nil {
			_, _ = io.Copy(io.Discard, rs.Body)
			_ = rs.Body.Close()
		}
	}
	return errors.Join(errs...)
}

func runREST() (any, error) {
	r := restResult{Scenario: "rest", Mode: "proxy", Requests: restClusters * restPerCluster}
	perChannel := r.Requests / restChannels
	limit := time.Duration((perChannel+restRouteLimit-1)/restRouteLimit-1) * restRouteWin
	limit = max(limit, time.Duration((r.Requests+restGlobal-1)/restGlobal-1)*time.Second)
	r.LimitS = limit.Seconds()

	elapsed, n429, err := restWorkload(true)
	if err != nil {
		return nil, err
	}
	r.RateLimit429s = n429
	r.DurationS = elapsed.Seconds()
	r.Ratio = limit.Seconds() / elapsed.Seconds()
	// The same workload with one in-process Limiter, as a fleet in one
	// process runs it: what this machine allows now.
	elapsed, n429, err = restWorkload(false)
	if err != nil {
		return nil, err
	}
	r.InProcessRatio = limit.Seconds() / elapsed.Seconds()
	r.InProcess429s = n429
	if r.OverheadUS, err = restOverhead(); err != nil {
		return nil, err
	}
	if r.DirectUS, r.ProxiedUS, r.ReverseProxyOverheadUS, err = proxyOverhead(); err != nil {
		return nil, err
	}
	r.ProxyOverheadUS = r.ProxiedUS - r.DirectUS
	return r, nil
}

// restWorkload runs the scenario's workload against a new simulator,
// through a proxy or with the clients sharing a Limiter, and returns its
// time and the simulator's 429s.
func restWorkload(viaProxy bool) (elapsed time.Duration, n429 int, err error) {
	srv, err := discordtest.Start(discordtest.WithGuilds(1), discordtest.WithGuildShape(2, restChannels, 0),
		discordtest.WithRouteRateLimit(restRouteLimit, restRouteWin), discordtest.WithGlobalRateLimit(restGlobal, time.Second))
	if err != nil {
		return 0, 0, err
	}
	defer srv.Close()
	l, err := restproxy.New(restproxy.Config{GlobalLimit: restGlobal})
	if err != nil {
		return 0, 0, err
	}
	clients := make([]rest.Rest, restClusters)
	transports := make([]*http.Transport, restClusters)
	gatewayURL := srv.RESTURL() + "/gateway"
	if viaProxy {
		px, err := startProxy("http://"+srv.Addr(), srv.Token(), restGlobal)
		if err != nil {
			return 0, 0, err
		}
		defer func() { err = errors.Join(err, px.close()) }()
		gatewayURL = px.url + "/api/v10/gateway"
		for i := range clients {
			c, tr, closeClient := restClient(px.url+"/api/v10", "", rest.WithRateLimiter(rest.NewNoopRateLimiter()))
			defer closeClient()
			clients[i], transports[i] = c, tr
		}
	} else {
		for i := range clients {
			c, tr, closeClient := restClient(srv.RESTURL(), srv.Token(), l.ConfigOpt())
			defer closeClient()
			clients[i], transports[i] = c, tr
		}
	}
	chans := make([]snowflake.ID, restChannels)
	for i := range chans {
		chans[i] = snowflake.ID(srv.ChannelID(0, i))
	}
	requests := restClusters * restPerCluster

	// Every request has its goroutine, started before the clock and
	// released at once; each is bounded by its client's 20 s timeout.
	var (
		wg, ready sync.WaitGroup
		gate      = make(chan struct{})
		failed    atomic.Int64
		first     atomic.Value
	)
	// A running fleet's clients hold their connections: open them before
	// the clock, one per request of the workload, all clients at once.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	warm := make([]error, len(transports))
	for i, tr := range transports {
		wg.Go(func() { warm[i] = openConns(ctx, tr, gatewayURL, restPerCluster) })
	}
	wg.Wait()
	if err := errors.Join(warm...); err != nil {
		return 0, 0, fmt.Errorf("warm-up (proxy %t): %w", viaProxy, err)
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
	elapsed = time.Since(start)
	if n := failed.Load(); n > 0 {
		return 0, 0, fmt.Errorf("%d of %d requests (proxy %t) failed, first: %v", n, requests, viaProxy, first.Load())
	}
	for _, n := range srv.Stats().REST.RateLimited {
		n429 += n
	}
	return elapsed, n429, nil
}

// proxyOverhead times GET /users/@me one request at a time, alternating
// a disgo client straight to a simulator (with an in-process Limiter)
// and one through a proxy in front of it, with limits far above the
// rate, and returns each one's median in µs. It then measures the same
// pair again with net/http's ReverseProxy in the proxy's place, and
// returns that proxy's median minus its direct one.
func proxyOverhead() (direct, proxied, reverse float64, err error) {
	srv, err := discordtest.Start(discordtest.WithGuilds(1), discordtest.WithRouteRateLimit(1<<30, time.Second),
		discordtest.WithGlobalRateLimit(1<<30, time.Second))
	if err != nil {
		return 0, 0, 0, err
	}
	defer srv.Close()
	px, err := startProxy("http://"+srv.Addr(), srv.Token(), 1<<20)
	if err != nil {
		return 0, 0, 0, err
	}
	defer func() { err = errors.Join(err, px.close()) }()
	rx, err := startProxyKind("reverseproxy", srv.Token(), "http://"+srv.Addr())
	if err != nil {
		return 0, 0, 0, err
	}
	defer func() { err = errors.Join(err, rx.close()) }()
	ld, err := restproxy.New(restproxy.Config{GlobalLimit: 1 << 20})
	if err != nil {
		return 0, 0, 0, err
	}
	dc, _, closeDirect := restClient(srv.RESTURL(), srv.Token(), ld.ConfigOpt())
	defer closeDirect()
	pc, _, closeProxied := restClient(px.url+"/api/v10", "", rest.WithRateLimiter(rest.NewNoopRateLimiter()))
	defer closeProxied()
	rc, _, closeReverse := restClient(rx.url+"/api/v10", "", rest.WithRateLimiter(rest.NewNoopRateLimiter()))
	defer closeReverse()

	if direct, proxied, err = timePair(dc, pc); err != nil {
		return 0, 0, 0, err
	}
	d, r, err := timePair(dc, rc)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("reverse proxy: %w", err)
	}
	return direct, proxied, r - d, nil
}

// timePair times GET /users/@me one request at a time, alternating a and
// b, and returns each one's median in µs.
func timePair(a, b rest.Rest) (float64, float64, error) {
	const warm, n = 200, 3000
	as, bs := make([]time.Duration, 0, n), make([]time.Duration, 0, n)
	for i := range warm + n {
		for _, c := range []struct {
			r rest.Rest
			d *[]time.Duration
		}{{a, &as}, {b, &bs}} {
			start := time.Now()
			if _, err := c.r.GetCurrentUser(""); err != nil {
				return 0, 0, fmt.Errorf("GET /users/@me: %w", err)
			}
			if i >= warm {
				*c.d = append(*c.d, time.Since(start))
			}
		}
	}
	return medianUS(as), medianUS(bs), nil
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
