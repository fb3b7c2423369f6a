// Command fakediscord runs the discordtest simulator as a standalone
// server, so that any Discord library, in any language, can be pointed at
// it. It prints the gateway URL, the REST URL and the token, then serves
// until interrupted.
//
// With -control it also serves an HTTP control API (on loopback unless
// -control-addr says otherwise) for every fault and load operation of
// discordtest.Server, GET /stats and GET /identifies; the README section
// "Using fakediscord from another language" lists the endpoints.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/gofleet/fleet/discordtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "fakediscord:", err)
		os.Exit(2)
	}
}

// run parses args, serves until ctx ends and prints a summary.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fakediscord", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		addr        = fs.String("addr", "127.0.0.1:0", "listen address (loopback by default)")
		guilds      = fs.Int("guilds", 1000, "guilds the bot is in")
		shards      = fs.Int("shards", 0, "shard count GET /gateway/bot recommends (0: one per 1,000 guilds)")
		concurrency = fs.Int("max-concurrency", 1, "identify buckets (session_start_limit.max_concurrency)")
		window      = fs.Duration("identify-window", 5*time.Second, "how long a bucket stays taken after an IDENTIFY")
		heartbeat   = fs.Duration("heartbeat", 41250*time.Millisecond, "heartbeat_interval sent in HELLO")
		starts      = fs.Int("session-starts", 1000, "session_start_limit.total")
		globalRate  = fs.Int("global-limit", 50, "REST global limit, requests per second")
		members     = fs.Int("members", 5, "members per guild")
		token       = fs.String("token", "", "bot token to accept (default: a generated one, printed at start)")
		verbose     = fs.Bool("v", false, "log connections, identifies, resumes, closes and violations to stderr")
		compress    = fs.String("compress", "zlib-stream,zstd-stream", "transport compressions the gateway accepts, comma-separated (others are refused with 4002)")
		ctl         = fs.Bool("control", false, "serve the HTTP control API (faults, load, stats)")
		ctlAddr     = fs.String("control-addr", "127.0.0.1:0", "listen address of the control API (with -control)")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: every setting is a flag (-h lists them)", fs.Args())
	}

	opts := []discordtest.Option{
		discordtest.WithGuilds(*guilds),
		discordtest.WithMaxConcurrency(*concurrency),
		discordtest.WithIdentifyWindow(*window),
		discordtest.WithHeartbeatInterval(*heartbeat),
		discordtest.WithSessionStartLimit(*starts, 24*time.Hour),
		discordtest.WithGlobalRateLimit(*globalRate, time.Second),
		discordtest.WithGuildShape(*members, 3, 2),
	}
	var accepted []string
	for _, c := range strings.Split(*compress, ",") {
		if c = strings.TrimSpace(c); c != "" {
			accepted = append(accepted, c)
		}
	}
	opts = append(opts, discordtest.WithCompressions(accepted...))
	if *shards > 0 {
		opts = append(opts, discordtest.WithRecommendedShards(*shards))
	}
	if *token != "" {
		opts = append(opts, discordtest.WithToken(*token))
	}
	if *verbose {
		opts = append(opts, discordtest.WithLogger(slog.New(slog.NewTextHandler(stderr, nil))))
	}
	s, err := discordtest.StartAt(*addr, opts...)
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Fprintf(stdout, "gateway: %s\nrest:    %s\ntoken:   %s\n", s.GatewayURL(), s.RESTURL(), s.Token())

	var c *control
	controlURL := ""
	if *ctl {
		ln, err := net.Listen("tcp", *ctlAddr)
		if err != nil {
			return fmt.Errorf("control API: listen on %s: %w (set -control-addr)", *ctlAddr, err)
		}
		c = newControl(s)
		srv := &http.Server{Handler: c, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
			IdleTimeout: 2 * time.Minute}
		served := make(chan struct{})
		go func() {
			defer close(served)
			_ = srv.Serve(ln)
		}()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = c.shutdown(sctx)
			_ = srv.Shutdown(sctx)
			_ = srv.Close()
			<-served
		}()
		if ip := ln.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
			fmt.Fprintf(stderr, "fakediscord: the control API on %s is reachable from other hosts and has no authentication\n", ln.Addr())
		}
		controlURL = "http://" + ln.Addr().String()
		fmt.Fprintf(stdout, "control: %s\n", controlURL)
	}
	paste := fmt.Sprintf("-gateway %s -rest %s -token %s", s.GatewayURL(), s.RESTURL(), s.Token())
	if controlURL != "" {
		paste += " -control " + controlURL
	}
	fmt.Fprintf(stdout, "run the quickstart on it:\n  go run ./examples/quickstart %s\n", paste)
	fmt.Fprintln(stdout, "serving; interrupt to stop")

	<-ctx.Done()
	st := s.Stats()
	fmt.Fprintf(stdout, "identifies %d, resumes %d, violations %v, events sent %d\n",
		st.Identifies, st.Resumes, st.Violations, st.TotalEventsSent())
	return nil
}
