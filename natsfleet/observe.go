package natsfleet

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gofleet/fleet/metrics"
	"github.com/gofleet/fleet/runtime"
)

// Process mode's observability, in one place: the children's logs reach
// the parent's logger (LogHandler, ReceiveLogs), their metrics the
// parent's registry (ServeMetrics, ProcessCollector), their cluster's
// state the parent's Stats (a report every StatsInterval on
// <prefix>.proc.<id>.stats), and the parent watches each child's RSS
// against MaxRSS.

// statsSubject is where a child reports its cluster's state.
func statsSubject(prefix, id string) string { return prefix + ".proc." + id + ".stats" }

// childReport is a child's report of its cluster.
type childReport struct {
	Cluster runtime.ClusterStats `json:"cluster"`
	Memory  runtime.MemoryStats  `json:"memory"`
}

// childExports are the metric families a child exports to the parent:
// what the parent cannot count itself. Shard states, latencies, caches,
// IDENTIFYs, resumes and restarts the parent has from the children's
// reports and events, as for a cluster of its own.
var childExports = []string{"fleet_gateway_events_total", "fleet_bus_", "go_", "process_"}

// exportedGatherer gathers the families of childExports.
type exportedGatherer struct{ g prometheus.Gatherer }

func (e exportedGatherer) Gather() ([]*dto.MetricFamily, error) {
	fams, err := e.g.Gather()
	out := fams[:0]
	for _, f := range fams {
		for _, p := range childExports {
			if strings.HasPrefix(f.GetName(), p) {
				out = append(out, f)
				break
			}
		}
	}
	return out, err
}

// childObserver is a child's side: it reports its cluster to the parent
// and answers the parent's metrics requests until stop.
type childObserver struct {
	unsubscribe func() // from the member's events
	metrics     *MetricsResponder
	logs        *LogHandler
	cancel      context.CancelFunc
	wg          sync.WaitGroup
}

// childLogger returns the child's logger, which sends every record to
// the parent, and its handler, which observe runs.
func childLogger(nc *nats.Conn, spec childSpec, cfg ProcessConfig) (*LogHandler, error) {
	return NewLogHandler(nc, LogConfig{Prefix: spec.Prefix, Cluster: spec.Cluster, Level: cfg.LogLevel, Buffer: cfg.LogBuffer})
}

// observe starts the child's side for rt, the member serving its
// cluster; logs, if set, is the handler of its logger, run until stop.
func observe(nc *nats.Conn, spec childSpec, rt *runtime.Runtime, logs *LogHandler) (*childObserver, error) {
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		return nil, err
	}
	m.Attach(rt)
	mr, err := ServeMetrics(nc, MetricsConfig{Prefix: spec.Prefix, Cluster: spec.Cluster, Gatherer: exportedGatherer{reg}})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	o := &childObserver{metrics: mr, logs: logs, cancel: cancel}
	if logs != nil {
		o.wg.Go(func() { _ = logs.Run(ctx) })
	}
	interval := spec.StatsInterval
	if interval <= 0 {
		interval = time.Second
	}
	subject := statsSubject(spec.Prefix, spec.ID)
	// A shard's change of state is reported at once, besides every
	// interval.
	kick := make(chan struct{}, 1)
	o.unsubscribe = rt.Subscribe(func(e runtime.Event) {
		switch e.(type) {
		case runtime.ShardReady, runtime.ShardResumed, runtime.ShardDisconnected, runtime.ClusterReady:
			select {
			case kick <- struct{}{}:
			default:
			}
		}
	})
	o.wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			report(nc, subject, spec.Cluster, rt)
			select {
			case <-t.C:
			case <-kick:
			case <-ctx.Done():
				return
			}
		}
	})
	return o, nil
}

// report publishes the state of the member's cluster.
func report(nc *nats.Conn, subject string, cluster int, rt *runtime.Runtime) {
	st := rt.Stats()
	for _, cs := range st.Clusters {
		if cs.ID == cluster {
			if data, err := json.Marshal(childReport{Cluster: cs, Memory: st.Memory}); err == nil {
				_ = nc.Publish(subject, data)
			}
			return
		}
	}
}

// stop stops reporting and answering, and sends the last log records.
func (o *childObserver) stop() {
	o.unsubscribe()
	o.metrics.Close()
	o.cancel()
	o.wg.Wait()
}

// childView is what the parent knows of a child: its last report.
type childView struct {
	mu       sync.Mutex // guards last, reported
	last     childReport
	reported time.Time
}

func (v *childView) onReport(m *nats.Msg) {
	var r childReport
	if json.Unmarshal(m.Data, &r) != nil {
		return
	}
	v.mu.Lock()
	v.last, v.reported = r, time.Now()
	v.mu.Unlock()
}

// ClusterStats returns the child's last report of its cluster.
func (ch *childProc) ClusterStats() (runtime.ClusterStats, bool) {
	ch.view.mu.Lock()
	defer ch.view.mu.Unlock()
	if ch.view.reported.IsZero() {
		return runtime.ClusterStats{}, false
	}
	return ch.view.last.Cluster, true
}

// Process describes the child process: its pid and RSS.
func (ch *childProc) Process() runtime.ProcessStats {
	ch.view.mu.Lock()
	p := runtime.ProcessStats{PID: ch.Pid(), RSS: ch.view.last.Memory.RSS, Reported: ch.view.reported}
	if p.RSS == 0 {
		p.RSS = ch.view.last.Memory.GoTotal
	}
	ch.view.mu.Unlock()
	if rss, ok := ReadRSS(p.PID); ok {
		p.RSS = rss
	}
	return p
}

var _ runtime.ChildReporter = (*childProc)(nil)

// ReadRSS returns the resident set size of process pid from
// /proc/<pid>/status (VmRSS); false where there is no /proc or no such
// process.
func ReadRSS(pid int) (uint64, bool) {
	if goruntime.GOOS != "linux" {
		return 0, false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "VmRSS:") {
			continue
		}
		f := strings.Fields(line[len("VmRSS:"):])
		if len(f) != 2 || f[1] != "kB" {
			return 0, false
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, false
		}
		return kb * 1024, true
	}
	return 0, false
}

// MemoryLimitError is why a child was killed: its RSS stayed above
// ProcessConfig.MaxRSS for MaxRSSFor. The cluster restarts as after a
// crash; the ClusterRestarted event carries this error.
type MemoryLimitError struct {
	PID        int
	RSS, Limit uint64
	For        time.Duration
}

func (e *MemoryLimitError) Error() string {
	return fmt.Sprintf("natsfleet: child process %d killed: RSS %d MiB above its limit of %d MiB (ProcessConfig.MaxRSS) for %v",
		e.PID, e.RSS>>20, e.Limit>>20, e.For)
}

// MemoryGuard decides when a process has been over a memory limit for
// long enough: each Observe gives it a measurement and its time. Its zero
// value never trips.
type MemoryGuard struct {
	Limit uint64        // bytes; 0: no limit
	For   time.Duration // how long the RSS must stay above Limit
	over  time.Time     // when the current run above Limit began; zero when under
}

// Observe records rss measured at now and reports whether it has been
// above Limit, at every measurement, for For or longer.
func (g *MemoryGuard) Observe(now time.Time, rss uint64) bool {
	if g.Limit == 0 || rss <= g.Limit {
		g.over = time.Time{}
		return false
	}
	if g.over.IsZero() {
		g.over = now
	}
	return now.Sub(g.over) >= g.For
}

// Since returns when the current run above the limit began; zero when
// under.
func (g *MemoryGuard) Since() time.Time { return g.over }

// watchMemory kills ch once its RSS has stayed above MaxRSS for
// MaxRSSFor, recording why; it returns when the child exits.
func (pl *pool) watchMemory(ch *childProc) {
	cfg := pl.mode.cfg
	g := MemoryGuard{Limit: uint64(cfg.MaxRSS), For: cfg.MaxRSSFor}
	every := cfg.MemoryCheckInterval
	if every <= 0 {
		every = 250 * time.Millisecond
	}
	if g.For <= 0 {
		g.For = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ch.exited:
			return
		case now := <-t.C:
			rss, ok := ReadRSS(ch.Pid())
			if !ok {
				continue
			}
			if g.Observe(now, rss) {
				err := &MemoryLimitError{PID: ch.Pid(), RSS: rss, Limit: g.Limit, For: now.Sub(g.Since())}
				ch.overLimit.Store(err)
				pl.log.Warn("child process over its memory limit: killed", "cluster", ch.cluster, "pid", ch.Pid(),
					"rss_bytes", rss, "limit_bytes", g.Limit)
				ch.kill()
				return
			}
		}
	}
}

// exitError is how a child exited: killed over its memory limit, or
// what Wait said.
func (ch *childProc) exitError(waitErr error) error {
	if e := ch.overLimit.Load(); e != nil {
		return e
	}
	return waitErr
}

// Collector returns a prometheus.Collector of the children's metrics
// (a [ProcessCollector] on the parent's connection while the fleet runs;
// nothing before): metrics.Register registers it on the parent's
// registry, so that one /metrics shows every child.
func (p *ProcessMode) Collector() prometheus.Collector { return (*modeCollector)(p) }

type modeCollector ProcessMode

func (c *modeCollector) Describe(chan<- *prometheus.Desc) {}

func (c *modeCollector) Collect(ch chan<- prometheus.Metric) {
	if pc := c.collector.Load(); pc != nil {
		pc.Collect(ch)
	}
}

// startObserving starts the parent's side: the children's logs on the
// fleet's logger and their metrics for Collector.
func (pl *pool) startObserving() error {
	if pl.mode.cfg.LogBuffer >= 0 && pl.f.Logger != nil {
		lr, err := ReceiveLogs(pl.nc, pl.mode.prefix(), pl.f.Logger)
		if err != nil {
			return err
		}
		pl.logs = lr
	}
	pc, err := NewProcessCollector(pl.nc, ProcessCollectorConfig{Prefix: pl.mode.prefix(), Expect: pl.running})
	if err != nil {
		return err
	}
	pl.collector = pc
	pl.mode.collector.Store(pc)
	return nil
}

// stopObserving stops the parent's side.
func (pl *pool) stopObserving() {
	if pl.collector != nil {
		pl.mode.collector.CompareAndSwap(pl.collector, nil)
	}
	if pl.logs != nil {
		pl.logs.Close()
	}
}

// running returns how many children run.
func (pl *pool) running() int {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return len(pl.children)
}
