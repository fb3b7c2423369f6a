package bus_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gofleet/fleet/bus"
)

// A service answers typed commands; a cluster asks.
func Example() {
	b := bus.New(bus.Options{})
	defer b.Close()

	store, err := b.Register(bus.Service("store"))
	if err != nil {
		panic(err)
	}
	var data sync.Map
	bus.Handle(store, "set", func(ctx context.Context, kv [2]string) (bool, error) {
		_, existed := data.Swap(kv[0], kv[1])
		return existed, nil
	})
	bus.Handle(store, "get", func(ctx context.Context, key string) (string, error) {
		v, ok := data.Load(key)
		if !ok {
			return "", fmt.Errorf("no key %q", key)
		}
		return v.(string), nil
	})

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := bus.Request[[2]string, bool](ctx, b, bus.Service("store"), "set", [2]string{"prefix", "!"}); err != nil {
		panic(err)
	}
	v, err := bus.Request[string, string](ctx, b, bus.Service("store"), "get", "prefix")
	fmt.Println(v, err)
	_, err = bus.Request[string, string](ctx, b, bus.Service("store"), "get", "nope")
	fmt.Println(err)
	_, err = bus.Request[string, string](ctx, b, bus.Service("store"), "delete", "prefix")
	fmt.Println(errors.Is(err, bus.ErrUnknownCommand))
	// Output:
	// ! <nil>
	// bus: service/store get: no key "nope"
	// true
}

// Gather asks every cluster and keeps each one's answer or error.
func ExampleGather() {
	b := bus.New(bus.Options{})
	defer b.Close()
	for id := range 3 {
		ep, err := b.Register(bus.Cluster(id))
		if err != nil {
			panic(err)
		}
		bus.Handle(ep, "guilds", func(ctx context.Context, _ struct{}) (int, error) {
			if id == 1 {
				return 0, errors.New("shards not ready")
			}
			return 1000 * (id + 1), nil
		})
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	replies, err := bus.Gather[struct{}, int](ctx, b, bus.AllClusters, "guilds", struct{}{})
	if err != nil {
		panic(err)
	}
	for _, r := range replies {
		fmt.Println(r.From, r.Value, r.Err)
	}
	// Output:
	// cluster/0 1000 <nil>
	// cluster/1 0 bus: cluster/1 guilds: shards not ready
	// cluster/2 3000 <nil>
}

// Publish broadcasts an event; each endpoint's subscribers get it in its
// own workers, a bus-wide subscriber sees it before Publish returns.
func ExamplePublish() {
	b := bus.New(bus.Options{})
	defer b.Close()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var got []string
	for _, addr := range []bus.Address{bus.Admiral, bus.Cluster(0), bus.Service("store")} {
		ep, err := b.Register(addr)
		if err != nil {
			panic(err)
		}
		ep.Subscribe("maintenance", func(ctx context.Context, ev bus.Event) {
			defer wg.Done()
			mu.Lock()
			defer mu.Unlock()
			got = append(got, fmt.Sprintf("%s got %v", addr, ev.Payload))
		})
	}
	unsubscribe := bus.Subscribe(b, "maintenance", func(ctx context.Context, ev bus.Event) {
		fmt.Println("bus-wide:", ev.Name, ev.Payload)
	})
	defer unsubscribe()

	wg.Add(3)
	if err := bus.Publish(context.Background(), b, bus.Everyone, "maintenance", 0); err != nil {
		panic(err)
	}
	wg.Wait()
	slices.Sort(got)
	fmt.Println(strings.Join(got, "\n"))
	// Output:
	// bus-wide: maintenance 0
	// admiral got 0
	// cluster/0 got 0
	// service/store got 0
}

// A soft restart: the new instance's endpoint takes over the address while
// requests keep coming; the old one finishes what it was doing.
func ExampleBus_Replace() {
	b := bus.New(bus.Options{Logger: slog.New(slog.DiscardHandler)})
	defer b.Close()
	addr := bus.Service("counter")
	old, err := b.Register(addr)
	if err != nil {
		panic(err)
	}
	bus.Handle(old, "version", func(ctx context.Context, _ struct{}) (string, error) { return "v1", nil })

	ctx := context.Background()
	v, _ := bus.Request[struct{}, string](ctx, b, addr, "version", struct{}{})
	fmt.Println(v)

	next, err := b.Standby(addr) // the new instance gets ready
	if err != nil {
		panic(err)
	}
	bus.Handle(next, "version", func(ctx context.Context, _ struct{}) (string, error) { return "v2", nil })
	replaced, err := b.Replace(next) // the switch: nothing queued is lost
	if err != nil {
		panic(err)
	}
	if err := replaced.Close(ctx); err != nil { // the old instance drains
		panic(err)
	}
	v, _ = bus.Request[struct{}, string](ctx, b, addr, "version", struct{}{})
	fmt.Println(v)
	// Output:
	// v1
	// v2
}

// Strict mode fails on what could not cross a process boundary.
func ExampleOptions_strict() {
	b := bus.New(bus.Options{Strict: true})
	defer b.Close()
	ep, err := b.Register(bus.Service("jobs"))
	if err != nil {
		panic(err)
	}
	type Job struct {
		Name string
		Done chan struct{}
	}
	bus.Handle(ep, "run", func(ctx context.Context, j Job) (string, error) { return j.Name, nil })
	err = bus.Send(context.Background(), b, bus.Service("jobs"), "run", Job{Name: "x", Done: make(chan struct{})})
	fmt.Println(err)
	// Output:
	// bus: strict mode: cannot encode payload of type bus_test.Job: json: unsupported type: chan struct {}
}
