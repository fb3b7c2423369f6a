package services_test

import (
	"context"
	"fmt"
	"time"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/services"
)

// A counter service and the central store, started before the clusters
// and called through the bus.
func Example() {
	b := bus.New(bus.Options{})
	defer b.Close()

	counter := services.Spec{Name: "counter", New: func() services.Service {
		n := 0 // one command at a time: no lock needed
		return services.Func(func(ctx context.Context, sc *services.Context) error {
			bus.Handle(sc.Endpoint(), "inc", func(ctx context.Context, by int) (int, error) {
				n += by
				return n, nil
			})
			return nil
		})
	}}
	m, err := services.NewManager(b, services.ManagerConfig{
		Specs: []services.Spec{services.NewStore().Spec(), counter},
	})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.Start(ctx); err != nil { // before the clusters
		panic(err)
	}
	defer m.Close(ctx)

	for range 3 {
		n, err := bus.Request[int, int](ctx, b, bus.Service("counter"), "inc", 2)
		fmt.Println("counter:", n, err)
	}
	if err := services.StoreSet(ctx, b, "prefix", "!"); err != nil {
		panic(err)
	}
	prefix, ok, err := services.StoreGet[string](ctx, b, "prefix")
	fmt.Println("prefix:", prefix, ok, err)
	for _, in := range m.Services() {
		fmt.Println(in.Name, in.State)
	}
	// Output:
	// counter: 2 <nil>
	// counter: 4 <nil>
	// counter: 6 <nil>
	// prefix: ! true <nil>
	// store ready
	// counter ready
}

// A soft restart swaps in a new instance without losing a command.
func ExampleManager_SoftRestart() {
	b := bus.New(bus.Options{})
	defer b.Close()

	version := 0
	spec := services.Spec{Name: "hello", New: func() services.Service {
		version++
		v := version
		return services.Func(func(ctx context.Context, sc *services.Context) error {
			bus.Handle(sc.Endpoint(), "version", func(context.Context, struct{}) (int, error) { return v, nil })
			return nil
		})
	}}
	var events []services.EventKind
	m, err := services.NewManager(b, services.ManagerConfig{
		Specs:   []services.Spec{spec},
		OnEvent: func(ev services.Event) { events = append(events, ev.Kind()) },
	})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.Start(ctx); err != nil {
		panic(err)
	}
	v, _ := bus.Request[struct{}, int](ctx, b, bus.Service("hello"), "version", struct{}{})
	fmt.Println("before:", v)
	if err := m.SoftRestart(ctx, "hello"); err != nil {
		panic(err)
	}
	v, _ = bus.Request[struct{}, int](ctx, b, bus.Service("hello"), "version", struct{}{})
	fmt.Println("after:", v)
	if err := m.Close(ctx); err != nil {
		panic(err)
	}
	fmt.Println(events)
	// Output:
	// before: 1
	// after: 2
	// [service_ready service_restarted service_ready service_shutdown]
}
