package shardgroup_test

import (
	"context"
	"fmt"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/events"
	"github.com/disgoorg/disgo/gateway"
	"github.com/disgoorg/disgo/rest"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// One group of two shards against the simulator: its owner keeps the
// Runner, its user code gets the Group.
func Example() {
	srv := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithRecommendedShards(2),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(10*time.Millisecond))
	defer srv.Close()
	queue, err := runtime.NewLocalIdentifyQueue(srv.MaxConcurrency(), srv.IdentifyWindow())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer queue.Close(context.Background())

	r, err := shardgroup.New(shardgroup.Config{
		ID: 0, ShardIDs: []int{0, 1}, ShardCount: 2,
		Token: shardgroup.Token(srv.Token()), GatewayURL: srv.GatewayURL(),
		Intents:         gateway.IntentGuilds | gateway.IntentGuildMessages | gateway.IntentMessageContent,
		IdentifyLimiter: queue,
		// The example makes no REST call: a limiter that starts no goroutine.
		ClientOptions: []bot.ConfigOpt{bot.WithRestClientConfigOpts(rest.WithURL(srv.RESTURL()),
			rest.WithRateLimiter(rest.NewNoopRateLimiter()))},
	})
	if err != nil {
		fmt.Println(err)
		return
	}

	// The user code's part: listeners on the group's disgo client.
	g := r.Group()
	loaded := make(chan struct{}, 4)
	messages := make(chan string, 1)
	g.Client().AddEventListeners(
		bot.NewListenerFunc(func(*events.GuildReady) { loaded <- struct{}{} }),
		bot.NewListenerFunc(func(e *events.MessageCreate) { messages <- e.Message.Content }),
	)
	fmt.Println(g)

	// The owner's part: start, and stop keeping the sessions.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.Start(ctx)
	timeout := time.After(10 * time.Second)
	for range srv.Guilds() { // each shard's guilds have arrived
		select {
		case <-loaded:
		case <-timeout:
			fmt.Println("shards not ready")
			return
		}
	}
	fmt.Println("state:", g.State())
	guild := srv.GuildID(0)
	if _, err := srv.Dispatch(guild, "MESSAGE_CREATE", srv.MessageCreate(guild, "hello", 1)); err != nil {
		fmt.Println(err)
		return
	}
	select {
	case m := <-messages:
		fmt.Println("message:", m)
	case <-timeout:
		fmt.Println("no message")
	}
	sessions, err := r.Stop(context.Background(), true)
	fmt.Println("sessions to resume:", len(sessions), err)
	// Output:
	// shardgroup.Group{id: 0, shards: [0 1], shard_count: 2}
	// state: ready
	// message: hello
	// sessions to resume: 2 <nil>
}
