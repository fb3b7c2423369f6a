package runtime

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/discord"
	devents "github.com/disgoorg/disgo/events"

	"github.com/disgoorg/snowflake/v2"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/shardgroup"
)

func nopBot(int) Bot {
	return BotFunc(func(context.Context, *shardgroup.Group) error { return nil })
}

func testConfig(s *discordtest.Server) Config {
	return Config{Token: Token(s.Token()), Bot: nopBot, GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		IdentifyInterval: s.IdentifyWindow()}
}

// runUntil runs rt in the background and returns a func that shuts it
// down and returns Run's error.
func runUntil(t *testing.T, rt *Runtime) func() error {
	t.Helper()
	go rt.Run(context.Background())
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := rt.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-rt.Done()
		return rt.Err()
	}
}

// waitReady waits until rt's fleet is ready, failing the test if Run
// returns first.
func waitReady(t *testing.T, rt *Runtime) {
	t.Helper()
	select {
	case <-rt.Ready():
	case <-rt.Done():
		t.Fatalf("Run returned before the fleet was ready: %v", rt.Err())
	case <-time.After(20 * time.Second):
		t.Fatal("fleet not ready")
	}
}

func TestStartupAtTheIdentifyLimit(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(640), discordtest.WithRecommendedShards(64),
		discordtest.WithMaxConcurrency(16), discordtest.WithIdentifyWindow(100*time.Millisecond))
	defer s.Close()
	cfg := testConfig(s)
	cfg.Clusters = 4
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fleetReady := make(chan FleetReady, 1)
	rt.Subscribe(func(e Event) {
		if e, ok := e.(FleetReady); ok {
			fleetReady <- e
		}
	})
	stop := runUntil(t, rt)
	var ev FleetReady
	select {
	case ev = <-fleetReady:
	case <-time.After(20 * time.Second):
		t.Fatal("fleet not ready")
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	st := s.Stats()
	if len(st.Violations) != 0 || st.Identifies != 64 {
		t.Fatalf("violations %v, identifies %d", st.Violations, st.Identifies)
	}
	if ev.Shards != 64 {
		t.Fatalf("fleet ready event %+v", ev)
	}
	// Four rounds of 16 identifies: the bound is 4 windows plus 300 ms.
	t.Logf("fleet ready in %s", ev.Elapsed)
	if ev.Elapsed > 700*time.Millisecond && !raceEnabled {
		t.Fatalf("fleet ready in %s, want <= 700ms", ev.Elapsed)
	}
	if groups := rt.groups(); len(groups) != 4 {
		t.Fatalf("%d groups", len(groups))
	}
}

func TestValidation(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(100), discordtest.WithSessionStartLimit(3, time.Hour))
	defer s.Close()
	base := testConfig(s)
	cases := []struct {
		name string
		edit func(*Config)
		want string
		run  bool // the error comes from Run (it needs /gateway/bot)
	}{
		{"missing token", func(c *Config) { c.Token = "" }, "Config.Token is empty", false},
		{"more clusters than shards", func(c *Config) { c.Shards, c.Clusters = 2, 3 }, "Clusters (3) > Shards (2): lower Clusters", false},
		{"range outside total", func(c *Config) { c.TotalShards, c.FirstShardID, c.LastShardID = 4, 2, 4 }, "outside 0..3", false},
		{"guilds per shard", func(c *Config) { c.GuildsPerShard = 3000 }, "GuildsPerShard (3000) > 2500", false},
		{"large bot multiple", func(c *Config) { c.Shards, c.MaxConcurrencyOverride = 20, 16 }, "must be a multiple of 16", true},
		{"session starts", func(c *Config) { c.Shards = 4 }, "3 session starts remain today but 4 shards must identify", true},
		{"bad token", func(c *Config) { c.Token = "nope" }, "refused the token (401)", true},
		{"negative request timeout", func(c *Config) { c.RequestTimeout = -time.Second }, "RequestTimeout (-1s) is negative", false},
		{"negative cluster timeout", func(c *Config) { c.ClusterTimeout = -1 }, "ClusterTimeout (-1ns) is negative", false},
		{"negative guilds per shard", func(c *Config) { c.GuildsPerShard = -5 }, "GuildsPerShard (-5) and MaxConcurrencyOverride (0) must not be negative", false},
		{"negative max concurrency", func(c *Config) { c.MaxConcurrencyOverride = -1 }, "MaxConcurrencyOverride (-1) must not be negative", false},
		{"max restarts below -1", func(c *Config) { c.MaxRestarts = -5 }, "MaxRestarts (-5) is below -1", false},
		{"clusters and shards per cluster", func(c *Config) { c.Clusters, c.ShardsPerCluster = 2, 4 }, "Clusters (2) and ShardsPerCluster (4) are both set: remove one", false},
		{"negative shards per cluster", func(c *Config) { c.ShardsPerCluster = -1 }, "ShardsPerCluster (-1) is negative", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			tc.edit(&cfg)
			rt, err := New(cfg)
			if tc.run {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				err = rt.Run(context.Background())
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to say %q", err, tc.want)
			}
			if strings.Contains(err.Error(), s.Token()) {
				t.Fatal("the token leaked into an error")
			}
		})
	}
}

func TestAuthenticationFailureStopsRun(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithPrivilegedIntents(0))
	defer s.Close()
	cfg := testConfig(s)
	cfg.Intents = 1 << 15 // MESSAGE_CONTENT, not approved
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = rt.Run(context.Background())
	var ce *shardgroup.CloseError
	if !errors.As(err, &ce) || ce.Code != 4014 || !strings.Contains(err.Error(), "disallowed intents") {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("returned after %s", time.Since(start))
}

// counter counts MESSAGE_CREATEs that reach user code, by nonce.
type counter struct {
	mu   sync.Mutex
	seen map[string]int
	ch   chan struct{}
}

func newCounter() *counter { return &counter{seen: map[string]int{}, ch: make(chan struct{}, 1)} }

func (c *counter) bot(int) Bot {
	return BotFunc(func(_ context.Context, g *shardgroup.Group) error {
		g.Client().AddEventListeners(bot.NewListenerFunc(func(e *devents.MessageCreate) {
			if e.Message.Content == "panic" {
				panic("listener bug")
			}
			c.mu.Lock()
			c.seen[string(e.Message.Nonce)]++
			c.mu.Unlock()
			select {
			case c.ch <- struct{}{}:
			default:
			}
		}))
		return nil
	})
}

func (c *counter) wait(t *testing.T, nonce string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		c.mu.Lock()
		n := c.seen[nonce]
		c.mu.Unlock()
		if n > 0 {
			return
		}
		select {
		case <-c.ch:
		case <-timeout:
			t.Fatalf("event %s never reached user code", nonce)
		}
	}
}

func waitEvent[E any](t *testing.T, ch <-chan E) E {
	t.Helper()
	select {
	case e := <-ch:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("event never came")
	}
	var zero E
	return zero
}

func TestFaultsRecover(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(2),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(10*time.Millisecond),
		discordtest.WithHeartbeatInterval(100*time.Millisecond), discordtest.WithHeartbeatGrace(time.Second))
	defer s.Close()
	c := newCounter()
	cfg := testConfig(s)
	cfg.Bot, cfg.Clusters = c.bot, 2
	_, stop := startFleet(t, cfg)
	n := 0
	// send dispatches the next event once a session (connected or
	// resumable) owns its guild: a shard that lost its session gets
	// events again only when it has identified anew, as on Discord.
	send := func() string {
		n++
		g := s.GuildID(n % 8)
		waitFor(t, func() bool {
			got, err := s.Dispatch(g, "MESSAGE_CREATE", s.MessageCreate(g, "hi", n))
			return err == nil && got > 0
		})
		return itoa(n)
	}
	for _, f := range []struct {
		name  string
		fault func()
	}{
		{"op 7", func() { s.Reconnect(discordtest.AllShards) }},
		{"op 9 resumable", func() { s.InvalidateSession(0, true) }},
		{"op 9 not resumable", func() { s.InvalidateSession(1, false) }},
		{"server restart", func() { s.Restart(true) }},
		{"zombie", func() { s.StopAcks(discordtest.AllShards, true) }},
		{"panicking listener", func() {
			g := s.GuildID(0)
			s.Dispatch(g, "MESSAGE_CREATE", s.MessageCreate(g, "panic", 0))
		}},
	} {
		f.fault()
		// Later events reach user code on every shard.
		for range 8 {
			c.wait(t, send())
		}
		t.Logf("%s: recovered", f.name)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if v := s.Stats().Violations; len(v) != 0 {
		t.Fatalf("violations %v", v)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestAuthenticationCloseStopsRunQuickly(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	rt := runReady(t, testConfig(s))
	s.CloseShard(0, discordtest.CloseAuthenticationFailed, "Authentication failed.")
	select {
	case <-rt.Done():
		if err := rt.Err(); err == nil || !strings.Contains(err.Error(), "authentication failed") {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Run did not return within 1 s of a 4004")
	}
}

func TestClusterNeverReadyIsRestartedThenFailed(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(2),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	s.HoldShard(1) // cluster 1's only shard never gets READY
	c := newCounter()
	cfg := testConfig(s)
	cfg.Bot, cfg.Clusters = c.bot, 2
	// The timeout leaves a loaded machine time to make cluster 0 ready;
	// restarts of cluster 0 all the same are not what this test counts.
	cfg.ClusterTimeout, cfg.MaxRestarts, cfg.RestartBackoff = 400*time.Millisecond, 2, time.Millisecond
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var restarted []int
	failed := make(chan ClusterFailed, 1)
	rt.Subscribe(func(e Event) {
		switch e := e.(type) {
		case ClusterRestarted:
			mu.Lock()
			restarted = append(restarted, e.Cluster)
			mu.Unlock()
		case ClusterFailed:
			if e.Cluster == 1 {
				failed <- e
			} else {
				t.Errorf("cluster %d failed: %v", e.Cluster, e.Err)
			}
		}
	})
	stop := runUntil(t, rt)
	ev := waitEvent(t, failed)
	if ev.Err == nil {
		t.Fatalf("failed event %+v", ev)
	}
	mu.Lock()
	if n := countOf(restarted, 1); n != 2 {
		t.Fatalf("restarts %v, want cluster 1 twice", restarted)
	}
	mu.Unlock()
	// Cluster 0 still serves.
	g := s.GuildID(0)
	if dispatched, _ := s.Dispatch(g, "MESSAGE_CREATE", s.MessageCreate(g, "still", 42)); dispatched == 0 {
		t.Fatal("no session for shard 0")
	}
	c.wait(t, "42")
	s.ReleaseShard(1)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// countOf counts v in xs.
func countOf(xs []int, v int) int {
	n := 0
	for _, x := range xs {
		if x == v {
			n++
		}
	}
	return n
}

func TestWhatToLogAndNoToken(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	var buf syncBuffer
	cfg := testConfig(s)
	cfg.Logger = slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.WhatToLog = WhatToLog{Deny: []EventKind{EventShardIdentify}}
	_, stop := startFleet(t, cfg)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if !strings.Contains(out, `"event":"fleet_ready"`) || !strings.Contains(out, `"event":"shard_ready"`) {
		t.Fatalf("ready events not logged:\n%s", out)
	}
	if strings.Contains(out, `"event":"shard_identify"`) {
		t.Fatal("a denied event kind was logged")
	}
	if strings.Contains(out, s.Token()) {
		t.Fatal("the token appears in the log")
	}
	if got := fmt.Sprint(cfg.Token); got != "REDACTED" {
		t.Fatalf("Token formats as %q", got)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// hookBot records its Shutdown hook.
type hookBot struct{ stopped chan int }

func (hookBot) Setup(context.Context, *shardgroup.Group) error { return nil }
func (h hookBot) Shutdown(context.Context) error {
	h.stopped <- 1
	return nil
}

func TestSliceOfFleetAndShutdownHooks(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	cfg := testConfig(s)
	cfg.TotalShards, cfg.FirstShardID, cfg.LastShardID = 4, 2, 3
	stopped := make(chan int, 4)
	cfg.Bot = func(int) Bot { return hookBot{stopped} }
	rt, stop := startFleet(t, cfg)
	if n := rt.Stats().Shards; n != 2 {
		t.Fatalf("fleet of %d shards, want 2", n)
	}
	var ids []int
	for _, g := range rt.groups() {
		ids = append(ids, g.ShardIDs()...)
		if g.ShardCount() != 4 {
			t.Fatalf("shard count %d, want 4", g.ShardCount())
		}
	}
	if fmt.Sprint(ids) != "[2 3]" {
		t.Fatalf("runs shards %v, want [2 3]", ids)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := len(stopped); n != len(rt.groups()) {
		t.Fatalf("%d Shutdown hooks ran, want %d", n, len(rt.groups()))
	}
	for _, id := range s.Identifies() {
		if id.Shard < 2 || id.Shards != 4 {
			t.Fatalf("identified %+v", id)
		}
	}
}

func TestClustersShareTheRESTLimiter(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(time.Millisecond),
		discordtest.WithRouteRateLimit(5, 50*time.Millisecond))
	defer s.Close()
	cfg := testConfig(s)
	cfg.Clusters = 4
	rt, stop := startFleet(t, cfg)
	defer stop()
	channel := snowflake.ID(s.ChannelID(0, 0))
	var wg sync.WaitGroup
	errs := make(chan error, 4*15)
	for _, g := range rt.groups() {
		for range 15 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := g.Client().Rest().CreateMessage(channel, discord.MessageCreate{Content: "hi"}); err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("request failed: %v", err)
	}
	if got := s.Stats().REST.RateLimited; got["user"]+got["global"] != 0 {
		t.Fatalf("429s %v: the clusters did not share one limiter", got)
	}
	if n := s.Stats().REST.Requests["POST /channels/{id}/messages"]; n != 60 {
		t.Fatalf("%d messages posted, want 60", n)
	}
}

func TestHardRestartAndShutdownCluster(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	cfg := testConfig(s)
	cfg.Clusters = 2
	rt, stop := startFleet(t, cfg)
	defer stop()
	ctx := context.Background()
	before := s.Stats().Identifies
	if err := rt.Restart(ctx, 1); err != nil {
		t.Fatal(err)
	}
	// The new instance identifies its two shards anew.
	waitFor(t, func() bool { return s.Stats().Identifies == before+2 })
	waitFor(t, func() bool { return rt.groups()[1].State() == shardgroup.StateReady })

	if err := rt.ShutdownCluster(ctx, 0); err != nil {
		t.Fatal(err)
	}
	w := rt.Workers()
	if w.Clusters[0].State != "stopped" || w.Clusters[1].State != "ready" {
		t.Fatalf("workers %+v", w.Clusters)
	}
	if err := rt.SoftRestart(ctx, 0); err == nil || !strings.Contains(err.Error(), "cluster 0 is stopped") {
		t.Fatalf("soft restart of a stopped cluster: %v", err)
	}
	if err := rt.Restart(ctx, 7); !errors.Is(err, ErrUnknownCluster) {
		t.Fatalf("unknown cluster: %v", err)
	}
}

func TestShardsPerClusterSizesClusters(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(24), discordtest.WithRecommendedShards(6),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	cfg := testConfig(s)
	cfg.ShardsPerCluster = 4
	rt, stop := startFleet(t, cfg)
	defer stop()
	sizes := func() []int {
		var n []int
		for _, c := range rt.Workers().Clusters {
			n = append(n, len(c.Shards))
		}
		return n
	}
	// ceil(6 / 4) = 2 clusters, split evenly.
	if got := sizes(); !slices.Equal(got, []int{3, 3}) {
		t.Fatalf("6 shards at 4 per cluster: cluster sizes %v, want [3 3]", got)
	}
	// A reshard keeps the size: ceil(12 / 4) = 3 clusters.
	if err := rt.Reshard(context.Background(), ReshardOptions{Shards: 12}); err != nil {
		t.Fatal(err)
	}
	if got := sizes(); !slices.Equal(got, []int{4, 4, 4}) {
		t.Fatalf("12 shards at 4 per cluster: cluster sizes %v, want [4 4 4]", got)
	}
	// Stats, which the quickstart's summary reads, follows the reshard.
	if st := rt.Stats(); st.Shards != 12 || st.ShardsReady != 12 || len(st.Clusters) != 3 {
		t.Fatalf("after the reshard: %d of %d shards ready in %d clusters, want 12 of 12 in 3", st.ShardsReady, st.Shards, len(st.Clusters))
	}
}

// TestRestartReturnsWhenReady checks that a hard restart answers only once
// every shard of the new instance is ready, and that a caller who stops
// waiting is told the restart goes on.
func TestRestartReturnsWhenReady(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	groups := make(chan *shardgroup.Group, 4)
	cfg := testConfig(s)
	cfg.Clusters = 2
	cfg.Bot = func(cluster int) Bot {
		return BotFunc(func(_ context.Context, g *shardgroup.Group) error {
			if cluster == 1 {
				select {
				case groups <- g:
				default:
				}
			}
			return nil
		})
	}
	rt, stop := startFleet(t, cfg)
	defer stop()
	<-groups // the first instance
	shardReady := func(g *shardgroup.Group, id int) bool {
		for _, sh := range g.Shards() {
			if sh.ID == id {
				return sh.State == shardgroup.StateReady
			}
		}
		return false
	}
	// restart holds shard 3 of cluster 1 (shards 2 and 3), restarts the
	// cluster and waits until the new instance's shard 2 is ready.
	restart := func(ctx context.Context) (*shardgroup.Group, chan error) {
		s.HoldShard(3)
		done := make(chan error, 1)
		go func() { done <- rt.Restart(ctx, 1) }()
		var g *shardgroup.Group
		select {
		case g = <-groups:
		case <-time.After(10 * time.Second):
			t.Fatal("no new instance set up")
		}
		waitFor(t, func() bool { return shardReady(g, 2) })
		return g, done
	}

	// The caller stops waiting: the restart goes on and says so.
	ctx, cancel := context.WithCancel(context.Background())
	g, done := restart(ctx)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "still connecting") {
		t.Fatalf("Restart with its ctx cancelled: %v, want context.Canceled and \"still connecting\"", err)
	}
	s.ReleaseShard(3)
	waitFor(t, func() bool { return g.State() == shardgroup.StateReady })

	// The caller waits: Restart returns once shard 3 is ready too.
	g, done = restart(context.Background())
	select {
	case err := <-done:
		t.Fatalf("Restart returned (%v) while shard 3 was held", err)
	default:
	}
	s.ReleaseShard(3)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Restart did not return after the shard was released")
	}
	if st := g.State(); st != shardgroup.StateReady {
		t.Fatalf("Restart returned with the cluster %s", st)
	}
}
