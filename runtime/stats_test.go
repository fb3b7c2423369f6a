package runtime

import (
	"bytes"
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/cache"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/shardgroup"
)

func TestStatsBeforeRun(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(4))
	defer s.Close()
	rt, err := New(testConfig(s))
	if err != nil {
		t.Fatal(err)
	}
	st := rt.Stats()
	if len(st.Clusters) != 0 || st.Shards != 0 || st.Uptime != 0 || st.Time.IsZero() {
		t.Fatalf("stats before Run: %+v", st)
	}
}

func TestStatsSnapshot(t *testing.T) {
	const guilds, shards, members = 48, 4, 5
	s := discordtest.NewServer(discordtest.WithGuilds(guilds), discordtest.WithRecommendedShards(shards),
		discordtest.WithMaxConcurrency(shards), discordtest.WithIdentifyWindow(time.Millisecond),
		discordtest.WithGuildShape(members, 3, 2))
	defer s.Close()
	cfg := testConfig(s)
	cfg.Clusters = 2
	// disgo caches nothing unless asked.
	cfg.ClientOptions = []bot.ConfigOpt{bot.WithCacheConfigOpts(cache.WithCaches(cache.FlagsAll))}
	rt, stop := startFleet(t, cfg)
	// The member caches hold the members the GUILD_CREATEs list.
	users := map[uint64]bool{}
	for i := range guilds {
		for m := range members {
			users[s.MemberID(i, m)] = true
		}
	}
	var st Stats
	// READY comes before the guilds: wait until every GUILD_CREATE and
	// every dispatch the simulator wrote has been counted, and the
	// caches hold what they brought (a guild is cached before its
	// members, and an event counted before its handler returns).
	for deadline := time.Now().Add(10 * time.Second); ; {
		st = rt.Stats()
		var events int64
		for _, c := range st.Clusters {
			for _, sh := range c.Shards {
				events += sh.Events
			}
		}
		sent := s.Stats().TotalEventsSent()
		// A guild is cached, with its member count, before its channels
		// and roles: each cluster's cache must hold them all too.
		filled := true
		for _, c := range st.Clusters {
			filled = filled && c.Cache.Guilds == c.Guilds && c.Cache.Channels == c.Guilds*3 && c.Cache.Members == c.Guilds*members
		}
		if st.Guilds == guilds && events == sent && st.Members == guilds*members && st.Users == len(users) && filled {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s: guilds %d of %d, events %d of %d sent, members %d of %d, users %d of %d, clusters %+v",
				st.Guilds, guilds, events, sent, st.Members, guilds*members, st.Users, len(users), st.Clusters)
		}
		time.Sleep(time.Millisecond) // polling the snapshot: nothing signals a cache's update
	}
	if st.Shards != shards || st.TotalShards != shards || st.ShardsReady != shards {
		t.Fatalf("shards %d, total %d, ready %d; want %d", st.Shards, st.TotalShards, st.ShardsReady, shards)
	}
	if len(st.Clusters) != 2 {
		t.Fatalf("%d clusters, want 2", len(st.Clusters))
	}
	seen := map[int]bool{}
	guildSum := 0
	for _, c := range st.Clusters {
		if c.State != shardgroup.StateReady || c.Failed || c.Uptime <= 0 || c.Restarts != 0 {
			t.Fatalf("cluster %+v", c)
		}
		if c.Cache.Guilds != c.Guilds || c.Cache.Channels != c.Guilds*3 {
			t.Fatalf("cluster %d cache %+v for %d guilds", c.ID, c.Cache, c.Guilds)
		}
		for _, sh := range c.Shards {
			seen[sh.ID] = true
			// Guild i has ID (2^30+i)<<22, so shards hold equal shares.
			if sh.Guilds != guilds/shards || sh.State != shardgroup.StateReady {
				t.Fatalf("shard %+v, want %d guilds, ready", sh, guilds/shards)
			}
			guildSum += sh.Guilds
		}
	}
	if len(seen) != shards || guildSum != guilds {
		t.Fatalf("shards %v with %d guilds", seen, guildSum)
	}
	if st.Members != guilds*members || st.LargeGuilds != 0 || st.VoiceConnections != 0 {
		t.Fatalf("members %d, large %d, voice %d", st.Members, st.LargeGuilds, st.VoiceConnections)
	}
	if st.Users != len(users) {
		t.Fatalf("users %d, want %d", st.Users, len(users))
	}
	if len(st.Services) != 1 || st.Services[0].Name != "store" || st.Services[0].State != "ready" {
		t.Fatalf("services %+v, want the central store, ready", st.Services)
	}
	if st.Memory.Heap == 0 || st.Memory.GoTotal < st.Memory.Heap {
		t.Fatalf("memory %+v", st.Memory)
	}
	if rss := residentSetSize(); rss == 0 && st.Memory.RSS != 0 {
		t.Fatalf("rss %d", st.Memory.RSS)
	}

	// The snapshot survives a JSON round trip, states by name.
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"state":"ready"`)) {
		t.Fatalf("states not by name: %s", b)
	}
	var back Stats
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	b2, _ := json.Marshal(back)
	if !bytes.Equal(b, b2) {
		t.Fatalf("round trip changed the snapshot:\n%s\n%s", b, b2)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestStatsLoopEmitsAndStops(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(2),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	rt, stop := startFleet(t, testConfig(s))
	got := make(chan StatsReport, 16)
	unsub := rt.Subscribe(func(e Event) {
		if e, ok := e.(StatsReport); ok {
			select {
			case got <- e:
			default:
			}
		}
	})
	defer unsub()
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		rt.statsLoop(quit, time.Millisecond)
	}()
	for range 3 {
		if e := waitEvent(t, got); e.Stats == nil || e.Stats.Shards != 2 {
			t.Fatalf("stats event %+v", e)
		}
	}
	close(quit)
	<-done
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestStatsDuringLoad takes snapshots without pause while events stream:
// under -race it shows that collection shares no unguarded state with
// event handling, and every event still reaches user code once.
func TestStatsDuringLoad(t *testing.T) {
	s := loadServer()
	defer s.Close()
	l := newLedger()
	cfg := testConfig(s)
	cfg.Bot, cfg.Clusters = l.bot, 2
	cfg.ClientOptions = []bot.ConfigOpt{bot.WithCacheConfigOpts(cache.WithCaches(cache.FlagsAll))}
	rt, stop := startFleet(t, cfg)
	quit := make(chan struct{})
	var wg sync.WaitGroup
	snapshots := 0
	wg.Go(func() {
		for {
			select {
			case <-quit:
				return
			default:
			}
			rt.Stats()
			snapshots++
		}
	})
	const events = 5000
	if _, err := s.Load(t.Context(), discordtest.Load{Events: events}); err != nil {
		t.Fatal(err)
	}
	l.waitN(t, events)
	close(quit)
	wg.Wait()
	t.Logf("%d snapshots during %d events", snapshots, events)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkStats takes snapshots of a fleet with 5,000 guilds of 5
// members in its caches.
func BenchmarkStats(b *testing.B) {
	const guilds = 5000
	s := discordtest.NewServer(discordtest.WithGuilds(guilds), discordtest.WithRecommendedShards(8),
		discordtest.WithMaxConcurrency(8), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	cfg := testConfig(s)
	cfg.Clusters = 4
	cfg.ClientOptions = []bot.ConfigOpt{bot.WithCacheConfigOpts(cache.WithCaches(cache.FlagsAll))}
	rt, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	go rt.Run(context.Background())
	defer func() {
		rt.Shutdown(context.Background())
		<-rt.Done()
	}()
	deadline := time.Now().Add(time.Minute)
	for rt.Stats().Guilds < guilds {
		if time.Now().After(deadline) {
			b.Fatal("guilds not loaded")
		}
		time.Sleep(time.Millisecond)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		rt.Stats()
	}
}

func TestStatsEvents(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(2),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	cfg := testConfig(s)
	cfg.StatsInterval, cfg.Clusters = time.Millisecond, 2
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *Stats, 1)
	rt.Subscribe(func(e Event) {
		if e, ok := e.(StatsReport); ok && e.Stats != nil && e.Stats.ShardsReady == 2 {
			select {
			case got <- e.Stats:
			default:
			}
		}
	})
	stop := runUntil(t, rt)
	var st *Stats
	select {
	case st = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no stats event with every shard ready")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if st.Shards != 2 || len(st.Clusters) != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestStatsIntervalDefaultsAndOff(t *testing.T) {
	for _, tc := range []struct {
		set, want time.Duration
	}{
		{0, time.Minute}, // eris-fleet's 60 s
		{StatsOff, StatsOff},
		{-time.Second, -time.Second}, // any negative value is off
		{time.Second, time.Second},
	} {
		c, err := Config{Token: "t", Bot: nopBot, StatsInterval: tc.set}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		if c.StatsInterval != tc.want {
			t.Errorf("StatsInterval %s: got %s, want %s", tc.set, c.StatsInterval, tc.want)
		}
	}
}
