package natsfleet_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/metrics"
	"github.com/gofleet/fleet/natsfleet"
	fleetrt "github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

func init() { childKinds["obsfleet"] = obsChild }

const obsArgsEnv = "NATSFLEET_TEST_OBS_ARGS"

// obsArgs is what the observed fleet's program needs, the same in the
// parent and the children.
type obsArgs struct {
	Token, GatewayURL, RESTURL string
	Interval                   time.Duration
	Clusters                   int
	Prefix                     string
	MaxRSS                     int64
}

// obsBot logs once set up, on its cluster's logger.
type obsBot struct{}

func (obsBot) Setup(_ context.Context, g *shardgroup.Group) error {
	g.Logger().Info("observed bot set up", "shards", len(g.Shards()))
	return nil
}

func obsConfig(a obsArgs, log *slog.Logger) fleetrt.Config {
	raw, _ := json.Marshal(a)
	return fleetrt.Config{
		Token: fleetrt.Token(a.Token), GatewayURL: a.GatewayURL, RESTURL: a.RESTURL, IdentifyInterval: a.Interval,
		Clusters: a.Clusters, ShutdownTimeout: 5 * time.Second, RestartBackoff: 10 * time.Millisecond, MaxRestarts: 1,
		Logger: log,
		Bot:    func(int) fleetrt.Bot { return obsBot{} },
		Processes: natsfleet.Processes(natsfleet.ProcessConfig{
			Prefix: a.Prefix, Args: []string{"-test.run=^$"},
			Env:           []string{childEnv + "=obsfleet", childArgsEnv + "={}", obsArgsEnv + "=" + string(raw)},
			StatsInterval: 50 * time.Millisecond,
			MaxRSS:        a.MaxRSS, MaxRSSFor: 50 * time.Millisecond, MemoryCheckInterval: 10 * time.Millisecond,
		}),
	}
}

// obsChild is the program run as a child.
func obsChild(childArgs) error {
	var a obsArgs
	if err := json.Unmarshal([]byte(os.Getenv(obsArgsEnv)), &a); err != nil {
		return err
	}
	rt, err := fleetrt.New(obsConfig(a, quiet))
	if err != nil {
		return err
	}
	return rt.Run(context.Background())
}

// obsFleet runs the observed fleet against s until the test ends.
func obsFleet(t *testing.T, s *discordtest.Server, clusters int, maxRSS int64, log *slog.Logger) (*fleetrt.Runtime, *events) {
	t.Helper()
	rt, err := fleetrt.New(obsConfig(obsArgs{Token: s.Token(), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		Interval: s.IdentifyWindow(), Clusters: clusters, Prefix: procPrefix + "-obs" + newPrefix(),
		MaxRSS: maxRSS}, log))
	if err != nil {
		t.Fatal(err)
	}
	ev := &events{ch: make(chan struct{}, 1)}
	rt.Subscribe(ev.add)
	go rt.Run(context.Background())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := rt.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-rt.Done()
	})
	return rt, ev
}

// events keeps a runtime's events.
type events struct {
	mu  sync.Mutex // guards all
	all []fleetrt.Event
	ch  chan struct{}
}

func (e *events) add(ev fleetrt.Event) {
	e.mu.Lock()
	e.all = append(e.all, ev)
	e.mu.Unlock()
	select {
	case e.ch <- struct{}{}:
	default:
	}
}

// wait returns the first event for which match holds, waiting until ctx
// ends.
func (e *events) wait(t *testing.T, ctx context.Context, what string, match func(fleetrt.Event) bool) fleetrt.Event {
	t.Helper()
	for {
		e.mu.Lock()
		for _, ev := range e.all {
			if match(ev) {
				e.mu.Unlock()
				return ev
			}
		}
		e.mu.Unlock()
		select {
		case <-e.ch:
		case <-ctx.Done():
			t.Fatalf("no %s: %v", what, ctx.Err())
		}
	}
}

func TestProcessModeObservability(t *testing.T) {
	ctx := testCtx(t)
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(10*time.Millisecond))
	defer s.Close()
	rec := newRecorder()
	rt, _ := obsFleet(t, s, 2, 0, slog.New(rec))
	reg := prometheus.NewRegistry()
	if _, err := metrics.Register(rt, reg); err != nil {
		t.Fatal(err)
	}
	select {
	case <-rt.Ready():
	case <-rt.Done():
		t.Fatalf("Run returned: %v", rt.Err())
	case <-ctx.Done():
		t.Fatal("the fleet was not ready")
	}

	// Stats: each cluster's child, with its pid and RSS.
	pids := map[string]int{} // cluster -> pid
	for _, c := range rt.Clusters() {
		if c.Process == nil || c.Process.PID <= 0 || c.Process.PID == os.Getpid() {
			t.Fatalf("cluster %d: Process %+v, want a child's", c.ID, c.Process)
		}
		if runtime.GOOS == "linux" && c.Process.RSS < 1<<20 {
			t.Errorf("cluster %d: RSS %d, want the child's", c.ID, c.Process.RSS)
		}
		pids[strconv.Itoa(c.ID)] = c.Process.PID
	}

	// Logs: each child's Setup record reached this logger with its
	// cluster and pid.
	logged := map[string]int{}
	for {
		rec.mu.Lock()
		for _, r := range rec.records {
			if r.Message == "observed bot set up" {
				a := attrs(r)
				logged[strconv.FormatInt(a["cluster"].Int64(), 10)] = int(a["pid"].Int64())
			}
		}
		n := len(rec.records)
		rec.mu.Unlock()
		if len(logged) == 2 {
			break
		}
		rec.waitN(t, ctx, n+1)
	}
	for c, pid := range pids {
		if logged[c] != pid {
			t.Errorf("cluster %d's record came with pid %d, want %d", must(strconv.Atoi(c)), logged[c], pid)
		}
	}

	// Metrics: the parent's registry has every child's shards ready, and
	// each child's own figures with its cluster and pid.
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		byName[f.GetName()] = f
	}
	ready := 0.0
	for _, m := range byName["fleet_shards"].GetMetric() {
		if label(m, "state") == "ready" && label(m, "pid") == "" {
			ready += m.GetGauge().GetValue()
		}
	}
	if ready != 4 {
		t.Errorf("fleet_shards{state=ready} = %v in the parent, want 4", ready)
	}
	seen := map[string]string{}
	for _, m := range byName["go_goroutines"].GetMetric() {
		if c := label(m, "cluster"); c != "" {
			seen[c] = label(m, "pid")
		}
	}
	for c, pid := range pids {
		if seen[c] != strconv.Itoa(pid) {
			t.Errorf("go_goroutines of cluster %s: pid %q, want %d (got %v)", c, seen[c], pid, seen)
		}
	}
	if f := byName["fleet_process_metrics_answered"]; f == nil || f.GetMetric()[0].GetGauge().GetValue() != 2 {
		t.Errorf("fleet_process_metrics_answered: %v, want 2", f)
	}
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// A child over MaxRSS is killed, and its cluster restarts with the reason.
func TestProcessOverMaxRSSRestartsWithTheReason(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("RSS is read from /proc")
	}
	ctx := testCtx(t)
	s := discordtest.NewServer(discordtest.WithGuilds(2), discordtest.WithRecommendedShards(1),
		discordtest.WithMaxConcurrency(1), discordtest.WithIdentifyWindow(10*time.Millisecond))
	defer s.Close()
	// Every Go process is above 1 MiB: the limit trips 50 ms after start.
	_, ev := obsFleet(t, s, 1, 1<<20, quiet)
	got := ev.wait(t, ctx, "ClusterRestarted over the memory limit", func(e fleetrt.Event) bool {
		r, ok := e.(fleetrt.ClusterRestarted)
		return ok && r.Err != nil
	}).(fleetrt.ClusterRestarted)
	var mle *natsfleet.MemoryLimitError
	if !errors.As(got.Err, &mle) {
		t.Fatalf("ClusterRestarted.Err = %v, want a *MemoryLimitError", got.Err)
	}
	if mle.Limit != 1<<20 || mle.RSS <= mle.Limit || mle.PID <= 0 || mle.For < 50*time.Millisecond {
		t.Errorf("%+v: want the limit, an RSS above it, the pid and at least MaxRSSFor", *mle)
	}
}
