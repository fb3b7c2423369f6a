package runtime_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/restproxy"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/services"
	"github.com/gofleet/fleet/shardgroup"
)

// failing is a service whose Start fails, or blocks until its ctx ends.
type failing struct{ block bool }

func (f failing) Start(ctx context.Context, _ *services.Context) error {
	if f.block {
		<-ctx.Done()
		return context.Cause(ctx)
	}
	return errors.New("no database")
}

func (failing) Stop(context.Context) error { return nil }

// packagePrefix matches the prefix a package of this module puts on its
// errors.
var packagePrefix = regexp.MustCompile(`\b(runtime|services|restproxy|bus|shardgroup|discordtest|metrics|natsfleet): `)

// TestErrorPrefixesDoNotRepeat produces errors of every package boundary a
// user meets (configuration refused by runtime.New, services, the REST
// limiter and proxy, the bus, and fleet operations over the bus) and
// checks that each names a package once at most: an error is wrapped
// once with the context the user needs.
func TestErrorPrefixesDoNotRepeat(t *testing.T) {
	var errs []error
	add := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: no error", what)
			return
		}
		errs = append(errs, fmt.Errorf("%s\x00%w", what, err))
	}
	bot := func(int) runtime.Bot {
		return runtime.BotFunc(func(context.Context, *shardgroup.Group) error { return nil })
	}
	newService := func(s services.Service) func() services.Service { return func() services.Service { return s } }
	cfg := func(edit func(*runtime.Config)) runtime.Config {
		c := runtime.Config{Token: "t", Bot: bot}
		edit(&c)
		return c
	}

	// Configuration refused by runtime.New.
	for what, c := range map[string]runtime.Config{
		"no token":             cfg(func(c *runtime.Config) { c.Token = "" }),
		"MaxRestarts -5":       cfg(func(c *runtime.Config) { c.MaxRestarts = -5 }),
		"both cluster options": cfg(func(c *runtime.Config) { c.Clusters, c.ShardsPerCluster = 2, 4 }),
		"bad REST limiter":     cfg(func(c *runtime.Config) { c.RESTLimiterConfig.GlobalLimit = -1 }),
		"service without name": cfg(func(c *runtime.Config) { c.Services = []services.Spec{{New: newService(failing{})}} }),
		"service without New":  cfg(func(c *runtime.Config) { c.Services = []services.Spec{{Name: "db"}} }),
		"duplicate services": cfg(func(c *runtime.Config) {
			c.Services = []services.Spec{{Name: "db", New: newService(failing{})}, {Name: "db", New: newService(failing{})}}
		}),
		"store name taken": cfg(func(c *runtime.Config) { c.Services = []services.Spec{{Name: "store", New: newService(failing{})}} }),
	} {
		_, err := runtime.New(c)
		add("runtime.New: "+what, err)
	}

	// The REST limiter and proxy.
	_, err := restproxy.New(restproxy.Config{InvalidRequestLimit: 10, InvalidRequestStop: 20})
	add("restproxy.New", err)
	lim, err := restproxy.New(restproxy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = restproxy.NewServer(lim, restproxy.ServerConfig{Token: "t", Upstream: "ftp://x"})
	add("restproxy.NewServer", err)

	// Services on a bus: a Start that fails, one that times out, calls
	// to services that are not there.
	ctx := context.Background()
	b := bus.New(bus.Options{DefaultTimeout: time.Second})
	defer b.Close()
	for what, mc := range map[string]services.ManagerConfig{
		"start fails": {Specs: []services.Spec{{Name: "db", New: newService(failing{})}},
			MaxRestarts: 1, RestartBackoff: time.Millisecond},
		"start times out": {Specs: []services.Spec{{Name: "slow", New: newService(failing{block: true})}},
			StartTimeout: time.Millisecond, MaxRestarts: 1, RestartBackoff: time.Millisecond},
	} {
		m, err := services.NewManager(b, mc)
		if err != nil {
			t.Fatal(err)
		}
		add("services: "+what, m.Start(ctx))
		add("services: restart unknown", m.Restart(ctx, "nope"))
		if err := m.Close(ctx); err != nil {
			t.Error(err)
		}
	}
	_, err = services.NewManager(b, services.ManagerConfig{MaxRestarts: -5})
	add("services.NewManager", err)
	_, _, err = services.StoreGet[int](ctx, b, "k")
	add("services.StoreGet without a store", err)

	// The bus: no such address, a handler's error, a timeout, and a
	// handler whose own request failed.
	ep, err := b.Register(bus.Service("echo"))
	if err != nil {
		t.Fatal(err)
	}
	bus.Handle(ep, "fail", func(context.Context, int) (int, error) { return 0, errors.New("out of cheese") })
	bus.Handle(ep, "wait", func(ctx context.Context, _ int) (int, error) { <-ctx.Done(); return 0, ctx.Err() })
	bus.Handle(ep, "forward", func(ctx context.Context, n int) (int, error) {
		return bus.Request[int, int](ctx, b, bus.Service("nowhere"), "x", n)
	})
	for _, cmd := range []string{"fail", "forward", "missing"} {
		_, err := bus.Request[int, int](ctx, b, bus.Service("echo"), cmd, 1)
		add("bus: "+cmd, err)
	}
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	_, err = bus.Request[int, int](short, b, bus.Service("echo"), "wait", 1)
	cancel()
	add("bus: timeout", err)
	_, err = bus.Request[int, int](ctx, b, bus.Service("nowhere"), "x", 1)
	add("bus: unknown address", err)

	// Fleet operations, directly and over the bus.
	s := discordtest.NewServer(discordtest.WithGuilds(2), discordtest.WithRecommendedShards(1),
		discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	var failSetup atomic.Bool
	rt, err := runtime.New(runtime.Config{Token: runtime.Token(s.Token()), GatewayURL: s.GatewayURL(),
		RESTURL: s.RESTURL(), IdentifyInterval: s.IdentifyWindow(), Clusters: 1, MaxRestarts: 1, RestartBackoff: time.Millisecond,
		Bot: func(int) runtime.Bot {
			return runtime.BotFunc(func(context.Context, *shardgroup.Group) error {
				if failSetup.Load() {
					return errors.New("no config")
				}
				return nil
			})
		}})
	if err != nil {
		t.Fatal(err)
	}
	add("Restart before Run", rt.Restart(ctx, 0))
	ready := make(chan struct{})
	rt.Subscribe(func(e runtime.Event) {
		if _, ok := e.(runtime.FleetReady); ok {
			close(ready)
		}
	})
	errc := make(chan error, 1)
	go func() { errc <- rt.Run(ctx) }()
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatal("fleet not ready")
	}
	add("Restart of an unknown cluster", rt.Restart(ctx, 7))
	add("Restart over the bus", runtime.NewClient(rt.Bus()).Restart(ctx, 7))
	add("RestartService over the bus", runtime.NewClient(rt.Bus()).RestartService(ctx, "nope"))
	add("Reshard to a bad count", rt.Reshard(ctx, runtime.ReshardOptions{Shards: 2, Clusters: 3}))
	// A Setup that fails: in a soft restart, a rolling one, a hard
	// restart, then the cluster given up on and Run's error.
	failSetup.Store(true)
	add("SoftRestart with a failing Setup", rt.SoftRestart(ctx, 0))
	add("SoftRestartAll with a failing Setup", rt.SoftRestartAll(ctx))
	failed := make(chan error, 1)
	rt.Subscribe(func(e runtime.Event) {
		if e, ok := e.(runtime.ClusterFailed); ok {
			failed <- e.Err
		}
	})
	add("Restart with a failing Setup", rt.Restart(ctx, 0))
	select {
	case err := <-failed:
		add("cluster_failed event", err)
	case <-time.After(20 * time.Second):
		t.Fatal("no cluster_failed event")
	}
	select {
	case err := <-errc:
		add("Run with every cluster failed", err)
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return with every cluster failed")
	}

	for _, err := range errs {
		what, msg, _ := cutNUL(err.Error())
		seen := map[string]bool{}
		for _, m := range packagePrefix.FindAllStringSubmatch(msg, -1) {
			if seen[m[1]] {
				t.Errorf("%s: %q names %q twice", what, msg, m[1])
			}
			seen[m[1]] = true
		}
		t.Logf("%s: %s", what, msg)
	}
}

func cutNUL(s string) (before, after string, found bool) {
	for i := range len(s) {
		if s[i] == 0 {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}
