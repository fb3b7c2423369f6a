package natsfleet_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// loadUntil sends MESSAGE_CREATEs at 500/s in the background until ctx
// ends.
func loadUntil(ctx context.Context, s *discordtest.Server) <-chan discordtest.LoadResult {
	out := make(chan discordtest.LoadResult, 1)
	go func() {
		res, _ := s.Load(ctx, discordtest.Load{Events: 1 << 30, Rate: 500})
		out <- res
	}()
	return out
}

// TestProcessesWarmStart: at Run the parent opens every shard's session
// through the fleet's identify queue while the children start, and each
// child RESUMEs its shards' sessions: every shard identified once, no
// identify violation, and every event sent during the start, before or
// after the hand-over, delivered once, from the first after each shard's
// guilds.
func TestProcessesWarmStart(t *testing.T) {
	s := procServer(t)
	ctx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	loaded := loadUntil(ctx, s) // during the whole start
	f := startProcFleet(t, s, 2, func(c *runtime.Config) {
		*c = fleetConfig(fleetArgs{Token: s.Token(), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
			Interval: s.IdentifyWindow(), Clusters: 2, Prefix: procPrefix + "-" + newPrefix()})
	})
	f.ledger.atLeast(t, 50) // and a little after
	stopLoad()
	res := <-loaded
	if dups := f.ledger.distinct(t, res.Dispatches); dups != 0 {
		t.Errorf("%d events delivered twice", dups)
	}
	st := s.Stats()
	if st.Identifies != 4 || st.Resumes != 4 || st.Violations["identify_concurrency"] != 0 {
		t.Errorf("identifies %d, resumes %d, identify violations %d; want 4, 4 (the children resume what the parent opened), 0",
			st.Identifies, st.Resumes, st.Violations["identify_concurrency"])
	}
	once := map[int]int{}
	for _, id := range s.Identifies() {
		once[id.Shard]++
	}
	// Each shard's session: READY (1), its 8 guilds, then the load's.
	first := map[int]int{}
	f.ledger.mu.Lock()
	for e := range f.ledger.count {
		if v, ok := first[e.Shard]; !ok || e.Seq < v {
			first[e.Shard] = e.Seq
		}
	}
	f.ledger.mu.Unlock()
	for shard := range 4 {
		if once[shard] != 1 {
			t.Errorf("shard %d identified %d times, want once", shard, once[shard])
		}
		if first[shard] > 10 {
			t.Errorf("shard %d: the first event delivered has sequence %d: the events between the READY and the child's RESUME (from 10) are missing",
				shard, first[shard])
		}
	}
	f.mu.Lock()
	identifyEvents := 0
	for _, e := range f.events {
		if _, ok := e.(runtime.ShardIdentify); ok {
			identifyEvents++
		}
	}
	f.mu.Unlock()
	if identifyEvents != 4 {
		t.Errorf("%d ShardIdentify events, want 4 (the parent's IDENTIFYs are reported)", identifyEvents)
	}
}

// TestProcessesWarmStartShutdown: a Shutdown while the parent is still
// opening sessions, before the children have taken them: Run returns,
// no child is left (TestMain), nothing stays connected, and every session
// the parent opened is closed resumably and saved to Config.SessionStore.
func TestProcessesWarmStartShutdown(t *testing.T) {
	s, err := discordtest.Start(discordtest.WithGuilds(32), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(1), discordtest.WithIdentifyWindow(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	store := &runtime.MemorySessionStore{}
	cfg := fleetConfig(fleetArgs{Token: s.Token(), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		Interval: s.IdentifyWindow(), Clusters: 2, Prefix: procPrefix + "-" + newPrefix()})
	cfg.SessionStore = store
	rt, err := runtime.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	identified := make(chan struct{}, 1)
	rt.Subscribe(func(e runtime.Event) {
		if _, ok := e.(runtime.ShardIdentify); ok {
			select {
			case identified <- struct{}{}:
			default:
			}
		}
	})
	go rt.Run(context.Background())
	select {
	case <-identified:
	case <-rt.Done():
		t.Fatalf("Run returned before any IDENTIFY: %v", rt.Err())
	case <-time.After(30 * time.Second):
		t.Fatal("no IDENTIFY within 30 s")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := rt.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := rt.Err(); err != nil {
		t.Errorf("Run: %v", err)
	}
	st := s.Stats()
	if st.Identifies == 0 || st.Identifies == 4 || st.Resumes != 0 {
		t.Logf("identifies %d, resumes %d: the stop did not come in the middle of the warm start", st.Identifies, st.Resumes)
	}
	saved, err := store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(saved) != st.Identifies || st.Sessions != st.Identifies {
		t.Errorf("%d sessions saved and %d resumable on the gateway, want one for each of the %d IDENTIFYs",
			len(saved), st.Sessions, st.Identifies)
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.Stats().OpenConnections > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open after Shutdown", s.Stats().OpenConnections)
		}
		time.Sleep(10 * time.Millisecond) // the gateway notices closes on its own goroutines
	}
}

// failOnceBot is a ledgerBot whose cluster's first child process exits
// in Setup.
type failOnceBot struct {
	ledgerBot
	dir     string
	cluster int
}

func (b failOnceBot) Setup(ctx context.Context, g *shardgroup.Group) error {
	mark := filepath.Join(b.dir, strconv.Itoa(b.cluster))
	if _, err := os.Stat(mark); err != nil {
		if err := os.WriteFile(mark, nil, 0o600); err != nil {
			return err
		}
		os.Exit(3) // the child process fails before it is set up
	}
	return b.ledgerBot.Setup(ctx, g)
}

// TestProcessesWarmStartChildFails: children that exit in their Setup while
// the parent holds their shards' sessions are restarted, and the new
// children resume those sessions: no shard identified twice.
func TestProcessesWarmStartChildFails(t *testing.T) {
	s := procServer(t)
	dir := t.TempDir()
	f := startProcFleet(t, s, 2, func(c *runtime.Config) {
		a := fleetArgs{Token: s.Token(), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
			Interval: s.IdentifyWindow(), Clusters: 2, Prefix: procPrefix + "-" + newPrefix(),
			SetupFailsOnce: dir}
		*c = fleetConfig(a)
	})
	restarted := 0
	f.mu.Lock()
	for _, e := range f.events {
		if _, ok := e.(runtime.ClusterRestarted); ok {
			restarted++
		}
	}
	f.mu.Unlock()
	if restarted != 2 {
		t.Errorf("%d clusters restarted, want 2 (each first Setup fails)", restarted)
	}
	if st := s.Stats(); st.Identifies != 4 || st.Resumes != 4 {
		t.Errorf("identifies %d, resumes %d; want 4 and 4: the restarted children resume what the parent opened", st.Identifies, st.Resumes)
	}
}

// TestProcessesColdStart: with ProcessConfig.ColdStart, each child
// identifies its own shards: nothing is resumed.
func TestProcessesColdStart(t *testing.T) {
	s := procServer(t)
	startProcFleet(t, s, 2, func(c *runtime.Config) {
		*c = fleetConfig(fleetArgs{Token: s.Token(), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
			Interval: s.IdentifyWindow(), Clusters: 2, Prefix: procPrefix + "-" + newPrefix(), ColdStart: true})
	})
	if st := s.Stats(); st.Identifies != 4 || st.Resumes != 0 || st.Violations["identify_concurrency"] != 0 {
		t.Errorf("identifies %d, resumes %d, identify violations %d; want 4, 0, 0", st.Identifies, st.Resumes, st.Violations["identify_concurrency"])
	}
}

// TestProcessesWarmStartOverlaps: a soft restart of one cluster and a hard
// restart of the other while the parent is still opening the shards'
// sessions. Each returns (done, or an error that says why not), the fleet
// becomes ready, the soft-restarted cluster's shards are identified once
// (its sessions are handed over) and the hard-restarted one's at most
// twice (a hard restart identifies anew), the identify rule holds, and
// Shutdown leaves no child (TestMain).
func TestProcessesWarmStartOverlaps(t *testing.T) {
	s := slowWarmServer(t)
	rt := runUntilIdentify(t, fleetConfig(fleetArgs{Token: s.Token(), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		Interval: s.IdentifyWindow(), Clusters: 2, Prefix: procPrefix + "-" + newPrefix()}), -1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	soft, hard := make(chan error, 1), make(chan error, 1)
	go func() { soft <- rt.SoftRestart(ctx, 0) }()
	go func() { hard <- rt.Restart(ctx, 1) }()
	for name, ch := range map[string]chan error{"SoftRestart(0)": soft, "Restart(1)": hard} {
		select {
		case err := <-ch:
			t.Logf("%s during the warm start: %v", name, err)
			if err != nil && ctx.Err() != nil {
				t.Errorf("%s returned only when its ctx ended: %v", name, err)
			}
		case <-ctx.Done():
			t.Fatalf("%s did not return within 60 s", name)
		}
	}
	select {
	case <-rt.Ready():
	case <-rt.Done():
		t.Fatalf("Run returned: %v", rt.Err())
	case <-ctx.Done():
		t.Fatalf("the fleet was not ready within 60 s: %+v", rt.Stats())
	}
	// Every shard serves again once the restarts are over.
	for {
		st := rt.Stats()
		if st.ShardsReady == 4 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d of 4 shards ready 60 s after the restarts", st.ShardsReady)
		case <-time.After(20 * time.Millisecond):
		}
	}
	st := s.Stats()
	if v := st.Violations["identify_concurrency"]; v != 0 {
		t.Errorf("%d identify violations", v)
	}
	once := map[int]int{}
	for _, id := range s.Identifies() {
		once[id.Shard]++
	}
	for shard := range 4 {
		want := 1 // cluster 0 (shards 0 and 1): soft, handed over
		if shard >= 2 {
			want = 2 // cluster 1: hard, anew
		}
		if n := once[shard]; n < 1 || n > want {
			t.Errorf("shard %d identified %d times, want 1 to %d", shard, n, want)
		}
	}
	t.Logf("identifies %v, resumes %d", once, st.Resumes)
}

// TestProcessesWarmStartReshard: a Reshard (4 -> 8 shards) asked while the
// parent is still opening the shards' sessions returns, done or with an
// error that says why, before its ctx ends; the fleet then serves every
// shard of the plan it reports, with no identify violation, and Shutdown
// leaves no child (TestMain).
func TestProcessesWarmStartReshard(t *testing.T) {
	s := slowWarmServer(t)
	rt := runUntilIdentify(t, fleetConfig(fleetArgs{Token: s.Token(), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		Interval: s.IdentifyWindow(), Clusters: 2, Prefix: procPrefix + "-" + newPrefix()}), -1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := rt.Reshard(ctx, runtime.ReshardOptions{Shards: 8})
	t.Logf("Reshard during the warm start: %v", err)
	if err != nil && ctx.Err() != nil {
		t.Fatalf("Reshard returned only when its ctx ended: %v", err)
	}
	want := 4
	if err == nil {
		want = 8
	}
	for {
		st := rt.Stats()
		if st.Shards == want && st.ShardsReady == want {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d of %d shards ready (want %d of %d) 60 s after the reshard", st.ShardsReady, st.Shards, want, want)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if v := s.Stats().Violations["identify_concurrency"]; v != 0 {
		t.Errorf("%d identify violations", v)
	}
}

// runUntilIdentify runs a fleet of cfg until the parent reports an
// IDENTIFY of shard (any shard if shard < 0), and shuts it down when the
// test ends.
func runUntilIdentify(t *testing.T, cfg runtime.Config, shard int) *runtime.Runtime {
	t.Helper()
	rt, err := runtime.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	identified := make(chan struct{}, 1)
	rt.Subscribe(func(e runtime.Event) {
		if e, ok := e.(runtime.ShardIdentify); ok && (shard < 0 || e.Shard == shard) {
			select {
			case identified <- struct{}{}:
			default:
			}
		}
	})
	go rt.Run(context.Background())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := rt.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case <-rt.Done():
		case <-ctx.Done():
			t.Error("Run did not return within 20 s of Shutdown")
		}
	})
	select {
	case <-identified:
	case <-rt.Done():
		t.Fatalf("Run returned before shard %d identified: %v", shard, rt.Err())
	case <-time.After(30 * time.Second):
		t.Fatalf("shard %d did not identify within 30 s", shard)
	}
	return rt
}

// slowWarmServer is a simulator whose 4 shards identify one per 150 ms,
// so that a warm start lasts long enough to overlap.
func slowWarmServer(t *testing.T) *discordtest.Server {
	t.Helper()
	s, err := discordtest.Start(discordtest.WithGuilds(32), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(1), discordtest.WithIdentifyWindow(150*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}
