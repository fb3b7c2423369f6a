package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/natsfleet"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

func init() {
	register("identify-nats", runIdentifyNATS)
	register("identify-nats-layouts", runIdentifyLayouts)
	childKinds["identify-nats-slice"] = runIdentifySlice
	childKinds["identify-nats-sim"] = runIdentifySim
}

type identifyNATSResult struct {
	Scenario       string  `json:"scenario"`
	Shards         int     `json:"shards"`
	MaxConcurrency int     `json:"max_concurrency"`
	IntervalMS     int     `json:"interval_ms"`
	Processes      int     `json:"processes"`
	ReadyS         float64 `json:"ready_s"`
	LimitS         float64 `json:"limit_s"`
	Ratio          float64 `json:"ratio"`
	Violations     int     `json:"identify_violations"`
	Identifies     int     `json:"identifies"`
	// Where the time went, as the simulator saw the IDENTIFYs: the first
	// one after "go", the spacing of consecutive ones of a bucket beyond
	// the window (median and smallest: the margin kept), and the fleet's
	// READY after the last one.
	FirstIdentifyMS float64 `json:"first_identify_ms"`
	SpacingP50MS    float64 `json:"spacing_over_window_p50_ms"`
	SpacingMinMS    float64 `json:"spacing_over_window_min_ms"`
	LastIdentifyMS  float64 `json:"last_identify_ms"`
	SpacingMaxMS    float64 `json:"spacing_over_window_max_ms"`
	AfterLastMS     float64 `json:"ready_after_last_identify_ms"`
}

// identifySpacing fills in where the time went from the simulator's
// IDENTIFYs, start being the "go" and ready the fleet's readiness.
func (r *identifyNATSResult) identifySpacing(ids []discordtest.Identify, start, ready time.Time, window time.Duration) {
	if len(ids) == 0 {
		return
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
	last := map[int]time.Time{}
	var over []time.Duration
	first, end := ids[0].At, ids[0].At
	for _, id := range ids {
		if id.At.Before(first) {
			first = id.At
		}
		if id.At.After(end) {
			end = id.At
		}
		if id.Violation {
			continue
		}
		if l, ok := last[id.Bucket]; ok {
			over = append(over, id.At.Sub(l)-window)
		}
		last[id.Bucket] = id.At
	}
	r.FirstIdentifyMS = ms(first.Sub(start))
	r.LastIdentifyMS = ms(end.Sub(start))
	r.AfterLastMS = ms(ready.Sub(end))
	if len(over) > 0 {
		slices.Sort(over)
		r.SpacingP50MS = ms(over[len(over)/2])
		r.SpacingMinMS = ms(over[0])
		r.SpacingMaxMS = ms(over[len(over)-1])
	}
}

// runIdentifyNATS starts 256 shards split over 4 processes that share one
// identify queue through an embedded NATS server, against one simulator,
// and measures the time until every shard is ready.
//
// The simulator runs in a process of its own, as Discord runs on
// machines of its own: in this process it would take the CPU the NATS
// server needs to answer the queues, which a fleet does not pay.
//
// The ratio is the startup scenario's: the physical limit (one Interval
// per IDENTIFY a bucket needs) over the measured time, from "go" to every
// process's FleetReady, without transport compression. The clock starts
// when every process is told "go", as the startup scenario's starts when
// Run is called: each process has started, connected to NATS and opened
// its queue before, as a fleet's processes do before they start their
// shards. The time an OS process takes to start (130-400 ms measured
// here on a loaded machine) is neither the identify schedule's nor part
// of the in-process measure, so it stays out.
func runIdentifyNATS() (any, error) { return identifyNATS(layoutRanges) }

// The layouts of the shards over the processes: layoutRanges gives each
// process a contiguous range of shard IDs (a quarter of every bucket's
// shards: the processes share each bucket), as the fleet plans them;
// layoutBuckets gives each process every shard of a quarter of the
// buckets (no bucket is shared), with the same NATS queue, and
// layoutBucketsLocal the same with an in-process queue in each process
// (nothing crosses processes but the gateway's traffic). The two
// bucket layouts and the ranges in identify-nats-layouts run as members
// of a planned fleet, without GET /gateway/bot.
const (
	layoutRanges       = "ranges"
	layoutRangesMember = "ranges-member"
	layoutBuckets      = "buckets"
	layoutBucketsLocal = "buckets-local"
)

type identifyLayoutsResult struct {
	Scenario           string    `json:"scenario"`
	Ranges             []float64 `json:"ratio_ranges"`
	WholeBuckets       []float64 `json:"ratio_whole_buckets"`
	WholeBucketsLocal  []float64 `json:"ratio_whole_buckets_local_queues"`
	IdentifyViolations int       `json:"identify_violations"`
}

// runIdentifyLayouts runs identify-nats's fleet three times in each
// layout, alternately, so that each sees the same load on the machine:
// where the start-up loses time to the processes sharing buckets, and
// where to the queue being shared over NATS.
func runIdentifyLayouts() (any, error) {
	out := identifyLayoutsResult{Scenario: "identify-nats-layouts"}
	for range 3 {
		for _, l := range []string{layoutRangesMember, layoutBuckets, layoutBucketsLocal} {
			r, err := identifyNATS(l)
			if err != nil {
				return nil, fmt.Errorf("layout %s: %w", l, err)
			}
			out.IdentifyViolations += r.Violations
			switch l {
			case layoutRangesMember:
				out.Ranges = append(out.Ranges, round3(r.Ratio))
			case layoutBuckets:
				out.WholeBuckets = append(out.WholeBuckets, round3(r.Ratio))
			default:
				out.WholeBucketsLocal = append(out.WholeBucketsLocal, round3(r.Ratio))
			}
		}
	}
	return out, nil
}

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

func identifyNATS(layout string) (identifyNATSResult, error) {
	const shards, mc, interval, procs = 256, 16, 50 * time.Millisecond, 4
	res := identifyNATSResult{Scenario: "identify-nats", Shards: shards, MaxConcurrency: mc,
		IntervalMS: int(interval.Milliseconds()), Processes: procs}
	srv, err := natsfleet.StartServer(natsfleet.ServerConfig{})
	if err != nil {
		return identifyNATSResult{}, err
	}
	defer srv.Close()
	sim, err := startChild("identify-nats-sim", srv.ConnectInfo(), nil,
		strconv.Itoa(shards), strconv.Itoa(mc), interval.String())
	if err != nil {
		return identifyNATSResult{}, err
	}
	defer sim.stop()
	line, err := sim.line(10 * time.Second)
	if err != nil {
		return identifyNATSResult{}, fmt.Errorf("the simulator's address: %w", err)
	}
	var addr simAddress
	if err := json.Unmarshal([]byte(line), &addr); err != nil {
		return identifyNATSResult{}, fmt.Errorf("the simulator's address %q: %w", line, err)
	}

	// Start the processes and let each prepare (connect, open the queue)
	// before any identifies: the measure starts with the "go" line.
	per := shards / procs
	children := make([]*child, 0, procs)
	defer func() {
		for _, c := range children {
			c.stop()
		}
	}()
	for p := range procs {
		c, err := startChild("identify-nats-slice", srv.ConnectInfo(), []string{"FLEET_BENCH_TOKEN=" + addr.Token}, addr.Gateway, addr.REST,
			strconv.Itoa(shards), strconv.Itoa(p*per), strconv.Itoa((p+1)*per-1), interval.String(), layout)
		if err != nil {
			return identifyNATSResult{}, err
		}
		children = append(children, c)
	}
	start := time.Now()
	if err := startAll(children, "fleet ready", "shards to be ready", 2*time.Minute); err != nil {
		return identifyNATSResult{}, err
	}
	readyAt := time.Now()
	ready := readyAt.Sub(start)
	if _, err := io.WriteString(sim.stdin, "stats\n"); err != nil {
		return identifyNATSResult{}, err
	}
	if line, err = sim.line(10 * time.Second); err != nil {
		return identifyNATSResult{}, fmt.Errorf("the simulator's stats: %w", err)
	}
	var st simStats
	if err := json.Unmarshal([]byte(line), &st); err != nil {
		return identifyNATSResult{}, fmt.Errorf("the simulator's stats: %w", err)
	}
	res.identifySpacing(st.Identifies, start, readyAt, interval)
	res.ReadyS = ready.Seconds()
	res.LimitS = math.Ceil(float64(shards)/mc) * interval.Seconds()
	res.Ratio = res.LimitS / res.ReadyS
	res.Violations = st.Violations
	res.Identifies = len(st.Identifies)
	if dir := os.Getenv(timelineEnv); dir != "" {
		for _, c := range children {
			c.stop()
		}
		children = nil
		printTimeline(os.Stderr, dir, st.Identifies, start, mc, interval)
	}
	return res, nil
}

// simAddress is the simulator process's first line after "ready".
type simAddress struct {
	Gateway, REST, Token string
}

// simStats is its answer to "stats".
type simStats struct {
	Violations int
	Identifies []discordtest.Identify
}

// runIdentifySim serves the simulator for identify-nats: it prints
// "ready" and its address, answers each "stats" line on stdin with the
// identify violations and the IDENTIFYs it read, and stops when stdin
// closes. Args: shards, max_concurrency, identify window.
func runIdentifySim(args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("identify-nats-sim: want 3 args, got %d", len(args))
	}
	shards, _ := strconv.Atoi(args[0])
	mc, _ := strconv.Atoi(args[1])
	window, err := time.ParseDuration(args[2])
	if err != nil {
		return err
	}
	s, err := discordtest.Start(discordtest.WithGuilds(shards*2), discordtest.WithRecommendedShards(shards),
		discordtest.WithMaxConcurrency(mc), discordtest.WithIdentifyWindow(window))
	if err != nil {
		return err
	}
	defer s.Close()
	if dir := os.Getenv(profileEnv); dir != "" {
		f, err := os.Create(filepath.Join(dir, "sim.cpu"))
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	addr, _ := json.Marshal(simAddress{Gateway: s.GatewayURL(), REST: s.RESTURL(), Token: s.Token()})
	fmt.Println("ready")
	fmt.Println(string(addr))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() != "stats" {
			continue
		}
		pprof.StopCPUProfile()
		out, _ := json.Marshal(simStats{Violations: s.Stats().Violations["identify_concurrency"], Identifies: s.Identifies()})
		fmt.Println(string(out))
	}
	return nil
}

// runIdentifySlice runs shards first..last of total against the
// simulator, identifying through the NATS queue, once told "go" on stdin;
// it says "fleet ready" when they are, and stops when stdin closes.
// Args: gateway URL, REST URL, total, first, last, interval, layout (see
// layoutRanges; the bucket layouts run as many shards: every shard of the
// buckets first·mc/total up to (last+1)·mc/total).
func runIdentifySlice(args []string) error {
	if len(args) != 7 {
		return fmt.Errorf("identify-nats-slice: want 7 args, got %d", len(args))
	}
	total, _ := strconv.Atoi(args[2])
	first, _ := strconv.Atoi(args[3])
	last, _ := strconv.Atoi(args[4])
	interval, err := time.ParseDuration(args[5])
	if err != nil {
		return err
	}
	var info natsfleet.ConnectInfo
	if err := json.Unmarshal([]byte(os.Getenv(natsInfoEnv)), &info); err != nil {
		return fmt.Errorf("%s: %w", natsInfoEnv, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := natsfleet.Connect(ctx, info.URL, append(info.Options(), natsfleet.Name("identify slice "+args[3]))...)
	if err != nil {
		return err
	}
	defer nc.Close()
	q, err := natsfleet.NewIdentifyQueue(ctx, nc, natsfleet.IdentifyConfig{Prefix: "bench", MaxConcurrency: 16, Interval: interval})
	if err != nil {
		return err
	}
	token := os.Getenv("FLEET_BENCH_TOKEN")
	tq := &timedQueue{q: q, reserving: map[int]time.Time{}, reserved: map[int]time.Time{},
		asked: map[int]time.Time{}, granted: map[int]time.Time{}, unlocked: map[int]time.Time{}}
	if dir := os.Getenv(timelineEnv); dir != "" {
		defer tq.write(filepath.Join(dir, "slice-"+args[3]+".json"))
	}
	cfg := runtime.Config{
		Token: runtime.Token(token), GatewayURL: args[0], RESTURL: args[1],
		IdentifyInterval: interval, IdentifyQueue: tq, Clusters: 4, Bot: nopBot,
		// Without transport compression, as the startup scenario's ratio:
		// the measure is the identify schedule's, not the simulator's
		// zstd encoder's (most of its CPU time with it).
		Compression: shardgroup.CompressionNone,
		TotalShards: total, FirstShardID: first, LastShardID: last,
		Logger: slog.New(slog.DiscardHandler),
	}
	if layout := args[6]; layout != layoutRanges {
		if err := sliceMember(&cfg, tq, layout, total, first, last, interval); err != nil {
			return err
		}
		defer cfg.Bus.Close()
	}
	if _, ok := tq.q.(shardgroup.TurnReserver); ok {
		cfg.IdentifyQueue = reservingTimedQueue{tq}
	}
	rt, err := runtime.New(cfg)
	if err != nil {
		return err
	}
	readyc := make(chan struct{}, 1)
	rt.Subscribe(func(e runtime.Event) {
		if _, ok := e.(runtime.FleetReady); ok {
			select {
			case readyc <- struct{}{}:
			default:
			}
		}
	})
	fmt.Println("ready")
	in := make([]byte, 3)
	if _, err := io.ReadFull(os.Stdin, in); err != nil || strings.TrimSpace(string(in)) != "go" {
		return errors.New("no go")
	}
	tq.mu.Lock()
	tq.goAt = time.Now()
	tq.mu.Unlock()
	if dir := os.Getenv(profileEnv); dir != "" {
		f, err := os.Create(filepath.Join(dir, "slice-"+args[3]+".cpu"))
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	errc := make(chan error, 1)
	go func() { errc <- rt.Run(context.Background()) }()
	select {
	case <-readyc:
		pprof.StopCPUProfile()
		fmt.Println("fleet ready")
	case err := <-errc:
		fmt.Println("run:", err)
		return err
	case <-time.After(2 * time.Minute):
		fmt.Println("not ready in 2 minutes")
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	if err := rt.Shutdown(sctx); err != nil {
		return err
	}
	return <-errc
}

// profileEnv names a directory: when set, each process writes its CPU
// profile from "go" to its shards' readiness there (slice-<first>.cpu),
// and the simulator its own (sim.cpu).
const profileEnv = "FLEET_BENCH_PPROF"

// timelineEnv names a directory: when set, each process writes when its
// shards asked for their turn, got it and were unlocked (READY), and the
// scenario prints, per bucket, these with the simulator's IDENTIFYs.
const timelineEnv = "FLEET_BENCH_TIMELINE"

// timedQueue records the times of each shard's calls to its queue, and
// when its process was told "go".
type timedQueue struct {
	q                        runtime.IdentifyQueue
	mu                       sync.Mutex // guards goAt and the maps
	goAt                     time.Time
	reserving, reserved      map[int]time.Time // a shard's first ReserveTurn
	asked, granted, unlocked map[int]time.Time
}

func (t *timedQueue) WaitBucket(ctx context.Context, shard int) error {
	t.mu.Lock()
	t.asked[shard] = time.Now()
	t.mu.Unlock()
	err := t.q.WaitBucket(ctx, shard)
	t.mu.Lock()
	t.granted[shard] = time.Now()
	t.mu.Unlock()
	return err
}

func (t *timedQueue) UnlockBucket(shard int) {
	t.mu.Lock()
	t.unlocked[shard] = time.Now()
	t.mu.Unlock()
	t.q.UnlockBucket(shard)
}

func (t *timedQueue) Close(ctx context.Context) { t.q.Close(ctx) }

// reservingTimedQueue is a timedQueue whose queue reserves turns before
// the shards dial (shardgroup.TurnReserver): it passes ReserveTurn on. A
// timedQueue alone is no TurnReserver, so that the shards of a queue
// that reserves nothing are paced as without it.
type reservingTimedQueue struct{ *timedQueue }

func (t reservingTimedQueue) ReserveTurn(ctx context.Context, shard int) (context.Context, func(), error) {
	r := t.q.(shardgroup.TurnReserver)
	t.mu.Lock()
	if _, ok := t.reserving[shard]; !ok {
		t.reserving[shard] = time.Now()
	}
	t.mu.Unlock()
	rctx, giveUp, err := r.ReserveTurn(ctx, shard)
	t.mu.Lock()
	if _, ok := t.reserved[shard]; !ok {
		t.reserved[shard] = time.Now()
	}
	t.mu.Unlock()
	return rctx, giveUp, err
}

type shardTimes struct {
	Shard                    int
	Asked, Granted, Unlocked int64 // unix ns
	Reserving, Reserved      int64 // unix ns, 0 when the queue reserves no turn
}

// sliceTimes is one process's timeline file.
type sliceTimes struct {
	Go     int64 // unix ns: when it was told "go"
	Shards []shardTimes
}

func (t *timedQueue) write(path string) {
	t.mu.Lock()
	out := sliceTimes{Go: t.goAt.UnixNano()}
	for s, at := range t.asked {
		st := shardTimes{Shard: s, Asked: at.UnixNano(), Granted: t.granted[s].UnixNano(), Unlocked: t.unlocked[s].UnixNano()}
		if r, ok := t.reserving[s]; ok {
			st.Reserving, st.Reserved = r.UnixNano(), t.reserved[s].UnixNano()
		}
		out.Shards = append(out.Shards, st)
	}
	t.mu.Unlock()
	data, _ := json.Marshal(out)
	_ = os.WriteFile(path, data, 0o644)
}

// printTimeline prints, per process, when it was told "go" and when its
// first and last shards asked for a turn, then, per bucket in IDENTIFY
// order, each shard's times in ms since start: asked, granted, IDENTIFY
// read by the simulator and unlocked, with the gaps from the previous
// unlock to this grant and from the IDENTIFY to the unlock; then, over
// all buckets, the spread of where the turns lost time.
func printTimeline(w io.Writer, dir string, ids []discordtest.Identify, start time.Time, mc int, window time.Duration) {
	times := map[int]shardTimes{}
	process := map[int]string{} // the file of each shard's process
	files, _ := filepath.Glob(filepath.Join(dir, "slice-*.json"))
	ms := func(ns int64) float64 { return float64(ns-start.UnixNano()) / 1e6 }
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var st sliceTimes
		if json.Unmarshal(data, &st) != nil || len(st.Shards) == 0 {
			continue
		}
		first, last := st.Shards[0].Asked, st.Shards[0].Asked
		for _, t := range st.Shards {
			times[t.Shard] = t
			process[t.Shard] = f
			first, last = min(first, t.Asked), max(last, t.Asked)
		}
		fmt.Fprintf(w, "%s: go %.1f, first ask %.1f, last ask %.1f\n", filepath.Base(f), ms(st.Go), ms(first), ms(last))
	}
	// Where each turn after a bucket's first lost time, in ms: the READY
	// after the IDENTIFY before it, its grant after that READY plus the
	// window (within a process, or from another), its IDENTIFY's read
	// after its grant.
	var ready, local, cross, read []float64
	var firsts []float64
	// A bucket's first turn, in ms: its ReserveTurn's call after start,
	// its return after the call, WaitBucket's call after that (the dial
	// and HELLO), the grant after WaitBucket and the IDENTIFY's read after
	// the grant.
	var reserving, reserved, dialed, granted, firstRead []float64
	msOr0 := func(ns int64) float64 {
		if ns == 0 {
			return 0
		}
		return ms(ns)
	}
	for b := range mc {
		fmt.Fprintf(w, "bucket %d: shard reserving reserved asked granted identify unlocked (gap unlock->grant, identify->unlock)\n", b)
		var prevUnlock, prevIdentify int64
		prevShard := -1
		for _, id := range ids {
			if id.Bucket != b {
				continue
			}
			t := times[id.Shard]
			gap := 0.0
			if prevUnlock != 0 {
				gap = float64(t.Granted-prevUnlock) / 1e6
				ready = append(ready, float64(prevUnlock-prevIdentify)/1e6)
				if process[id.Shard] == process[prevShard] {
					local = append(local, gap-float64(window.Milliseconds()))
				} else {
					cross = append(cross, gap-float64(window.Milliseconds()))
				}
				read = append(read, float64(id.At.UnixNano()-t.Granted)/1e6)
			} else {
				firsts = append(firsts, ms(id.At.UnixNano()))
				if t.Reserving != 0 {
					reserving = append(reserving, ms(t.Reserving))
					reserved = append(reserved, float64(t.Reserved-t.Reserving)/1e6)
					dialed = append(dialed, float64(t.Asked-t.Reserved)/1e6)
				}
				granted = append(granted, float64(t.Granted-t.Asked)/1e6)
				firstRead = append(firstRead, float64(id.At.UnixNano()-t.Granted)/1e6)
			}
			fmt.Fprintf(w, "  %3d %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f (%6.1f, %5.1f)\n", id.Shard, msOr0(t.Reserving), msOr0(t.Reserved), ms(t.Asked), ms(t.Granted),
				ms(id.At.UnixNano()), ms(t.Unlocked), gap, float64(t.Unlocked-id.At.UnixNano())/1e6)
			prevUnlock, prevIdentify, prevShard = t.Unlocked, id.At.UnixNano(), id.Shard
		}
	}
	spread := func(name string, v []float64) {
		if len(v) == 0 {
			return
		}
		slices.Sort(v)
		sum := 0.0
		for _, x := range v {
			sum += x
		}
		fmt.Fprintf(w, "  %-41s n %3d  p50 %6.2f  p90 %6.2f  max %6.1f  sum per bucket %6.1f\n", name, len(v),
			v[len(v)/2], v[len(v)*9/10], v[len(v)-1], sum/float64(mc))
	}
	fmt.Fprintln(w, "turns after a bucket's first, ms:")
	spread("READY after the IDENTIFY before", ready)
	spread("grant after READY+window, same process", local)
	spread("grant after READY+window, other process", cross)
	spread("IDENTIFY read after grant", read)
	if len(firsts) > 0 {
		fmt.Fprintf(w, "first IDENTIFY of a bucket: earliest %.1f, latest %.1f ms\n", slices.Min(firsts), slices.Max(firsts))
	}
	fmt.Fprintln(w, "a bucket's first turn, ms:")
	spread("ReserveTurn called after start", reserving)
	spread("ReserveTurn returned after its call", reserved)
	spread("WaitBucket called after (dial, HELLO)", dialed)
	spread("granted after WaitBucket", granted)
	spread("IDENTIFY read after grant", firstRead)
}

// sliceMember makes cfg run the slice's shards in layout as a member of a
// planned fleet: 4 clusters, from the contiguous range first..last or
// from the whole buckets of the same count of shards, with an in-process
// queue for layoutBucketsLocal (each bucket then lives in one process).
func sliceMember(cfg *runtime.Config, tq *timedQueue, layout string, total, first, last int, interval time.Duration) error {
	const mc = 16
	n := last - first + 1
	var ids []int
	switch layout {
	case layoutRangesMember:
		for s := first; s <= last; s++ {
			ids = append(ids, s)
		}
	case layoutBuckets, layoutBucketsLocal:
		// Process p of total/n takes buckets p*mc*n/total up to the
		// next process's first: every shard of those buckets.
		from, to := first*mc/total, (last+1)*mc/total
		for s := range total {
			if b := s % mc; b >= from && b < to {
				ids = append(ids, s)
			}
		}
	default:
		return fmt.Errorf("identify-nats-slice: unknown layout %q", layout)
	}
	if len(ids) != n {
		return fmt.Errorf("identify-nats-slice: layout %s gives %d shards, want %d", layout, len(ids), n)
	}
	var clusters []runtime.ClusterPlan
	for c := range 4 {
		clusters = append(clusters, runtime.ClusterPlan{ID: first/(n/4) + c, Shards: ids[c*n/4 : (c+1)*n/4]})
	}
	if layout == layoutBucketsLocal {
		q, err := runtime.NewLocalIdentifyQueue(mc, interval)
		if err != nil {
			return err
		}
		tq.q.Close(context.Background())
		tq.q = q
	}
	cfg.TotalShards, cfg.FirstShardID, cfg.LastShardID, cfg.Clusters = 0, 0, 0, 0
	cfg.Shards, cfg.MaxConcurrencyOverride = total, mc
	cfg.Member = &runtime.Member{Clusters: clusters}
	cfg.Bus = bus.New(bus.Options{})
	return nil
}
