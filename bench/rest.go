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
	"runtime"
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
	childKinds["rest-sim"] = runSimChild
	childKinds["tcprelay"] = runRelayChild
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
	// difference: what the proxy adds to a request. The proxy runs as
	// cmd/restproxy does by default: over TCP, with proxy_procs threads
	// (-procs 1).
	DirectUS        float64 `json:"direct_us"`
	ProxiedUS       float64 `json:"proxied_us"`
	ProxyOverheadUS float64 `json:"proxy_overhead_us"`
	ProxyProcs      int     `json:"proxy_procs"`
	// The same pair again with the proxy on Go's default thread count
	// (-procs 0: one per CPU).
	ProxyOverheadAllCPUsUS float64 `json:"proxy_overhead_all_cpus_us"`
	// The same pair measured again with net/http's ReverseProxy (adding
	// the token, no limiter) in the proxy's place, in a child process
	// served alike: what any Go HTTP proxy in its own process adds on
	// this machine.
	ReverseProxyOverheadUS float64 `json:"reverse_proxy_overhead_us"`
	// The same pair measured again with a plain TCP byte relay in the
	// proxy's place (a child process on as many threads as the proxy,
	// one goroutine per direction, no HTTP, the client sending the
	// token): what one more process on the path costs on this machine
	// before any HTTP is read.
	TCPRelayOverheadUS float64 `json:"tcp_relay_overhead_us"`
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

// proc is a child process of the rest scenario: a proxy or the
// simulator, each with its own scheduler, as they run in production
// (Discord is never in the bot's process).
type proc struct {
	url    string   // http://<addr> from its ready line
	fields []string // what follows the address on its ready line
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // its stdout, line by line; closed when it ends
}

// proxyProcs is the proxy children's GOMAXPROCS: cmd/restproxy's
// default (-procs 1).
const proxyProcs = 1

// startProxy starts a restproxy child in front of upstream, with a
// global limit of global requests a second, on procs threads (0: Go's
// default).
func startProxy(upstream, token string, global, procs int) (*proc, error) {
	return startProc("restproxy", token, upstream, strconv.Itoa(global), strconv.Itoa(procs))
}

// startProc starts this binary as a child of kind with args, token in
// its environment (not on the command line), and waits at most 30 s for
// its "ready <addr> [fields]" line.
func startProc(kind, token string, args ...string) (*proc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, append([]string{"-child", kind}, args...)...)
	cmd.Env = append(os.Environ(), "BENCH_RESTPROXY_TOKEN="+token)
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
	x := &proc{cmd: cmd, stdin: stdin, lines: make(chan string, 1)}
	go func() { // ends when the child's stdout closes
		defer close(x.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			x.lines <- sc.Text()
		}
	}()
	l, err := x.line(30 * time.Second)
	if err != nil {
		_ = x.close()
		return nil, fmt.Errorf("%s child: %w", kind, err)
	}
	f := strings.Fields(l)
	if len(f) < 2 || f[0] != "ready" {
		_ = x.close()
		return nil, fmt.Errorf("%s child: said %q, want \"ready <addr>\"", kind, l)
	}
	x.url, x.fields = "http://"+f[1], f[2:]
	return x, nil
}

// line returns the child's next line, waiting at most d.
func (x *proc) line(d time.Duration) (string, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case l, ok := <-x.lines:
		if !ok {
			return "", errors.New("exited")
		}
		return l, nil
	case <-t.C:
		return "", fmt.Errorf("no answer in %s", d)
	}
}

// close ends the child (it shuts down when its stdin closes) and waits
// for it, at most 10 s.
func (x *proc) close() error {
	_ = x.stdin.Close()
	done := make(chan error, 1)
	go func() {
		for range x.lines { // what it says now is not read
		}
		done <- x.cmd.Wait()
	}()
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		_ = x.cmd.Process.Kill()
		<-done
		return errors.New("child did not stop within 10s of its stdin closing")
	}
}

// restSim is the scenario's simulator in a child process.
type restSim struct {
	*proc
	token string
	chans []snowflake.ID
}

// startSim starts a simulator child with the route limit of routeLimit
// requests per routeWin, and a global limit of global requests a second.
func startSim(routeLimit int, routeWin time.Duration, global int) (*restSim, error) {
	token := "bench." + strconv.FormatInt(time.Now().UnixNano(), 36)
	x, err := startProc("rest-sim", token, strconv.Itoa(routeLimit), routeWin.String(), strconv.Itoa(global))
	if err != nil {
		return nil, err
	}
	s := &restSim{proc: x, token: token}
	for _, f := range x.fields {
		id, err := snowflake.Parse(f)
		if err != nil {
			_ = x.close()
			return nil, fmt.Errorf("rest-sim child: channel %q: %w", f, err)
		}
		s.chans = append(s.chans, id)
	}
	if len(s.chans) != restChannels {
		_ = x.close()
		return nil, fmt.Errorf("rest-sim child: %d channels, want %d", len(s.chans), restChannels)
	}
	return s, nil
}

// restURL is the simulator's REST API base URL.
func (s *restSim) restURL() string { return s.url + "/api/v10" }

// rateLimited asks the simulator how many 429s it has answered.
func (s *restSim) rateLimited() (int, error) {
	if _, err := io.WriteString(s.stdin, "stats\n"); err != nil {
		return 0, err
	}
	l, err := s.line(10 * time.Second)
	if err != nil {
		return 0, fmt.Errorf("rest-sim child: stats: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimPrefix(l, "429s "))
	if err != nil {
		return 0, fmt.Errorf("rest-sim child: stats: said %q, want \"429s <n>\"", l)
	}
	return n, nil
}

// runSimChild serves a simulator with the route limit and window and the
// global limit in args, and the token in its environment; its ready line
// holds its channels. It answers each "stats" line on stdin with the
// number of 429s it has sent, and stops when stdin closes.
func runSimChild(args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("rest-sim child: want the route limit, the route window and the global limit, got %q", args)
	}
	limit, err1 := strconv.Atoi(args[0])
	win, err2 := time.ParseDuration(args[1])
	global, err3 := strconv.Atoi(args[2])
	if err := errors.Join(err1, err2, err3); err != nil {
		return fmt.Errorf("rest-sim child: %w", err)
	}
	srv, err := discordtest.Start(discordtest.WithToken(os.Getenv("BENCH_RESTPROXY_TOKEN")), discordtest.WithGuilds(1),
		discordtest.WithGuildShape(2, restChannels, 0), discordtest.WithRouteRateLimit(limit, win),
		discordtest.WithGlobalRateLimit(global, time.Second))
	if err != nil {
		return err
	}
	defer srv.Close()
	line := []string{"ready", srv.Addr()}
	for i := range restChannels {
		line = append(line, strconv.FormatUint(srv.ChannelID(0, i), 10))
	}
	fmt.Println(strings.Join(line, " "))
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() != "stats" {
			return fmt.Errorf("rest-sim child: unknown command %q", sc.Text())
		}
		n := 0
		for _, v := range srv.Stats().REST.RateLimited {
			n += v
		}
		fmt.Println("429s", n)
	}
	return sc.Err()
}

// runProxyChild serves a restproxy for upstream until stdin closes.
func runProxyChild(args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("restproxy child: want the upstream URL, the global limit and the thread count, got %q", args)
	}
	global, err1 := strconv.Atoi(args[1])
	procs, err2 := strconv.Atoi(args[2])
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("restproxy child: %w", err)
	}
	// Before NewServer, as cmd/restproxy does: the upstream client
	// watches idle connections when there is one thread.
	setChildProcs(procs)
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

// setChildProcs sets a child's GOMAXPROCS to procs (0: Go's default).
func setChildProcs(procs int) {
	if procs > 0 {
		runtime.GOMAXPROCS(procs)
	}
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
// adding the bot's token, on as many threads as the proxy, until stdin
// closes.
func runReverseProxyChild(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("reverseproxy child: want the upstream URL, got %q", args)
	}
	setChildProcs(proxyProcs)
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
	r.ProxyProcs = proxyProcs
	if r.DirectUS, r.ProxiedUS, r.ReverseProxyOverheadUS, r.ProxyOverheadAllCPUsUS, r.TCPRelayOverheadUS, err = proxyOverhead(); err != nil {
		return nil, err
	}
	r.ProxyOverheadUS = r.ProxiedUS - r.DirectUS
	return r, nil
}

// restWorkload runs the scenario's workload against a new simulator in a
// child process, through a proxy or with the clients sharing a Limiter,
// and returns its time and the simulator's 429s.
func restWorkload(viaProxy bool) (elapsed time.Duration, n429 int, err error) {
	srv, err := startSim(restRouteLimit, restRouteWin, restGlobal)
	if err != nil {
		return 0, 0, err
	}
	defer func() { err = errors.Join(err, srv.close()) }()
	l, err := restproxy.New(restproxy.Config{GlobalLimit: restGlobal})
	if err != nil {
		return 0, 0, err
	}
	clients := make([]rest.Rest, restClusters)
	transports := make([]*http.Transport, restClusters)
	gatewayURL := srv.restURL() + "/gateway"
	if viaProxy {
		px, err := startProxy(srv.url, srv.token, restGlobal, proxyProcs)
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
			c, tr, closeClient := restClient(srv.restURL(), srv.token, l.ConfigOpt())
			defer closeClient()
			clients[i], transports[i] = c, tr
		}
	}
	chans := srv.chans
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
	if n429, err = srv.rateLimited(); err != nil {
		return 0, 0, err
	}
	return elapsed, n429, nil
}

// proxyOverhead times GET /users/@me one request at a time, alternating
// a disgo client straight to a simulator in a child process (with an
// in-process Limiter) and one through a proxy in front of it on
// proxyProcs threads, with limits far above the rate, and returns each
// one's median in µs. It then measures the same pair again with
// net/http's ReverseProxy in the proxy's place, with the proxy on Go's
// default thread count, and with a TCP byte relay in its place, and
// returns each one's median minus its direct one.
func proxyOverhead() (direct, proxied, reverse, allCPUs, relay float64, err error) {
	srv, err := startSim(1<<30, time.Second, 1<<30)
	if err != nil {
		return 0, 0, 0, 0, 0, err
	}
	defer func() { err = errors.Join(err, srv.close()) }()
	ld, err := restproxy.New(restproxy.Config{GlobalLimit: 1 << 20})
	if err != nil {
		return 0, 0, 0, 0, 0, err
	}
	dc, _, closeDirect := restClient(srv.restURL(), srv.token, ld.ConfigOpt())
	defer closeDirect()
	// pair starts the child, then times it against direct calls, the
	// client through it sending token.
	pair := func(start func() (*proc, error), token string) (d, p float64, err error) {
		x, err := start()
		if err != nil {
			return 0, 0, err
		}
		defer func() { err = errors.Join(err, x.close()) }()
		c, _, closeClient := restClient(x.url+"/api/v10", token, rest.WithRateLimiter(rest.NewNoopRateLimiter()))
		defer closeClient()
		return timePair(dc, c)
	}
	if direct, proxied, err = pair(func() (*proc, error) { return startProxy(srv.url, srv.token, 1<<20, proxyProcs) }, ""); err != nil {
		return 0, 0, 0, 0, 0, err
	}
	d, r, err := pair(func() (*proc, error) { return startProc("reverseproxy", srv.token, srv.url) }, "")
	if err != nil {
		return 0, 0, 0, 0, 0, fmt.Errorf("reverse proxy: %w", err)
	}
	d2, a, err := pair(func() (*proc, error) { return startProxy(srv.url, srv.token, 1<<20, 0) }, "")
	if err != nil {
		return 0, 0, 0, 0, 0, fmt.Errorf("proxy on every CPU: %w", err)
	}
	d3, t, err := pair(func() (*proc, error) { return startProc("tcprelay", "", srv.url) }, srv.token)
	if err != nil {
		return 0, 0, 0, 0, 0, fmt.Errorf("TCP relay: %w", err)
	}
	return direct, proxied, r - d, a - d2, t - d3, nil
}

// runRelayChild relays bytes between each connection it accepts on a
// loopback port and a new connection to the upstream URL's host, on as
// many threads as the proxy, until stdin closes.
func runRelayChild(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("tcprelay child: want the upstream URL, got %q", args)
	}
	setChildProcs(proxyProcs)
	u, err := url.Parse(args[0])
	if err != nil {
		return fmt.Errorf("tcprelay child: upstream: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if conns == nil {
			return false
		}
		conns[c] = struct{}{}
		return true
	}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
			if err != nil || !track(c) || !track(up) {
				_ = c.Close()
				if up != nil {
					_ = up.Close()
				}
				continue
			}
			// Each direction ends when its source closes, or when stdin
			// closes and every connection is closed.
			wg.Go(func() { _, _ = io.Copy(up, c); _ = up.Close() })
			wg.Go(func() { _, _ = io.Copy(c, up); _ = c.Close() })
		}
	})
	fmt.Println("ready", ln.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = ln.Close()
	mu.Lock()
	for c := range conns {
		_ = c.Close()
	}
	conns = nil
	mu.Unlock()
	wg.Wait()
	return nil
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
