package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/events"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

func init() { register("softrestart", runSoftRestart) }

type softRestartResult struct {
	Scenario        string  `json:"scenario"`
	Shards          int     `json:"shards"`
	Clusters        int     `json:"clusters"`
	Rate            int     `json:"events_per_sec"`
	Events          int64   `json:"events"`
	LostEvents      int64   `json:"lost_events"`
	DuplicateEvents int64   `json:"duplicate_events"`
	Identifies      int     `json:"identifies"`
	PauseMS         float64 `json:"pause_ms"`
}

// arrivals records when each (shard, sequence) reached user code.
type arrivals struct {
	mu   sync.Mutex
	at   map[[2]int]time.Time
	dups int64
}

func (a *arrivals) bot(int) runtime.Bot {
	return runtime.BotFunc(func(_ context.Context, g *shardgroup.Group) error {
		g.Client().AddEventListeners(bot.NewListenerFunc(func(e *events.MessageCreate) {
			k := [2]int{e.ShardID(), e.SequenceNumber()}
			now := time.Now()
			a.mu.Lock()
			if _, ok := a.at[k]; ok {
				a.dups++
			} else {
				a.at[k] = now
			}
			a.mu.Unlock()
		}))
		return nil
	})
}

// runSoftRestart soft-restarts every cluster of a 16-shard fleet, one
// after another, under 5,000 MESSAGE_CREATE/s, and counts what user code
// lost or saw twice, the IDENTIFYs spent, and the longest gap in delivery
// a restarted shard had during its restart.
func runSoftRestart() (any, error) {
	const shards, clusters, rate, seconds = 16, 4, 5000, 4
	s := discordtest.NewServer(discordtest.WithGuilds(shards*8), discordtest.WithRecommendedShards(shards),
		discordtest.WithMaxConcurrency(shards), discordtest.WithIdentifyWindow(10*time.Millisecond))
	defer s.Close()
	a := &arrivals{at: map[[2]int]time.Time{}}
	rt, err := runtime.New(runtime.Config{
		Token: runtime.Token(s.Token()), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		IdentifyInterval: s.IdentifyWindow(), Clusters: clusters, Bot: a.bot,
	})
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	windows := map[int][2]time.Time{} // cluster -> hand-over start, end
	starts := map[int]time.Time{}
	rt.Subscribe(func(e runtime.Event) {
		mu.Lock()
		defer mu.Unlock()
		switch e := e.(type) {
		case runtime.SoftRestartStarted:
			starts[e.Cluster] = time.Now()
		case runtime.SoftRestartDone:
			windows[e.Cluster] = [2]time.Time{starts[e.Cluster], time.Now()}
		}
	})
	go rt.Run(context.Background())
	if err := awaitFleet(s, shards, rt); err != nil {
		return nil, err
	}
	identifies := s.Stats().Identifies
	loaded := make(chan discordtest.LoadResult, 1)
	loadErr := make(chan error, 1)
	lctx, lcancel := context.WithTimeout(context.Background(), eventsBound(rate*seconds, rate/4))
	defer lcancel()
	go func() {
		res, err := s.Load(lctx, discordtest.Load{Events: rate * seconds, Rate: rate})
		loaded <- res
		loadErr <- err
	}()
	time.Sleep(time.Second) // restart in the middle of the stream
	rctx, rcancel := context.WithTimeout(context.Background(), time.Duration(clusters)*fleetReadyBound(s, shards/clusters))
	err = rt.SoftRestartAll(rctx)
	rcancel()
	if err != nil {
		lcancel()
		<-loaded
		<-loadErr
		_ = rt.Shutdown(context.Background())
		<-rt.Done()
		return nil, fmt.Errorf("soft restart of %d clusters: %w", clusters, err)
	}
	res := <-loaded
	if err := <-loadErr; err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		a.mu.Lock()
		n := int64(len(a.at))
		a.mu.Unlock()
		if n >= res.Dispatches || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	out := softRestartResult{Scenario: "softrestart", Shards: shards, Clusters: clusters, Rate: rate,
		Events: res.Dispatches, Identifies: s.Stats().Identifies - identifies}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rt.Shutdown(ctx); err != nil {
		return nil, err
	}
	if <-rt.Done(); rt.Err() != nil {
		return nil, rt.Err()
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	out.LostEvents = res.Dispatches - int64(len(a.at))
	out.DuplicateEvents = a.dups
	// The pause: per shard, the longest gap between two deliveries that
	// overlaps its cluster's restart window.
	perShard := map[int][]time.Time{}
	for k, t := range a.at {
		perShard[k[0]] = append(perShard[k[0]], t)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(windows) != clusters {
		return nil, fmt.Errorf("%d clusters restarted, want %d", len(windows), clusters)
	}
	var pause time.Duration
	for shard, ts := range perShard {
		w := windows[shard/(shards/clusters)]
		slices.SortFunc(ts, time.Time.Compare)
		for i := 1; i < len(ts); i++ {
			if ts[i].After(w[0]) && ts[i-1].Before(w[1]) {
				pause = max(pause, ts[i].Sub(ts[i-1]))
			}
		}
	}
	out.PauseMS = float64(pause.Microseconds()) / 1000
	return out, nil
}
