package runtime_test

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/services"
	"github.com/gofleet/fleet/shardgroup"
)

// A service drives the fleet with the calls the program that owns the
// runtime would make: a Client is a runtime.Fleet, as *runtime.Runtime
// is. Asked to "recycle", it soft-restarts every cluster over the bus.
func ExampleClient() {
	s := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithRecommendedShards(2),
		discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()

	ops := services.Spec{Name: "ops", New: func() services.Service {
		return services.Func(func(_ context.Context, sc *services.Context) error {
			f := runtime.NewClient(sc.Bus())
			bus.Handle(sc.Endpoint(), "recycle", func(ctx context.Context, _ struct{}) (int, error) {
				if err := f.SoftRestartAll(ctx); err != nil {
					return 0, err
				}
				w, err := f.Workers(ctx)
				return len(w.Clusters), err
			})
			return nil
		})
	}}
	rt, err := runtime.New(runtime.Config{
		Token: runtime.Token(s.Token()),
		Bot: func(int) runtime.Bot {
			return runtime.BotFunc(func(context.Context, *shardgroup.Group) error { return nil })
		},
		Clusters:         2,
		Services:         []services.Spec{ops},
		GatewayURL:       s.GatewayURL(),
		RESTURL:          s.RESTURL(),
		IdentifyInterval: s.IdentifyWindow(),
		Logger:           slog.New(slog.DiscardHandler),
	})
	if err != nil {
		panic(err)
	}
	ready := make(chan struct{})
	unsubscribe := rt.Subscribe(func(e runtime.Event) {
		if e.Kind() == runtime.EventFleetReady {
			close(ready)
		}
	})
	errc := make(chan error, 1)
	go func() { errc <- rt.Run(context.Background()) }()
	<-ready
	unsubscribe()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	identifies := s.Stats().Identifies
	n, err := bus.Request[struct{}, int](ctx, rt.Bus(), bus.Service("ops"), "recycle", struct{}{})
	fmt.Println("clusters soft-restarted:", n, err)
	fmt.Println("IDENTIFYs spent:", s.Stats().Identifies-identifies)
	fmt.Println("shutdown:", rt.Shutdown(ctx), <-errc)
	// Output:
	// clusters soft-restarted: 2 <nil>
	// IDENTIFYs spent: 0
	// shutdown: <nil> <nil>
}
