package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/rest"
	"github.com/disgoorg/snowflake/v2"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/natsfleet"
	"github.com/gofleet/fleet/restproxy"
)

func init() {
	register("rest-processes", runRESTProcesses)
	childKinds["rest-sender"] = runRESTSender
}

type restProcsResult struct {
	Scenario      string  `json:"scenario"`
	Processes     int     `json:"processes"`
	Requests      int     `json:"requests"`
	RateLimit429s int     `json:"rate_limit_429s"`
	DurationS     float64 `json:"duration_s"`
	LimitS        float64 `json:"limit_s"`
	Ratio         float64 `json:"ratio"`
}

const restProcs = 4

// runRESTProcesses is the rest scenario's workload split over 4
// processes: each has 2 disgo REST clients posting to the same 5 channels,
// all through the fleet's REST proxy, which this process serves.
func runRESTProcesses() (any, error) {
	res := restProcsResult{Scenario: "rest-processes", Processes: restProcs, Requests: restClusters * restPerCluster}
	srv, err := discordtest.Start(discordtest.WithGuilds(1), discordtest.WithGuildShape(2, restChannels, 0),
		discordtest.WithRouteRateLimit(restRouteLimit, restRouteWin), discordtest.WithGlobalRateLimit(restGlobal, time.Second))
	if err != nil {
		return nil, err
	}
	defer srv.Close()
	proxyURL, stop, err := startRESTProxy("http://"+srv.Addr(), srv.Token())
	if err != nil {
		return nil, err
	}
	defer stop()

	children := make([]*child, 0, restProcs)
	defer func() {
		for _, c := range children {
			c.stop()
		}
	}()
	per := res.Requests / restProcs
	for range restProcs {
		args := []string{proxyURL, strconv.Itoa(per)}
		for i := range restChannels {
			args = append(args, strconv.FormatUint(uint64(srv.ChannelID(0, i)), 10))
		}
		c, err := startChild("rest-sender", natsfleet.ConnectInfo{}, []string{"FLEET_BENCH_TOKEN=" + srv.Token()}, args...)
		if err != nil {
			return nil, err
		}
		children = append(children, c)
	}
	start := time.Now()
	if err := startAll(children, "done", "requests", 2*time.Minute); err != nil {
		return nil, err
	}
	elapsed := time.Since(start)
	for _, n := range srv.Stats().REST.RateLimited {
		res.RateLimit429s += n
	}
	perChannel := res.Requests / restChannels
	limit := time.Duration((perChannel+restRouteLimit-1)/restRouteLimit-1) * restRouteWin
	res.DurationS = elapsed.Seconds()
	res.LimitS = limit.Seconds()
	res.Ratio = limit.Seconds() / elapsed.Seconds()
	return res, nil
}

// startRESTProxy serves restproxy's HTTP form on a loopback port, in
// front of upstream, and returns its URL.
func startRESTProxy(upstream, token string) (string, func(), error) {
	l, err := restproxy.New(restproxy.Config{GlobalLimit: restGlobal})
	if err != nil {
		return "", nil, err
	}
	p, err := restproxy.NewServer(l, restproxy.ServerConfig{Upstream: upstream, Token: token})
	if err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	hs := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 40 * time.Second, IdleTimeout: time.Minute}
	done := make(chan struct{})
	go func() { defer close(done); _ = hs.Serve(ln) }()
	stop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx)
		<-done
		p.Close()
	}
	return "http://" + ln.Addr().String(), stop, nil
}

// runRESTSender sends its share of the requests through the proxy once
// told "go", says "done", and waits for stdin to close.
// Args: proxy URL, requests, channel IDs.
func runRESTSender(args []string) error {
	if len(args) < 3 {
		return errors.New("rest-sender: want proxy URL, requests, channels")
	}
	n, _ := strconv.Atoi(args[1])
	var chans []snowflake.ID
	for _, a := range args[2:] {
		id, err := strconv.ParseUint(a, 10, 64)
		if err != nil {
			return err
		}
		chans = append(chans, snowflake.ID(id))
	}
	opts, err := natsfleet.RESTProxy{URL: args[0]}.ClientOpts()
	if err != nil {
		return err
	}
	quiet := slog.New(slog.DiscardHandler)
	clients := make([]rest.Rest, 2)
	for i := range clients {
		c := rest.NewClient(os.Getenv("FLEET_BENCH_TOKEN"), append(opts, rest.WithLogger(quiet))...)
		defer c.Close(context.Background())
		clients[i] = rest.New(c)
	}
	var wg, ready sync.WaitGroup
	gate := make(chan struct{})
	var failed atomic.Int64
	var first atomic.Value
	for i := range n {
		c := clients[i%len(clients)]
		ready.Add(1)
		wg.Go(func() {
			ready.Done()
			<-gate
			if _, err := c.CreateMessage(chans[i%len(chans)], discord.MessageCreate{Content: "bench"}); err != nil {
				failed.Add(1)
				first.CompareAndSwap(nil, err)
			}
		})
	}
	ready.Wait()
	fmt.Println("ready")
	in := make([]byte, 3)
	if _, err := io.ReadFull(os.Stdin, in); err != nil {
		close(gate)
		wg.Wait()
		return err
	}
	close(gate)
	wg.Wait()
	if f := failed.Load(); f > 0 {
		fmt.Printf("%d requests failed, first: %v\n", f, first.Load())
	} else {
		fmt.Println("done")
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}
