package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/events"
	"github.com/disgoorg/disgo/gateway"
	"github.com/nats-io/nats.go"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/natsfleet"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

func init() {
	register("processes", runProcesses)
	register("processes-startup", runProcessesStartup)
	childKinds["processes-member"] = runProcessMember
}

// The environment of the scenario's children: the simulator's token and
// the tally server's connection (JSON natsfleet.ConnectInfo).
const (
	procTokenEnv = "FLEET_BENCH_TOKEN"
	procTallyEnv = "FLEET_BENCH_TALLY"
	tallySubject = "tally"
	// The children's transport compression: the parent's (empty: the
	// default).
	procCompressionEnv = "FLEET_BENCH_COMPRESSION"
)

type processesResult struct {
	Scenario string `json:"scenario"`
	Shards   int    `json:"shards"`
	Clusters int    `json:"clusters"`
	// The start-up ratio without transport compression, as the startup
	// and identify-nats scenarios' headline ratios: the simulator's zstd
	// encoder is Discord's CPU, not the fleet's, and here it shares the
	// fleet's two cores. startup_ratio_zstd is the same start-up with
	// the default compression (zstd-stream).
	StartupRatio         float64 `json:"startup_ratio"`
	StartupRatioZstd     float64 `json:"startup_ratio_zstd"`
	SoftRestartLost      int     `json:"softrestart_lost"`
	SoftRestartDuplicate int     `json:"softrestart_duplicate"`
	SoftRestartIdentify  int     `json:"softrestart_identifies"`
	SoftRestartPauseMS   float64 `json:"softrestart_pause_ms"`
	CrashRecoveryMS      float64 `json:"crash_recovery_ms"`
	CrashIdentifies      int     `json:"crash_identifies"`
	CrashLost            int     `json:"crash_lost"`
	CrashDuplicate       int     `json:"crash_duplicate"`
	RSSMBParent          float64 `json:"rss_mb_parent"`
	RSSMBPerChild        float64 `json:"rss_mb_per_child"`
}

// processConfig is the scenario's process mode, the same in the parent
// and the children.
func processConfig(env []string, cold bool) *natsfleet.ProcessMode {
	return natsfleet.Processes(natsfleet.ProcessConfig{
		Args: []string{"-child", "processes-member"}, Env: env, ColdStart: cold,
		CheckpointInterval: 250 * time.Millisecond, StatsInterval: 200 * time.Millisecond,
		Stderr: os.Stderr, Stdout: os.Stderr, // stdout is the result's
	})
}

// runProcessMember is a child of the scenario's fleet: its listener
// reports each MESSAGE_CREATE's nonce and shard to the tally server.
func runProcessMember([]string) error {
	var info natsfleet.ConnectInfo
	if err := json.Unmarshal([]byte(os.Getenv(procTallyEnv)), &info); err != nil {
		return fmt.Errorf("%s: %w", procTallyEnv, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	nc, err := natsfleet.Connect(cctx, info.URL, info.Options()...)
	cancel()
	if err != nil {
		return err
	}
	defer nc.Close()
	rt, err := runtime.New(runtime.Config{
		Token:       runtime.Token(os.Getenv(procTokenEnv)),
		Intents:     gateway.IntentGuilds | gateway.IntentGuildMessages,
		Bot:         func(int) runtime.Bot { return tallyBot{nc} },
		Processes:   processConfig(nil, false),
		Compression: shardgroup.Compression(os.Getenv(procCompressionEnv)),
	})
	if err != nil {
		return err
	}
	return rt.Run(ctx)
}

// tallyBot reports what its cluster's listeners saw.
type tallyBot struct{ nc *nats.Conn }

func (b tallyBot) Setup(_ context.Context, g *shardgroup.Group) error {
	g.Client().AddEventListeners(bot.NewListenerFunc(func(e *events.MessageCreate) {
		// nats.go buffers the publish: the listener does not wait.
		_ = b.nc.Publish(tallySubject, []byte(string(e.Message.Nonce)+" "+strconv.Itoa(e.ShardID())))
	}))
	return nil
}

// tally is the bench's record of the nonces the children saw.
type tally struct {
	mu       sync.Mutex
	seen     map[int]int         // nonce -> deliveries
	arrivals map[int][]time.Time // shard -> first deliveries' times
}

func (t *tally) receive(m *nats.Msg) {
	f := strings.Fields(string(m.Data))
	if len(f) != 2 {
		return
	}
	nonce, err1 := strconv.Atoi(f[0])
	shard, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return
	}
	now := time.Now()
	t.mu.Lock()
	t.seen[nonce]++
	if t.seen[nonce] == 1 {
		t.arrivals[shard] = append(t.arrivals[shard], now)
	}
	t.mu.Unlock()
}

// sent is one MESSAGE_CREATE the sender dispatched to a session.
type sent struct{ shard int }

// runProcesses runs 16 shards in 4 child processes under 1,500
// MESSAGE_CREATE/s: it soft-restarts cluster 0, then SIGKILLs cluster 2's
// child, and counts, per cluster, what the children's listeners lost or
// saw twice and the IDENTIFYs spent; then it starts 256 shards at
// max_concurrency 16 with a 50 ms window in process mode for the start-up
// ratio.
func runProcesses() (any, error) {
	const shards, clusters, rate = 16, 4, 1500
	const softCluster, crashCluster = 0, 2
	out := processesResult{Scenario: "processes", Shards: shards, Clusters: clusters}

	s := discordtest.NewServer(discordtest.WithGuilds(shards*8), discordtest.WithRecommendedShards(shards),
		discordtest.WithMaxConcurrency(shards), discordtest.WithIdentifyWindow(10*time.Millisecond))
	defer s.Close()
	tallySrv, err := natsfleet.StartServer(natsfleet.ServerConfig{})
	if err != nil {
		return nil, err
	}
	defer tallySrv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	nc, err := tallySrv.Connect(ctx)
	cancel()
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	t := &tally{seen: map[int]int{}, arrivals: map[int][]time.Time{}}
	sub, err := nc.Subscribe(tallySubject, t.receive)
	if err != nil {
		return nil, err
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return nil, err
	}
	raw, _ := json.Marshal(tallySrv.ConnectInfo())
	rt, err := runtime.New(runtime.Config{
		Token: runtime.Token(s.Token()), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		IdentifyInterval: s.IdentifyWindow(), Shards: shards, Clusters: clusters,
		Intents:   gateway.IntentGuilds | gateway.IntentGuildMessages,
		Bot:       func(int) runtime.Bot { return tallyBot{nc} },
		Processes: processConfig([]string{procTokenEnv + "=" + s.Token(), procTallyEnv + "=" + string(raw)}, false),
	})
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	var softWindow [2]time.Time
	var softPause time.Duration
	resumedAfter := map[int]time.Time{} // shard of crashCluster -> ready again after the kill
	var killedAt time.Time
	rt.Subscribe(func(e runtime.Event) {
		mu.Lock()
		defer mu.Unlock()
		switch e := e.(type) {
		case runtime.SoftRestartStarted:
			if e.Cluster == softCluster {
				softWindow[0] = time.Now()
			}
		case runtime.SoftRestartHandedOver:
			if e.Cluster == softCluster {
				softPause = e.Pause
			}
		case runtime.SoftRestartDone:
			if e.Cluster == softCluster {
				softWindow[1] = time.Now()
			}
		case runtime.ShardResumed:
			if e.Cluster == crashCluster && !killedAt.IsZero() {
				resumedAfter[e.Shard] = time.Now()
			}
		case runtime.ShardIdentify:
			if e.Cluster == crashCluster && !killedAt.IsZero() {
				resumedAfter[e.Shard] = time.Time{} // identified: not a resume
			}
		}
	})
	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	runDone := make(chan error, 1)
	go func() { runDone <- rt.Run(runCtx) }()
	stopFleet := func() error {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := rt.Shutdown(sctx)
		select {
		case <-rt.Done():
		case <-sctx.Done():
		}
		return err
	}
	defer func() { _ = stopFleet() }()
	if err := waitReady(rt, runDone, 2*time.Minute, "the fleet of 16 shards in 4 child processes to be ready"); err != nil {
		return nil, err
	}
	plan := map[int]int{} // shard -> cluster
	for _, c := range rt.Clusters() {
		for _, sh := range c.Shards {
			plan[sh.ID] = c.ID
		}
	}

	// The sender: rate MESSAGE_CREATE/s, each with its own nonce, over
	// every guild, until stopped.
	var sentMu sync.Mutex
	sentTo := map[int]sent{} // nonce -> where it went
	sendCtx, stopSend := context.WithCancel(context.Background())
	sendDone := make(chan error, 1)
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		nonce := 0
		for {
			select {
			case <-sendCtx.Done():
				sendDone <- nil
				return
			case <-tick.C:
			}
			for range rate / 100 {
				g := nonce % s.Guilds()
				id := s.GuildID(g)
				n, err := s.Dispatch(id, "MESSAGE_CREATE", s.MessageCreate(id, "tally", nonce))
				if err != nil {
					sendDone <- err
					return
				}
				if n > 0 {
					sentMu.Lock()
					sentTo[nonce] = sent{shard: int((id >> 22) % shards)}
					sentMu.Unlock()
				}
				nonce++
			}
		}
	}()
	defer stopSend()

	// Soft restart of one cluster, under the load.
	time.Sleep(time.Second)
	before := s.Stats().Identifies
	sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	err = rt.SoftRestart(sctx, softCluster)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("soft restart of cluster %d: %w", softCluster, err)
	}
	out.SoftRestartIdentify = s.Stats().Identifies - before
	mu.Lock()
	out.SoftRestartPauseMS = float64(softPause.Microseconds()) / 1000
	mu.Unlock()

	// A SIGKILL of another cluster's child, under the load.
	time.Sleep(time.Second)
	pid, crashShards := 0, []int(nil)
	for _, c := range rt.Clusters() {
		if c.ID == crashCluster && c.Process != nil {
			pid = c.Process.PID
			for _, sh := range c.Shards {
				crashShards = append(crashShards, sh.ID)
			}
		}
	}
	if pid == 0 {
		return nil, fmt.Errorf("cluster %d has no child process (Stats shows no pid)", crashCluster)
	}
	before = s.Stats().Identifies
	mu.Lock()
	killedAt = time.Now()
	mu.Unlock()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return nil, fmt.Errorf("SIGKILL child %d: %w", pid, err)
	}
	err = waitFor(30*time.Second, fmt.Sprintf("every shard of cluster %d to be READY again after its child's SIGKILL", crashCluster), func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, sh := range crashShards {
			if !resumedAfter[sh].IsZero() {
				n++
			}
		}
		return n == len(crashShards), fmt.Sprintf("%d of %d resumed", n, len(crashShards))
	})
	if err != nil {
		return nil, err
	}
	mu.Lock()
	var last time.Time
	for _, sh := range crashShards {
		if resumedAfter[sh].After(last) {
			last = resumedAfter[sh]
		}
	}
	out.CrashRecoveryMS = float64(last.Sub(killedAt).Microseconds()) / 1000
	mu.Unlock()
	out.CrashIdentifies = s.Stats().Identifies - before

	// Load after the crash, then every event sent must reach a listener.
	time.Sleep(time.Second)
	stopSend()
	if err := <-sendDone; err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	sentMu.Lock()
	expected := len(sentTo)
	sentMu.Unlock()
	_ = waitFor(10*time.Second, "every MESSAGE_CREATE sent to reach a child's listener", func() (bool, string) {
		t.mu.Lock()
		defer t.mu.Unlock()
		return len(t.seen) >= expected, fmt.Sprintf("%d of %d", len(t.seen), expected)
	}) // what is missing after the bound is counted as lost
	var rssChildren uint64
	nChildren := 0
	for _, c := range rt.Clusters() {
		if c.Process != nil {
			rssChildren += c.Process.RSS
			nChildren++
		}
	}
	if rss, ok := natsfleet.ReadRSS(os.Getpid()); ok {
		out.RSSMBParent = mb(rss)
	}
	if nChildren > 0 {
		out.RSSMBPerChild = mb(rssChildren / uint64(nChildren))
	}

	t.mu.Lock()
	sentMu.Lock()
	for nonce, where := range sentTo {
		n := t.seen[nonce]
		switch plan[where.shard] {
		case softCluster:
			if n == 0 {
				out.SoftRestartLost++
			} else {
				out.SoftRestartDuplicate += n - 1
			}
		case crashCluster:
			if n == 0 {
				out.CrashLost++
			} else {
				out.CrashDuplicate += n - 1
			}
		}
	}
	sentMu.Unlock()
	// The soft restart's pause as the listeners saw it: per shard of the
	// cluster, the longest gap between deliveries overlapping its window.
	mu.Lock()
	w := softWindow
	mu.Unlock()
	var gap time.Duration
	for shard, ts := range t.arrivals {
		if plan[shard] != softCluster {
			continue
		}
		slices.SortFunc(ts, time.Time.Compare)
		for i := 1; i < len(ts); i++ {
			if ts[i].After(w[0]) && ts[i-1].Before(w[1]) {
				gap = max(gap, ts[i].Sub(ts[i-1]))
			}
		}
	}
	t.mu.Unlock()
	out.SoftRestartPauseMS = max(out.SoftRestartPauseMS, float64(gap.Microseconds())/1000)
	if err := stopFleet(); err != nil {
		return nil, fmt.Errorf("shutdown: %w", err)
	}

	if out.StartupRatio, err = processStartup(false, shardgroup.CompressionNone); err != nil { // the default start
		return nil, err
	}
	if out.StartupRatioZstd, err = processStartup(false, shardgroup.CompressionZstd); err != nil {
		return nil, fmt.Errorf("start-up with zstd-stream: %w", err)
	}
	return out, nil
}

func mb(b uint64) float64 { return math.Round(float64(b)/(1<<20)*10) / 10 }

// waitReady waits for rt's FleetReady, failing if Run returns first.
func waitReady(rt *runtime.Runtime, runDone <-chan error, limit time.Duration, what string) error {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-rt.Ready():
		return nil
	case err := <-runDone:
		return fmt.Errorf("waiting for %s: Run returned: %v", what, err)
	case <-t.C:
		st := rt.Stats()
		return fmt.Errorf("waited %s for %s: %d of %d shards ready", limit, what, st.ShardsReady, st.Shards)
	}
}

// processStartup starts 256 shards in 4 child processes at
// max_concurrency 16 with a 50 ms identify window and returns the
// physical limit (16 windows) over the time from Run to the fleet's
// READY, child processes' start included: each child identifying its own
// shards (ProcessConfig.ColdStart) if cold, else with the warm start (the default), with
// transport compression c in the parent and the children.
func processStartup(cold bool, c shardgroup.Compression) (float64, error) {
	const shards, clusters, mc, window = 256, 4, 16, 50 * time.Millisecond
	s := discordtest.NewServer(discordtest.WithGuilds(shards*2), discordtest.WithRecommendedShards(shards),
		discordtest.WithMaxConcurrency(mc), discordtest.WithIdentifyWindow(window))
	defer s.Close()
	tallySrv, err := natsfleet.StartServer(natsfleet.ServerConfig{})
	if err != nil {
		return 0, err
	}
	defer tallySrv.Close()
	raw, _ := json.Marshal(tallySrv.ConnectInfo())
	rt, err := runtime.New(runtime.Config{
		Token: runtime.Token(s.Token()), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		IdentifyInterval: window, Shards: shards, Clusters: clusters,
		Intents: gateway.IntentGuilds | gateway.IntentGuildMessages,
		Bot: func(int) runtime.Bot {
			return runtime.BotFunc(func(context.Context, *shardgroup.Group) error { return nil })
		},
		Processes:   processConfig([]string{procTokenEnv + "=" + s.Token(), procTallyEnv + "=" + string(raw), procCompressionEnv + "=" + string(c)}, cold),
		Compression: c,
		Logger:      benchLogger(),
	})
	if err != nil {
		return 0, err
	}
	var elapsed time.Duration
	var mu sync.Mutex
	rt.Subscribe(func(e runtime.Event) {
		if e, ok := e.(runtime.FleetReady); ok {
			mu.Lock()
			elapsed = e.Elapsed
			mu.Unlock()
		}
	})
	runDone := make(chan error, 1)
	began := time.Now()
	go func() { runDone <- rt.Run(context.Background()) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = rt.Shutdown(ctx)
		select {
		case <-rt.Done():
		case <-ctx.Done():
		}
	}()
	if err := waitReady(rt, runDone, 2*time.Minute, "256 shards in 4 child processes to be ready"); err != nil {
		return 0, err
	}
	if os.Getenv("FLEET_BENCH_LOG") != "" {
		ids := s.Identifies()
		if len(ids) > 0 {
			st := s.Stats()
			fmt.Fprintf(os.Stderr, "start-up (cold %v): identifies %d (first %v, last %v after Run), resumes %d, ready %v\n",
				cold, len(ids), ids[0].At.Sub(began), ids[len(ids)-1].At.Sub(began), st.Resumes, elapsed)
		}
	}
	if v := s.Stats().Violations["identify_concurrency"]; v > 0 {
		return 0, fmt.Errorf("start-up of 256 shards: %d identify violations", v)
	}
	mu.Lock()
	defer mu.Unlock()
	limit := math.Ceil(float64(shards)/mc) * window.Seconds()
	return math.Round(limit/elapsed.Seconds()*1000) / 1000, nil
}

// benchLogger is the fleet's logger in the start-up measures: stderr
// with FLEET_BENCH_LOG set, else none.
func benchLogger() *slog.Logger {
	if os.Getenv("FLEET_BENCH_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil))
}

type processesStartupResult struct {
	Scenario string    `json:"scenario"`
	Warm     []float64 `json:"startup_ratio_warm"`
	Cold     []float64 `json:"startup_ratio_cold"`
}

// runProcessesStartup measures the start-up ratio of process mode with
// the warm start (the default) and without it (ProcessConfig.ColdStart), alternately,
// so that both see the same load on the machine.
func runProcessesStartup() (any, error) {
	out := processesStartupResult{Scenario: "processes-startup"}
	for range 3 {
		for _, cold := range []bool{true, false} {
			r, err := processStartup(cold, shardgroup.CompressionNone)
			if err != nil {
				return nil, err
			}
			if cold {
				out.Cold = append(out.Cold, r)
			} else {
				out.Warm = append(out.Warm, r)
			}
		}
	}
	return out, nil
}
