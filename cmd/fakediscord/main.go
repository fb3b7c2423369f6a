// Command fakediscord runs the discordtest simulator as a standalone
// server, so that any Discord library, in any language, can be pointed at
// it. It prints the gateway URL, the REST URL and the token, then serves
// until interrupted.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/gofleet/fleet/discordtest"
)

func main() {
	var (
		addr        = flag.String("addr", "127.0.0.1:0", "listen address (loopback by default)")
		guilds      = flag.Int("guilds", 1000, "guilds the bot is in")
		shards      = flag.Int("shards", 0, "shard count GET /gateway/bot recommends (0: one per 1,000 guilds)")
		concurrency = flag.Int("max-concurrency", 1, "identify buckets (session_start_limit.max_concurrency)")
		window      = flag.Duration("identify-window", 5*time.Second, "how long a bucket stays taken after an IDENTIFY")
		heartbeat   = flag.Duration("heartbeat", 41250*time.Millisecond, "heartbeat_interval sent in HELLO")
		starts      = flag.Int("session-starts", 1000, "session_start_limit.total")
		globalRate  = flag.Int("global-limit", 50, "REST global limit, requests per second")
		members     = flag.Int("members", 5, "members per guild")
		verbose     = flag.Bool("v", false, "log connections, closes and violations")
		compress    = flag.String("compress", "zlib-stream,zstd-stream", "transport compressions the gateway accepts, comma-separated (others are refused with 4002)")
	)
	flag.Parse()

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
	if *verbose {
		opts = append(opts, discordtest.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, nil))))
	}
	s, err := discordtest.StartAt(*addr, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakediscord:", err)
		os.Exit(2)
	}
	fmt.Printf("gateway: %s\nrest:    %s\ntoken:   %s\n", s.GatewayURL(), s.RESTURL(), s.Token())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	s.Close()
	st := s.Stats()
	fmt.Printf("identifies %d, resumes %d, violations %v, events sent %d\n",
		st.Identifies, st.Resumes, st.Violations, st.TotalEventsSent())
}
