package runtime

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/cache"
	disgoevents "github.com/disgoorg/disgo/events"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/services"
	"github.com/gofleet/fleet/shardgroup"
)

// TestSetupGetsTheClusterOnly: Setup's group is the cluster's and its bus
// client calls the fleet's services, but it is not the runtime's bus; a
// listener that closes its disgo client stops nothing, and the runtime
// still soft-restarts and stops the cluster.
func TestSetupGetsTheClusterOnly(t *testing.T) {
	s := smallServer()
	defer s.Close()
	var (
		mu    sync.Mutex
		wrong []string // what Setup saw that it should not have
	)
	closed := make(chan struct{}, 1)
	cfg := testConfig(s)
	cfg.Bot = func(cluster int) Bot {
		return BotFunc(func(ctx context.Context, g *shardgroup.Group) error {
			mu.Lock()
			if _, ok := g.Bus().(*bus.Bus); ok {
				wrong = append(wrong, "the runtime's *bus.Bus")
			}
			if g.ID() != cluster || len(g.ShardIDs()) == 0 {
				wrong = append(wrong, fmt.Sprintf("group %d with shards %v for cluster %d", g.ID(), g.ShardIDs(), cluster))
			}
			mu.Unlock()
			if _, err := services.StoreIncrement(ctx, g.Bus(), "setups", 1); err != nil {
				return err
			}
			g.Client().AddEventListeners(bot.NewListenerFunc(func(e *disgoevents.MessageCreate) {
				if e.Message.Content == "close" {
					e.Client().Close(context.Background()) // no deadline: waiting for its own shard would hang
					closed <- struct{}{}
				}
			}))
			return nil
		})
	}
	rt, stop := startFleet(t, cfg)
	stopped := false
	defer func() {
		if !stopped {
			_ = stop()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	setups := func() int {
		t.Helper()
		n, _, err := services.StoreGet[int](ctx, rt.Bus(), "setups")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := setups(); n != 1 {
		t.Fatalf("%d Setups counted through the group's bus client, want 1", n)
	}

	gid := s.GuildID(0)
	if _, err := s.Dispatch(gid, "MESSAGE_CREATE", s.MessageCreate(gid, "close", 1)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the listener's Client.Close did not return")
	}
	for _, c := range rt.Clusters() {
		for _, sh := range c.Shards {
			if sh.State != shardgroup.StateReady {
				t.Fatalf("cluster %d shard %d is %s after the listener closed its client", c.ID, sh.ID, sh.State)
			}
		}
	}
	if err := rt.SoftRestart(ctx, 0); err != nil {
		t.Fatalf("SoftRestart: %v", err)
	}
	if n := setups(); n != 2 {
		t.Fatalf("%d Setups after a soft restart, want 2", n)
	}
	stopped = true
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(wrong) > 0 {
		t.Fatalf("Setup got %v", wrong)
	}
}

// TestReadyDoneErr: Ready closes when the fleet is ready (before
// EventFleetReady reaches subscribers), Done when Run returns, and Err is
// then what Run returned.
func TestReadyDoneErr(t *testing.T) {
	s := smallServer()
	defer s.Close()
	rt, err := New(testConfig(s))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-rt.Done():
		t.Fatal("Done closed before Run")
	default:
	}
	readyAtEvent := make(chan bool, 1)
	rt.Subscribe(func(e Event) {
		if e.Kind() == EventFleetReady {
			select {
			case <-rt.Ready():
				readyAtEvent <- true
			default:
				readyAtEvent <- false
			}
		}
	})
	go rt.Run(context.Background())
	waitReady(t, rt)
	if !<-readyAtEvent {
		t.Fatal("Ready was not closed when EventFleetReady was emitted")
	}
	select {
	case <-rt.Done():
		t.Fatalf("Done closed while the fleet runs (Err %v)", rt.Err())
	default:
	}
	if err := rt.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-rt.Done():
	default:
		t.Fatal("Done not closed once Shutdown returned")
	}
	if err := rt.Err(); err != nil {
		t.Fatalf("Err = %v after a clean shutdown", err)
	}

	// A Run that fails before the fleet is ready: Done closes with its
	// error, Ready never does.
	cfg := testConfig(s)
	cfg.Token = "refused"
	bad, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go bad.Run(context.Background())
	select {
	case <-bad.Ready():
		t.Fatal("Ready closed for a fleet whose token was refused")
	case <-bad.Done():
		if !errors.Is(bad.Err(), ErrUnauthorized) {
			t.Fatalf("Err = %v, want ErrUnauthorized", bad.Err())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
}

// TestClustersMatchesStats: Clusters reports what Stats does of each
// cluster except the counts that walk the caches, which it leaves zero.
func TestClustersMatchesStats(t *testing.T) {
	const guilds, shards = 24, 4
	s := discordtest.NewServer(discordtest.WithGuilds(guilds), discordtest.WithRecommendedShards(shards),
		discordtest.WithMaxConcurrency(shards), discordtest.WithIdentifyWindow(time.Millisecond),
		discordtest.WithGuildShape(5, 3, 2))
	defer s.Close()
	cfg := testConfig(s)
	cfg.Clusters = 2
	cfg.ClientOptions = []bot.ConfigOpt{bot.WithCacheConfigOpts(cache.WithCaches(cache.FlagsAll))}
	before, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := before.Clusters(); len(got) != 0 {
		t.Fatalf("Clusters before Run = %+v, want none", got)
	}
	rt, stop := startFleet(t, cfg)
	defer stop()
	waitFor(t, func() bool { return rt.Stats().Guilds == guilds })
	cl, st := rt.Clusters(), rt.Stats().Clusters
	if len(cl) != 2 || len(st) != 2 {
		t.Fatalf("%d clusters, Stats %d; want 2", len(cl), len(st))
	}
	for i, c := range cl {
		want := st[i]
		if c.ID != want.ID || c.State != want.State || c.Guilds != want.Guilds || c.Cache != want.Cache ||
			c.Restarts != want.Restarts || len(c.Shards) != len(want.Shards) {
			t.Fatalf("Clusters()[%d] = %+v, Stats has %+v", i, c, want)
		}
		if c.Users != 0 || c.Members != 0 || c.LargeGuilds != 0 {
			t.Fatalf("Clusters()[%d] walked the caches: %+v", i, c)
		}
		for j, sh := range c.Shards {
			if w := want.Shards[j]; sh.ID != w.ID || sh.State != w.State || sh.Guilds != 0 {
				t.Fatalf("cluster %d shard %+v, Stats has %+v", c.ID, sh, w)
			}
		}
	}
}
