// Command services runs a "counter" service and the central store on a
// bus, and four "clusters" (goroutines) that use both, as a fleet's
// clusters would. It needs no network.
//
//	go run ./examples/services
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/services"
)

// counter counts the events the clusters report, per kind. It handles one
// command at a time, so its map needs no lock.
type counter struct{ counts map[string]int }

func (c *counter) Start(ctx context.Context, sc *services.Context) error {
	c.counts = map[string]int{}
	bus.Handle(sc.Endpoint(), "add", func(ctx context.Context, kind string) (int, error) {
		c.counts[kind]++
		return c.counts[kind], nil
	})
	bus.Handle(sc.Endpoint(), "get", func(ctx context.Context, kind string) (int, error) {
		return c.counts[kind], nil
	})
	sc.Logger().Info("counter ready")
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "services:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	b := bus.New(bus.Options{Logger: log})
	defer b.Close()
	m, err := services.NewManager(b, services.ManagerConfig{
		Specs: []services.Spec{
			services.NewStore().Spec(),
			{Name: "counter", New: func() services.Service { return &counter{} }},
		},
		Logger: log,
	})
	if err != nil {
		return err
	}
	// Services first; the clusters start once every service is ready.
	if err := m.Start(ctx); err != nil {
		return err
	}
	defer m.Close(ctx)

	const clusters = 4
	var wg sync.WaitGroup
	errs := make(chan error, clusters)
	for id := range clusters {
		wg.Go(func() {
			for range 25 {
				if _, err := bus.Request[string, int](ctx, b, bus.Service("counter"), "add", "message"); err != nil {
					errs <- err
					return
				}
			}
			if err := services.StoreSet(ctx, b, fmt.Sprintf("cluster/%d/guilds", id), 100*(id+1)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil { // nil once errs is drained
		return err
	}

	n, err := bus.Request[string, int](ctx, b, bus.Service("counter"), "get", "message")
	if err != nil {
		return err
	}
	fmt.Println("messages counted:", n)
	keys, err := services.StoreKeys(ctx, b)
	if err != nil {
		return err
	}
	total := 0
	for _, k := range keys {
		v, _, err := services.StoreGet[int](ctx, b, k)
		if err != nil {
			return err
		}
		fmt.Printf("store %s = %d\n", k, v)
		total += v
	}
	fmt.Println("guilds in all clusters:", total)
	for _, in := range m.Services() {
		fmt.Printf("service %s: %s, %d restarts\n", in.Name, in.State, in.Restarts)
	}
	return m.Close(ctx)
}
