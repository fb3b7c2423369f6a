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

// A fleet of hosts (here one) resharded from two shards to four: the new
// plan's clusters identify beside the old ones, take over, and the plan
// revision moves on.
func ExampleHost_Reshard() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	quiet := slog.New(slog.DiscardHandler)
	discord := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithIdentifyWindow(time.Millisecond))
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

	if err := h.Reshard(ctx, 4); err != nil {
		panic(err)
	}
	st, err := h.Status(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Printf("plan revision %d: %d shards; reshard %s\n", st.PlanRevision, st.Shards, st.Reshard.Phase)
	for _, c := range st.Clusters {
		fmt.Printf("cluster %d: shards %v\n", c.ID, c.Shards)
	}
	stop()
	fmt.Println("stopped:", <-done)
	// Output:
	// plan revision 2: 4 shards; reshard done
	// cluster 0: shards [0 1]
	// cluster 1: shards [2 3]
	// stopped: <nil>
}
