// Command quickstart starts the Discord simulator and connects a disgo
// ShardManager to it: shards print as they become ready, and messages
// print as they arrive. With DISCORD_TOKEN set it connects to Discord
// instead.
//
//	go run ./examples/quickstart -duration 10s
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/disgoorg/disgo/gateway"
	"github.com/disgoorg/disgo/sharding"

	"github.com/gofleet/fleet/discordtest"
)

func main() {
	duration := flag.Duration("duration", 0, "stop after this long (0: run until Ctrl-C)")
	shards := flag.Int("shards", 16, "shards to run against the simulator")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	if err := run(ctx, *shards); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, shards int) error {
	token, gatewayURL := os.Getenv("DISCORD_TOKEN"), "wss://gateway.discord.gg"
	var sim *discordtest.Server
	if token == "" {
		sim = discordtest.NewServer(
			discordtest.WithGuilds(5000),
			discordtest.WithMaxConcurrency(shards),
			discordtest.WithIdentifyWindow(100*time.Millisecond),
		)
		defer sim.Close()
		token, gatewayURL = sim.Token(), sim.GatewayURL()
		fmt.Printf("simulator: gateway %s, rest %s, %d guilds\n", sim.GatewayURL(), sim.RESTURL(), sim.Guilds())
	}

	var ready, guilds, messages atomic.Int64
	start := time.Now()
	handler := func(t gateway.EventType, seq, shard int, e gateway.EventData) {
		switch ev := e.(type) {
		case gateway.EventReady:
			fmt.Printf("shard %d ready (%d of %d) after %s, %d guilds\n", shard, ready.Add(1), shards,
				time.Since(start).Round(time.Millisecond), len(ev.Guilds))
		case gateway.EventGuildCreate:
			guilds.Add(1)
		case gateway.EventMessageCreate:
			if messages.Add(1) <= 5 {
				fmt.Printf("shard %d: message %q in guild %s (seq %d)\n", shard, ev.Content, ev.GuildID, seq)
			}
		}
	}
	ids := make([]int, shards)
	for i := range ids {
		ids[i] = i
	}
	quiet := slog.New(slog.DiscardHandler)
	sm := sharding.New(token, handler,
		sharding.WithShardIDs(ids...),
		sharding.WithShardCount(shards),
		sharding.WithLogger(quiet),
		sharding.WithRateLimiterConfigOpt(sharding.WithMaxConcurrency(shards)),
		sharding.WithGatewayConfigOpts(
			gateway.WithURL(gatewayURL),
			gateway.WithLogger(quiet),
			gateway.WithIntents(gateway.IntentGuilds, gateway.IntentGuildMessages, gateway.IntentMessageContent),
		),
	)
	sm.Open(ctx)
	defer sm.Close(context.Background())

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	n := 0
	for {
		select {
		case <-ctx.Done():
			fmt.Printf("stopping: %d shards ready, %d guilds, %d messages\n", ready.Load(), guilds.Load(), messages.Load())
			return nil
		case <-tick.C:
			if sim != nil {
				for i := range 100 {
					g := sim.GuildID((n*100 + i) % sim.Guilds())
					if _, err := sim.Dispatch(g, "MESSAGE_CREATE", sim.MessageCreate(g, "!ping", n*100+i)); err != nil {
						return err
					}
				}
				n++
			}
			fmt.Printf("%s: %d/%d shards ready, %d guilds, %d messages\n", time.Since(start).Round(time.Second),
				ready.Load(), shards, guilds.Load(), messages.Load())
		}
	}
}
