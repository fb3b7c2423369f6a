package runtime

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/disgoorg/snowflake/v2"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/services"
	"github.com/gofleet/fleet/shardgroup"
)

// echoService answers "whoami" with its instance number.
type echoService struct {
	instance int
	ready    *atomic.Bool
}

func (e echoService) Start(_ context.Context, sc *services.Context) error {
	bus.Handle(sc.Endpoint(), "whoami", func(context.Context, string) (int, error) { return e.instance, nil })
	e.ready.Store(true)
	return nil
}

// ipcBot checks the service is ready at Setup and answers "guilds" with
// its cluster's guild count.
type ipcBot struct {
	cluster      int
	serviceReady *atomic.Bool
	early        *atomic.Int32
}

func (b ipcBot) Setup(_ context.Context, g *shardgroup.Group) error {
	if !b.serviceReady.Load() {
		b.early.Add(1)
	}
	return nil
}

func (b ipcBot) Commands(ep bus.Handlers) {
	bus.Handle(ep, "cluster_id", func(context.Context, string) (int, error) { return b.cluster, nil })
}

func TestIPC(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(16), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	var ready atomic.Bool
	var early atomic.Int32
	var instances atomic.Int32
	cfg := testConfig(s)
	cfg.Clusters, cfg.StrictBus = 4, true
	cfg.Services = []services.Spec{{Name: "echo", New: func() services.Service {
		return echoService{instance: int(instances.Add(1)), ready: &ready}
	}}}
	cfg.Bot = func(id int) Bot { return ipcBot{cluster: id, serviceReady: &ready, early: &early} }
	rt, stop := startFleet(t, cfg)
	defer stop()
	b := rt.Bus()
	f := NewClient(b)
	ctx := context.Background()

	if early.Load() != 0 {
		t.Fatal("a cluster was set up before every service was ready")
	}
	t.Run("service command", func(t *testing.T) {
		n, err := bus.Request[string, int](ctx, b, bus.Service("echo"), "whoami", "")
		if err != nil || n != 1 {
			t.Fatalf("got %d, %v", n, err)
		}
	})
	t.Run("fetchGuild routed to the owning cluster", func(t *testing.T) {
		// READY comes before the guilds: wait until they are all cached.
		waitFor(t, func() bool {
			for _, g := range rt.groups() {
				if !g.Loaded() {
					return false
				}
			}
			return true
		})
		for i := range 16 {
			id := snowflake.ID(s.GuildID(i))
			g, err := f.FetchGuild(ctx, id)
			if err != nil || g == nil || g.ID != id {
				t.Fatalf("guild %d: %+v, %v", i, g, err)
			}
		}
		if g, err := f.FetchGuild(ctx, 12345<<22); err != nil || g != nil {
			t.Fatalf("unknown guild: %+v, %v", g, err)
		}
		gid := snowflake.ID(s.GuildID(3))
		m, err := f.FetchMember(ctx, gid, snowflake.ID(s.ApplicationID()))
		if err != nil || m == nil || m.User.ID != snowflake.ID(s.ApplicationID()) {
			t.Fatalf("member: %+v, %v", m, err)
		}
		u, err := f.FetchUser(ctx, snowflake.ID(s.ApplicationID()))
		if err != nil || u == nil {
			t.Fatalf("user: %+v, %v", u, err)
		}
	})
	t.Run("cluster commands", func(t *testing.T) {
		id, err := bus.Request[string, int](ctx, b, bus.Cluster(2), "cluster_id", "")
		if err != nil || id != 2 {
			t.Fatalf("cluster command: %d, %v", id, err)
		}
		replies, err := bus.Gather[string, int](ctx, b, bus.AllClusters, "cluster_id", "")
		if err != nil || len(replies) != 4 {
			t.Fatalf("all clusters: %+v, %v", replies, err)
		}
		for _, r := range replies {
			if want, _ := r.From.ClusterID(); r.Err != nil || r.Value != want {
				t.Fatalf("reply %+v", r)
			}
		}
	})
	t.Run("central store from every cluster at once", func(t *testing.T) {
		var wg sync.WaitGroup
		for c := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 20 {
					if err := services.StoreSet(ctx, b, "k"+string(rune('a'+c)), i); err != nil {
						t.Error(err)
					}
				}
			}()
		}
		wg.Wait()
		keys, err := services.StoreKeys(ctx, b)
		if err != nil || len(keys) != 4 {
			t.Fatalf("keys %v, %v", keys, err)
		}
		v, ok, err := services.StoreGet[int](ctx, b, "kc")
		if err != nil || !ok || v != 19 {
			t.Fatalf("get: %d %v %v", v, ok, err)
		}
	})
	t.Run("admiral commands over the bus", func(t *testing.T) {
		before := s.Stats().Identifies
		if err := f.SoftRestart(ctx, 1); err != nil {
			t.Fatal(err)
		}
		if s.Stats().Identifies != before {
			t.Fatal("a soft restart over the bus identified")
		}
		// The cluster's commands moved to the new instance.
		if id, err := bus.Request[string, int](ctx, b, bus.Cluster(1), "cluster_id", ""); err != nil || id != 1 {
			t.Fatalf("after soft restart: %d, %v", id, err)
		}
		if err := f.SoftRestartService(ctx, "echo"); err != nil {
			t.Fatal(err)
		}
		if n, err := bus.Request[string, int](ctx, b, bus.Service("echo"), "whoami", ""); err != nil || n != 2 {
			t.Fatalf("after service restart: instance %d, %v", n, err)
		}
		w, err := f.Workers(ctx)
		if err != nil || len(w.Clusters) != 4 || len(w.Services) != 2 {
			t.Fatalf("workers %+v, %v", w, err)
		}
		if bs := rt.Stats().Bus; bs.Requests == 0 || bs.Latency <= 0 {
			t.Fatalf("bus stats %+v", bs)
		}
		st, err := f.Stats(ctx) // strict mode: the snapshot survives JSON
		if err != nil || st.Shards != 4 || len(st.Clusters) != 4 || st.Guilds != 16 {
			t.Fatalf("stats over the bus: shards %d, clusters %d, guilds %d, %v", st.Shards, len(st.Clusters), st.Guilds, err)
		}
		if err := f.SoftRestart(ctx, 9); !errors.Is(err, ErrUnknownCluster) {
			t.Fatalf("unknown cluster: %v", err)
		}
	})
}

func TestDuplicateServiceNames(t *testing.T) {
	cfg := Config{Token: "x", Bot: nopBot, Services: []services.Spec{
		{Name: "a", New: func() services.Service { return nil }},
		{Name: "a", New: func() services.Service { return nil }},
	}}
	_, err := New(cfg)
	if err == nil || !strings.Contains(err.Error(), `duplicate service name "a"`) {
		t.Fatalf("error %v", err)
	}
}

func TestShutdownOverTheBus(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	rt := runReady(t, testConfig(s))
	if err := NewClient(rt.Bus()).Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-rt.Done()
	if err := rt.Err(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := NewClient(rt.Bus()).Workers(context.Background()); !errors.Is(err, bus.ErrClosed) && !errors.Is(err, bus.ErrUnknownAddress) {
		t.Fatalf("after shutdown: %v", err)
	}
}
