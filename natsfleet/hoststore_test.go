package natsfleet_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/natsfleet"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/services"
	"github.com/gofleet/fleet/shardgroup"
)

// Cluster code on every host reaches one central store with the usual
// helpers: values set on one host are read on the other, and increments
// made at once from both hosts lose no update.
func TestHostsShareTheCentralStore(t *testing.T) {
	t.Parallel()
	s := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(5*time.Millisecond))
	defer s.Close()
	fleet := newPrefix()
	const each = 20 // increments per cluster, all at once
	var made atomic.Int64
	var mu sync.Mutex // guards errs, read
	var errs []error
	read := map[int]string{} // by cluster: what it read of the other host's key
	setup := func(host string) func(int) runtime.Bot {
		return func(int) runtime.Bot {
			return runtime.BotFunc(func(ctx context.Context, g *shardgroup.Group) error {
				var wg sync.WaitGroup
				for range each {
					wg.Go(func() {
						if _, err := services.StoreIncrement(ctx, g.Bus(), "count", 1); err != nil {
							mu.Lock()
							errs = append(errs, err)
							mu.Unlock()
							return
						}
						made.Add(1)
					})
				}
				wg.Wait()
				if err := services.StoreSet(ctx, g.Bus(), "host/"+host, fmt.Sprintf("cluster %d", g.ID())); err != nil {
					return err
				}
				other := map[string]string{"a": "b", "b": "a"}[host]
				// The other host's clusters set their key in their own
				// Setup: wait for it, reading through this host's store.
				for ctx.Err() == nil {
					v, ok, err := services.StoreGet[string](ctx, g.Bus(), "host/"+other)
					if err != nil {
						return err
					}
					if ok {
						mu.Lock()
						read[g.ID()] = v
						mu.Unlock()
						return nil
					}
					time.Sleep(5 * time.Millisecond) // polls the other host's write; what is asserted is its value
				}
				return ctx.Err()
			})
		}
	}
	hosts := map[string]*natsfleet.Host{}
	for id, clusters := range map[string][]int{"a": {0, 1}, "b": {2, 3}} {
		h, err := natsfleet.NewHost(testCtx(t), connect(t), natsfleet.HostConfig{Fleet: fleet, ID: id, Clusters: clusters,
			LeaseTTL: hostTTL, Logger: hostLogger(id),
			Runtime: runtime.Config{Token: runtime.Token(s.Token()), Bot: setup(id), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
				IdentifyInterval: s.IdentifyWindow(), Shards: 4, Clusters: 4, MaxConcurrencyOverride: 4, ShutdownTimeout: 5 * time.Second,
				ClusterTimeout: 20 * time.Second}})
		if err != nil {
			t.Fatal(err)
		}
		hosts[id] = h
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- h.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("host %s: %v", id, err)
			}
		})
	}
	waitStatus(t, hosts["a"], "every cluster ready on its host", func(st natsfleet.FleetStatus) bool {
		o := ownedBy(st)
		return len(o["a"]) == 2 && len(o["b"]) == 2 && allReady(s, 4)
	})
	mu.Lock()
	defer mu.Unlock()
	for _, err := range errs {
		t.Errorf("StoreIncrement from cluster code: %v", err)
	}
	raw, ok, err := hosts["b"].Store().Get(testCtx(t), "count")
	var count int64
	if err != nil || !ok || json.Unmarshal(raw, &count) != nil {
		t.Fatalf("count in the fleet's store: %s, %v, %v", raw, ok, err)
	}
	if want := made.Load(); count != want || want != 4*each {
		t.Errorf("count = %d after %d increments from the clusters of two hosts (want %d): updates lost", count, want, 4*each)
	}
	for c := range 4 {
		other := "b"
		if c >= 2 {
			other = "a"
		}
		if v, ok := read[c]; !ok || v == "" {
			t.Errorf("cluster %d did not read host %s's key through its host's store", c, other)
		}
	}
}
