package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/disgoorg/disgo"
	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/events"
	"github.com/disgoorg/disgo/gateway"
	"github.com/disgoorg/disgo/rest"
	"github.com/disgoorg/disgo/sharding"
	djson "github.com/disgoorg/json"
	"github.com/disgoorg/snowflake/v2"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

func init() {
	register("events", runEvents)
	register("compression", runCompression)
	childKinds["events"] = eventsChild
}

// The event hot path is measured as issue 13 states it: 16 shards in 4
// clusters, 5,000 guilds, MESSAGE_CREATE as fast as the clients read,
// counted by a listener of disgo's typed events.MessageCreate.
const (
	evShards   = 16
	evClusters = 4
	evGuilds   = 5000
	evEvents   = 300_000
)

type eventsResult struct {
	Scenario         string  `json:"scenario"`
	Shards           int     `json:"shards"`
	Clusters         int     `json:"clusters"`
	Events           int     `json:"events"`
	Compression      string  `json:"compression"`
	CPUPerMillion    float64 `json:"cpu_s_per_million"`
	EventsPerSec     float64 `json:"events_per_sec"`
	BareCPUPerMillon float64 `json:"bare_disgo_cpu_s_per_million"`
	BareEventsPerSec float64 `json:"bare_disgo_events_per_sec"`
	RatioVsBare      float64 `json:"ratio_vs_bare"`
	Runs             int     `json:"runs_each"`
}

// clientRun is what a client child process reports: its own CPU time
// and bytes read while the load ran, and, before it, while it started.
type clientRun struct {
	CPUS           float64 `json:"cpu_s"`
	ElapsedS       float64 `json:"elapsed_s"`
	ReadBytes      int64   `json:"read_bytes"`
	StartCPUS      float64 `json:"start_cpu_s"`
	StartReadBytes int64   `json:"start_read_bytes"`
}

func eventsServer() *discordtest.Server {
	return discordtest.NewServer(discordtest.WithGuilds(evGuilds), discordtest.WithRecommendedShards(evShards),
		discordtest.WithMaxConcurrency(evShards), discordtest.WithIdentifyWindow(time.Millisecond))
}

// runEvents measures the CPU the fleet's process spends per million
// MESSAGE_CREATE delivered to a listener, and bare disgo's in the same
// run. Each client runs in a child process, so the simulator's CPU is not
// counted; the two alternate, three times each, and the lowest of each
// counts (a busy machine only ever adds CPU).
func runEvents() (any, error) {
	res := eventsResult{Scenario: "events", Shards: evShards, Clusters: evClusters, Events: evEvents,
		Compression: string(shardgroup.DefaultCompression), Runs: 3}
	for range res.Runs {
		fleet, err := clientProcess("fleet", string(shardgroup.DefaultCompression), evEvents)
		if err != nil {
			return nil, fmt.Errorf("fleet: %w", err)
		}
		bare, err := clientProcess("bare", "", evEvents)
		if err != nil {
			return nil, fmt.Errorf("bare disgo: %w", err)
		}
		keepBest(&res.CPUPerMillion, &res.EventsPerSec, fleet, evEvents)
		keepBest(&res.BareCPUPerMillon, &res.BareEventsPerSec, bare, evEvents)
	}
	res.RatioVsBare = res.CPUPerMillion / res.BareCPUPerMillon
	return res, nil
}

func keepBest(cpu, rate *float64, r clientRun, events int) {
	c := r.CPUS / float64(events) * 1e6
	if *cpu == 0 || c < *cpu {
		*cpu = c
	}
	*rate = max(*rate, float64(events)/r.ElapsedS)
}

type compressionRow struct {
	Compress              string  `json:"compress"`
	StartupBytesPerGuild  float64 `json:"startup_bytes_per_guild_create"`
	StartupCPUS           float64 `json:"startup_cpu_s"`
	BytesPerEvent         float64 `json:"bytes_per_message_create"`
	CPUPerMillion         float64 `json:"cpu_s_per_million"`
	EventsPerSec          float64 `json:"events_per_sec"`
	StartupBytesVsNone    float64 `json:"startup_bytes_vs_none"`
	MessageBytesVsNone    float64 `json:"message_bytes_vs_none"`
	CPUPerMillionVsNone   float64 `json:"cpu_vs_none"`
	MixBytesPerEvent      float64 `json:"mix_bytes_per_event"`
	MixCPUPerMillion      float64 `json:"mix_cpu_s_per_million"`
	MixBytesPerEventRatio float64 `json:"mix_bytes_vs_none"`
}

type compressionResult struct {
	Scenario string           `json:"scenario"`
	Shards   int              `json:"shards"`
	Guilds   int              `json:"guilds"`
	Events   int              `json:"events"`
	Runs     int              `json:"runs_each"`
	Results  []compressionRow `json:"results"`
}

// runCompression runs the fleet with each transport compression against
// the same start-up (READY and 5,000 GUILD_CREATE: the GUILD_CREATE-heavy
// part) and the same MESSAGE_CREATE load, and reports the bytes the
// client read from its sockets, its CPU and its rate. The mix is both
// phases together, per event.
func runCompression() (any, error) {
	kinds := []shardgroup.Compression{shardgroup.CompressionNone, shardgroup.CompressionZlib, shardgroup.CompressionZstd}
	const events, runs = 200_000, 2
	res := compressionResult{Scenario: "compression", Shards: evShards, Guilds: evGuilds, Events: events, Runs: runs}
	best := make([]*clientRun, len(kinds))
	for range runs {
		for i, k := range kinds {
			r, err := clientProcess("fleet", string(k), events)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			if b := best[i]; b == nil {
				best[i] = &r
			} else {
				b.CPUS, b.StartCPUS = min(b.CPUS, r.CPUS), min(b.StartCPUS, r.StartCPUS)
				b.ElapsedS = min(b.ElapsedS, r.ElapsedS)
				b.ReadBytes, b.StartReadBytes = min(b.ReadBytes, r.ReadBytes), min(b.StartReadBytes, r.StartReadBytes)
			}
		}
	}
	for i, k := range kinds {
		b := best[i]
		row := compressionRow{Compress: string(k),
			StartupBytesPerGuild: float64(b.StartReadBytes) / evGuilds, StartupCPUS: b.StartCPUS,
			BytesPerEvent: float64(b.ReadBytes) / events, CPUPerMillion: b.CPUS / events * 1e6,
			EventsPerSec:     events / b.ElapsedS,
			MixBytesPerEvent: float64(b.StartReadBytes+b.ReadBytes) / (evGuilds + events),
			MixCPUPerMillion: (b.StartCPUS + b.CPUS) / (evGuilds + events) * 1e6,
		}
		n := best[0]
		row.StartupBytesVsNone = float64(b.StartReadBytes) / float64(n.StartReadBytes)
		row.MessageBytesVsNone = float64(b.ReadBytes) / float64(n.ReadBytes)
		row.CPUPerMillionVsNone = b.CPUS / n.CPUS
		row.MixBytesPerEventRatio = float64(b.StartReadBytes+b.ReadBytes) / float64(n.StartReadBytes+n.ReadBytes)
		res.Results = append(res.Results, row)
	}
	return res, nil
}

// clientProcess runs one client (kind fleet or bare) in a child process
// against a simulator in this one: the child connects and loads every
// guild, then measures itself while this process streams events to it.
func clientProcess(kind, compress string, events int) (clientRun, error) {
	s := eventsServer()
	defer s.Close()
	exe, err := os.Executable()
	if err != nil {
		return clientRun{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-child", "events", kind, compress, s.GatewayURL(), s.RESTURL(), s.Token(), strconv.Itoa(events))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return clientRun{}, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return clientRun{}, err
	}
	if err := cmd.Start(); err != nil {
		return clientRun{}, err
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	out := bufio.NewReader(stdout)
	expect := func(want string) error {
		line, err := out.ReadString('\n')
		if err != nil || line != want+"\n" {
			return fmt.Errorf("waiting for the child to say %q: got %q (%v)", want, line, err)
		}
		return nil
	}
	if err := expect("ready"); err != nil {
		st := s.Stats()
		return clientRun{}, fmt.Errorf("%w (simulator: %d identifies, %d resumes, violations %v)",
			err, st.Identifies, st.Resumes, st.Violations)
	}
	if _, err := s.Load(ctx, discordtest.Load{Events: events}); err != nil {
		return clientRun{}, fmt.Errorf("load: %w", err)
	}
	line, err := out.ReadString('\n')
	if err != nil {
		return clientRun{}, fmt.Errorf("waiting for the child's result: %v (%q)", err, line)
	}
	var r clientRun
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		return clientRun{}, fmt.Errorf("child result %q: %w", line, err)
	}
	return r, nil
}

// usage is the process's CPU time and the bytes it has read (sockets
// included, from /proc/self/io).
func usage() (cpu float64, read int64) {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	if b, err := os.ReadFile("/proc/self/io"); err == nil {
		for l := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(l, "rchar: "); ok {
				read, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			}
		}
	}
	return cpu, read
}

// eventsChild is the child side: args are kind, compress, gateway URL,
// REST URL, token and the number of events to wait for.
func eventsChild(args []string) error {
	if len(args) != 6 {
		return fmt.Errorf("events child: want 6 arguments, got %v", args)
	}
	kind, compress, gw, restURL, token := args[0], args[1], args[2], args[3], args[4]
	n, err := strconv.Atoi(args[5])
	if err != nil {
		return err
	}
	if kind == "bare" {
		// Bare disgo decodes with the codec it ships with. Nothing has
		// started yet, so setting it races with nothing.
		djson.Unmarshal = json.Unmarshal
	}
	cpu0, read0 := usage()
	var got, guilds atomic.Int64
	var mu sync.Mutex
	arrived := map[snowflake.ID]bool{}
	seen := func(id snowflake.ID) {
		mu.Lock()
		if !arrived[id] {
			arrived[id] = true
			guilds.Add(1)
		}
		mu.Unlock()
	}
	listeners := []bot.EventListener{
		bot.NewListenerFunc(func(*events.MessageCreate) { got.Add(1) }),
		// Every guild counts once, however it arrives: a shard that had
		// to identify again on a busy machine sees its guilds anew.
		bot.NewListenerFunc(func(e *events.GuildReady) { seen(e.GuildID) }),
		bot.NewListenerFunc(func(e *events.GuildAvailable) { seen(e.GuildID) }),
		bot.NewListenerFunc(func(e *events.GuildJoin) { seen(e.GuildID) }),
	}
	var stop func() error
	switch kind {
	case "fleet":
		stop, err = eventsFleet(gw, restURL, token, shardgroup.Compression(compress), listeners)
	case "bare":
		stop, err = eventsBare(gw, restURL, token, listeners)
	default:
		err = fmt.Errorf("unknown client kind %q", kind)
	}
	if err != nil {
		return err
	}
	defer func() { _ = stop() }()
	if err := waitFor(time.Minute, fmt.Sprintf("%d GUILD_CREATEs", evGuilds), func() (bool, string) {
		n := guilds.Load()
		return n >= int64(evGuilds), fmt.Sprintf("%d arrived", n)
	}); err != nil {
		return err
	}
	if path := os.Getenv("FLEET_BENCH_CPUPROFILE"); path != "" {
		// A CPU profile of the measured part, for finding where it goes.
		f, err := os.Create(path + "." + kind)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	cpu1, read1 := usage()
	start := time.Now()
	fmt.Println("ready")
	if err := waitFor(3*time.Minute, fmt.Sprintf("%d MESSAGE_CREATEs at the listener", n), func() (bool, string) {
		c := got.Load()
		return c >= int64(n), fmt.Sprintf("%d arrived", c)
	}); err != nil {
		return err
	}
	elapsed := time.Since(start)
	cpu2, read2 := usage()
	out, _ := json.Marshal(clientRun{CPUS: cpu2 - cpu1, ElapsedS: elapsed.Seconds(), ReadBytes: read2 - read1,
		StartCPUS: cpu1 - cpu0, StartReadBytes: read1 - read0})
	fmt.Println(string(out))
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent is done with us
	return nil
}

func eventsFleet(gw, restURL, token string, compress shardgroup.Compression, ls []bot.EventListener) (func() error, error) {
	rt, err := runtime.New(runtime.Config{
		Token: runtime.Token(token), GatewayURL: gw, RESTURL: restURL, IdentifyInterval: time.Millisecond,
		Shards: evShards, Clusters: evClusters, Compression: compress,
		Bot: func(int) runtime.Bot {
			return runtime.BotFunc(func(_ context.Context, g *shardgroup.Group) error {
				g.Client().AddEventListeners(ls...)
				return nil
			})
		},
	})
	if err != nil {
		return nil, err
	}
	go rt.Run(context.Background())
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := rt.Shutdown(ctx); err != nil {
			return err
		}
		<-rt.Done()
		return rt.Err()
	}, nil
}

func eventsBare(gw, restURL, token string, ls []bot.EventListener) (func() error, error) {
	ids := make([]int, evShards)
	for i := range ids {
		ids[i] = i
	}
	quiet := slog.New(slog.DiscardHandler)
	client, err := disgo.New(token,
		bot.WithLogger(quiet),
		bot.WithRestClientConfigOpts(rest.WithURL(restURL)),
		bot.WithShardManagerConfigOpts(
			sharding.WithShardIDs(ids...), sharding.WithShardCount(evShards),
			// One shard opens at a time: disgo v0.18.15's ShardManager
			// writes its shard map from one goroutine per shard (see
			// oneAtATime in fleet.go).
			sharding.WithRateLimiter(&oneAtATime{}),
			sharding.WithGatewayConfigOpts(gateway.WithURL(gw), gateway.WithLogger(quiet),
				gateway.WithIntents(gateway.IntentGuilds, gateway.IntentGuildMessages)),
		),
		bot.WithEventListeners(ls...),
	)
	if err != nil {
		return nil, err
	}
	if err := client.OpenShardManager(context.Background()); err != nil {
		return nil, err
	}
	return func() error { client.Close(context.Background()); return nil }, nil
}
