package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/natsfleet"
	"github.com/gofleet/fleet/runtime"
)

func init() {
	register("identify-nats", runIdentifyNATS)
	childKinds["identify-nats-slice"] = runIdentifySlice
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
func runIdentifyNATS() (any, error) {
	const shards, mc, interval, procs = 256, 16, 50 * time.Millisecond, 4
	res := identifyNATSResult{Scenario: "identify-nats", Shards: shards, MaxConcurrency: mc,
		IntervalMS: int(interval.Milliseconds()), Processes: procs}
	s := discordtest.NewServer(discordtest.WithGuilds(shards*2), discordtest.WithRecommendedShards(shards),
		discordtest.WithMaxConcurrency(mc), discordtest.WithIdentifyWindow(interval))
	defer s.Close()
	srv, err := natsfleet.StartServer(natsfleet.ServerConfig{})
	if err != nil {
		return nil, err
	}
	defer srv.Close()

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
		c, err := startChild("identify-nats-slice", srv.ConnectInfo(), []string{"FLEET_BENCH_TOKEN=" + s.Token()}, s.GatewayURL(), s.RESTURL(),
			strconv.Itoa(shards), strconv.Itoa(p*per), strconv.Itoa((p+1)*per-1), interval.String())
		if err != nil {
			return nil, err
		}
		children = append(children, c)
	}
	start := time.Now()
	if err := startAll(children, "fleet ready", "shards to be ready", 2*time.Minute); err != nil {
		return nil, err
	}
	readyAt := time.Now()
	ready := readyAt.Sub(start)
	st := s.Stats()
	res.identifySpacing(s.Identifies(), start, readyAt, interval)
	res.ReadyS = ready.Seconds()
	res.LimitS = math.Ceil(float64(shards)/mc) * interval.Seconds()
	res.Ratio = res.LimitS / res.ReadyS
	res.Violations = st.Violations["identify_concurrency"]
	res.Identifies = st.Identifies
	return res, nil
}

// runIdentifySlice runs shards first..last of total against the
// simulator, identifying through the NATS queue, once told "go" on stdin;
// it says "fleet ready" when they are, and stops when stdin closes.
// Args: gateway URL, REST URL, total, first, last, interval.
func runIdentifySlice(args []string) error {
	if len(args) != 6 {
		return fmt.Errorf("identify-nats-slice: want 6 args, got %d", len(args))
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
	rt, err := runtime.New(runtime.Config{
		Token: runtime.Token(token), GatewayURL: args[0], RESTURL: args[1],
		IdentifyInterval: interval, IdentifyQueue: q, Clusters: 4, Bot: nopBot,
		TotalShards: total, FirstShardID: first, LastShardID: last,
		Logger: slog.New(slog.DiscardHandler),
	})
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
	errc := make(chan error, 1)
	go func() { errc <- rt.Run(context.Background()) }()
	select {
	case <-readyc:
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
