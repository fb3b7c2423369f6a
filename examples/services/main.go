// Command services runs a fleet whose clusters use a service and the
// central store: every message a cluster receives is counted by a
// "counter" service, each cluster keeps its own tally in the central
// store, and at the end the admiral's view is printed. It runs against an
// embedded Discord simulator and needs no network.
//
//	go run ./examples/services
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/events"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/services"
	"github.com/gofleet/fleet/shardgroup"
)

// counter counts messages by guild. It handles one command at a time, so
// its map needs no lock.
type counter struct{ counts map[string]int }

func (c *counter) Start(_ context.Context, sc *services.Context) error {
	c.counts = map[string]int{}
	bus.Handle(sc.Endpoint(), "add", func(_ context.Context, guild string) (int, error) {
		c.counts[guild]++
		return c.counts[guild], nil
	})
	bus.Handle(sc.Endpoint(), "guilds", func(context.Context, struct{}) (int, error) { return len(c.counts), nil })
	return nil
}

// countingBot reports every message to the counter service and keeps its
// cluster's tally in the central store.
type countingBot struct{ cluster int }

func (b countingBot) Setup(_ context.Context, g *shardgroup.Group) error {
	key := fmt.Sprintf("cluster/%d/messages", b.cluster)
	g.Client().AddEventListeners(bot.NewListenerFunc(func(e *events.MessageCreate) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := bus.Request[string, int](ctx, g.Bus(), bus.Service("counter"), "add", e.GuildID.String()); err != nil {
			g.Logger().Warn("counter unreachable", "err", err)
			return
		}
		// Each shard runs its listeners on its own goroutine, so two
		// shards of a cluster may count at once: the increment is one
		// step in the store, and no update is lost.
		if _, err := services.StoreIncrement(ctx, g.Bus(), key, 1); err != nil {
			g.Logger().Warn("store unreachable", "err", err)
		}
	}))
	return nil
}

func main() {
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: services\n\nRuns a fleet of 4 clusters against the simulator, with a counter service and the central store, and prints what they counted.")
	}
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "services: unexpected arguments %q: it takes none (-h says what it does)\n", flag.Args())
		os.Exit(2)
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "services:", err)
		os.Exit(1)
	}
}

func run() error {
	sim := discordtest.NewServer(discordtest.WithGuilds(200), discordtest.WithRecommendedShards(8),
		discordtest.WithMaxConcurrency(8), discordtest.WithIdentifyWindow(20*time.Millisecond))
	defer sim.Close()
	rt, err := runtime.New(runtime.Config{
		Token: runtime.Token(sim.Token()), GatewayURL: sim.GatewayURL(), RESTURL: sim.RESTURL(),
		IdentifyInterval: sim.IdentifyWindow(), Clusters: 4,
		Services: []services.Spec{{Name: "counter", New: func() services.Service { return &counter{} }}},
		Bot:      func(id int) runtime.Bot { return countingBot{cluster: id} },
	})
	if err != nil {
		return err
	}
	rt.Subscribe(func(e runtime.Event) {
		if e, ok := e.(services.Ready); ok {
			fmt.Printf("service %s ready\n", e.Service)
		}
	})
	go rt.Run(context.Background())
	select {
	case <-rt.Ready():
		fmt.Printf("fleet ready: %d shards\n", rt.Stats().Shards)
	case <-rt.Done():
		return rt.Err()
	}

	const messages = 1000
	if _, err := sim.Load(context.Background(), discordtest.Load{Events: messages, Rate: 5000}); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b := rt.Bus()
	total := 0
	for total < messages && ctx.Err() == nil {
		total = 0
		for id := range 4 {
			n, _, err := services.StoreGet[int](ctx, b, fmt.Sprintf("cluster/%d/messages", id))
			if err != nil {
				return err
			}
			total += n
		}
		time.Sleep(10 * time.Millisecond)
	}
	for id := range 4 {
		n, _, _ := services.StoreGet[int](ctx, b, fmt.Sprintf("cluster/%d/messages", id))
		fmt.Printf("store cluster/%d/messages = %d\n", id, n)
	}
	guilds, err := bus.Request[struct{}, int](ctx, b, bus.Service("counter"), "guilds", struct{}{})
	if err != nil {
		return err
	}
	fmt.Printf("%d messages in %d guilds counted by the service\n", total, guilds)
	w, err := runtime.NewClient(b).Workers(ctx) // as a service or a cluster would ask
	if err != nil {
		return err
	}
	for _, c := range w.Clusters {
		fmt.Printf("cluster %d: shards %v, %s\n", c.ID, c.Shards, c.State)
	}
	for _, s := range w.Services {
		fmt.Printf("service %s: %s, %d restarts\n", s.Name, s.State, s.Restarts)
	}
	if err := rt.Shutdown(ctx); err != nil {
		return err
	}
	<-rt.Done()
	return rt.Err()
}
