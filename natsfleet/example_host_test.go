package natsfleet_test

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/natsfleet"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// One host of a fleet, against the Discord simulator: it leads, plans the
// fleet (two shards, two clusters) and, alone, runs every cluster. Every
// other host would run the same code with its own ID.
func ExampleHost() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	quiet := slog.New(slog.DiscardHandler)
	discord := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithIdentifyWindow(time.Millisecond))
	defer discord.Close()
	s, err := natsfleet.StartServer(natsfleet.ServerConfig{})
	if err != nil {
		panic(err)
	}
	defer s.Close()
	nc, err := s.Connect(ctx, natsfleet.Logger(quiet))
	if err != nil {
		panic(err)
	}
	defer nc.Close()

	h, err := natsfleet.NewHost(ctx, nc, natsfleet.HostConfig{
		Fleet: "example", ID: "host-1", LeaseTTL: 2 * time.Second,
		Runtime: runtime.Config{
			Token: runtime.Token(discord.Token()), GatewayURL: discord.GatewayURL(), RESTURL: discord.RESTURL(),
			IdentifyInterval: discord.IdentifyWindow(), Shards: 2, Clusters: 2,
			Bot: func(int) runtime.Bot {
				return runtime.BotFunc(func(context.Context, *shardgroup.Group) error { return nil })
			},
		},
	})
	if err != nil {
		panic(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- h.Run(runCtx) }()

	for len(h.Owned()) < 2 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	st, err := h.Status(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Printf("leader %s, %d shards, clusters %v here\n", st.Leader, st.Shards, h.Owned())
	stop() // hands the clusters over: their sessions are saved for the next owner
	fmt.Println("stopped:", <-done)
	// Output:
	// leader host-1, 2 shards, clusters [0 1] here
	// stopped: <nil>
}
