package runtime_test

import (
	"context"
	"fmt"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/events"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// A fleet of two clusters against the Discord simulator: each cluster's
// Bot registers a listener in Setup; the fleet starts, hears a message and
// shuts down.
func Example() {
	srv := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithRecommendedShards(2),
		discordtest.WithIdentifyWindow(time.Millisecond))
	defer srv.Close()

	heard := make(chan string, 1)
	rt, err := runtime.New(runtime.Config{
		Token:      runtime.Token(srv.Token()),
		GatewayURL: srv.GatewayURL(), RESTURL: srv.RESTURL(), IdentifyInterval: srv.IdentifyWindow(),
		Clusters: 2,
		Bot: func(cluster int) runtime.Bot {
			return runtime.BotFunc(func(_ context.Context, g *shardgroup.Group) error {
				g.Client().AddEventListeners(bot.NewListenerFunc(func(e *events.MessageCreate) {
					heard <- fmt.Sprintf("cluster %d heard %q", cluster, e.Message.Content)
				}))
				return nil
			})
		},
	})
	if err != nil {
		panic(err)
	}
	ready := make(chan struct{})
	rt.Subscribe(func(e runtime.Event) {
		if e.Kind() == runtime.EventFleetReady {
			close(ready)
		}
	})
	done := make(chan error, 1)
	go func() { done <- rt.Run(context.Background()) }()
	select {
	case <-ready:
	case err := <-done:
		panic(err)
	}

	st := rt.Stats()
	fmt.Printf("%d shards in %d clusters, %d ready\n", st.Shards, len(st.Clusters), st.ShardsReady)
	for _, c := range st.Clusters {
		fmt.Printf("cluster %d: %s, shards %d..%d\n", c.ID, c.State, c.Shards[0].ID, c.Shards[len(c.Shards)-1].ID)
	}

	guild := srv.GuildID(0) // on shard 0, in cluster 0
	if _, err := srv.Dispatch(guild, "MESSAGE_CREATE", srv.MessageCreate(guild, "hello", 1)); err != nil {
		panic(err)
	}
	select {
	case h := <-heard:
		fmt.Println(h)
	case <-time.After(10 * time.Second):
		fmt.Println("nothing heard")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rt.Shutdown(ctx); err != nil {
		panic(err)
	}
	fmt.Println("Run returned:", <-done)
	// Output:
	// 2 shards in 2 clusters, 2 ready
	// cluster 0: ready, shards 0..0
	// cluster 1: ready, shards 1..1
	// cluster 0 heard "hello"
	// Run returned: <nil>
}
