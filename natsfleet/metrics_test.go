package natsfleet_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gofleet/fleet/natsfleet"
)

// childRegistry is what a child's metrics.Register would fill: events by
// shard, a per-cluster counter, a histogram and the process's own.
func childRegistry(t *testing.T, cluster int, shards ...int) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	events := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleet_gateway_events_total", Help: "Gateway dispatches."}, []string{"shard", "event"})
	restarts := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleet_cluster_restarts_total", Help: "Cluster restarts."}, []string{"cluster"})
	wait := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fleet_identify_queue_wait_seconds", Help: "Identify wait.", Buckets: []float64{0.1, 1}})
	reg.MustRegister(events, restarts, wait)
	for _, s := range shards {
		events.WithLabelValues(fmt.Sprint(s), "MESSAGE_CREATE").Add(float64(10 + s))
	}
	restarts.WithLabelValues(fmt.Sprint(cluster)).Add(float64(cluster))
	wait.Observe(0.5)
	return reg
}

func serveMetrics(t *testing.T, prefix string, cluster int, g prometheus.Gatherer) {
	t.Helper()
	mr, err := natsfleet.ServeMetrics(connect(t), natsfleet.MetricsConfig{Prefix: prefix, Cluster: cluster, Gatherer: g})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mr.Close)
}

func TestProcessCollectorShowsEveryChildOnTheParentsRegistry(t *testing.T) {
	prefix := newPrefix()
	serveMetrics(t, prefix, 0, childRegistry(t, 0, 0, 1))
	serveMetrics(t, prefix, 1, childRegistry(t, 1, 2, 3))

	pc, err := natsfleet.NewProcessCollector(connect(t), natsfleet.ProcessCollectorConfig{
		Prefix: prefix, Expect: func() int { return 2 }, Timeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	parent := prometheus.NewRegistry()
	own := prometheus.NewCounter(prometheus.CounterOpts{Name: "fleet_bus_requests_total", Help: "Bus requests."})
	own.Add(5)
	parent.MustRegister(pc, own)

	pid := os.Getpid()
	want := fmt.Sprintf(`
# HELP fleet_gateway_events_total Gateway dispatches.
# TYPE fleet_gateway_events_total counter
fleet_gateway_events_total{cluster="0",event="MESSAGE_CREATE",pid="%[1]d",shard="0"} 10
fleet_gateway_events_total{cluster="0",event="MESSAGE_CREATE",pid="%[1]d",shard="1"} 11
fleet_gateway_events_total{cluster="1",event="MESSAGE_CREATE",pid="%[1]d",shard="2"} 12
fleet_gateway_events_total{cluster="1",event="MESSAGE_CREATE",pid="%[1]d",shard="3"} 13
# HELP fleet_cluster_restarts_total Cluster restarts.
# TYPE fleet_cluster_restarts_total counter
fleet_cluster_restarts_total{cluster="0",pid="%[1]d"} 0
fleet_cluster_restarts_total{cluster="1",pid="%[1]d"} 1
# HELP fleet_identify_queue_wait_seconds Identify wait.
# TYPE fleet_identify_queue_wait_seconds histogram
fleet_identify_queue_wait_seconds_bucket{cluster="0",pid="%[1]d",le="0.1"} 0
fleet_identify_queue_wait_seconds_bucket{cluster="0",pid="%[1]d",le="1"} 1
fleet_identify_queue_wait_seconds_bucket{cluster="0",pid="%[1]d",le="+Inf"} 1
fleet_identify_queue_wait_seconds_sum{cluster="0",pid="%[1]d"} 0.5
fleet_identify_queue_wait_seconds_count{cluster="0",pid="%[1]d"} 1
fleet_identify_queue_wait_seconds_bucket{cluster="1",pid="%[1]d",le="0.1"} 0
fleet_identify_queue_wait_seconds_bucket{cluster="1",pid="%[1]d",le="1"} 1
fleet_identify_queue_wait_seconds_bucket{cluster="1",pid="%[1]d",le="+Inf"} 1
fleet_identify_queue_wait_seconds_sum{cluster="1",pid="%[1]d"} 0.5
fleet_identify_queue_wait_seconds_count{cluster="1",pid="%[1]d"} 1
# HELP fleet_bus_requests_total Bus requests.
# TYPE fleet_bus_requests_total counter
fleet_bus_requests_total 5
# HELP fleet_process_metrics_answered Fleet processes whose metrics the last collection gathered.
# TYPE fleet_process_metrics_answered gauge
fleet_process_metrics_answered 2
# HELP fleet_process_metrics_errors_total Answers of fleet processes to a metrics collection that could not be used.
# TYPE fleet_process_metrics_errors_total counter
fleet_process_metrics_errors_total 0
`, pid)
	if err := testutil.GatherAndCompare(parent, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

// A family the parent exports itself and a child too merges into one.
func TestProcessCollectorMergesFamiliesWithTheParents(t *testing.T) {
	prefix := newPrefix()
	serveMetrics(t, prefix, 4, childRegistry(t, 4, 9))
	pc, err := natsfleet.NewProcessCollector(connect(t), natsfleet.ProcessCollectorConfig{
		Prefix: prefix, Expect: func() int { return 1 }, Timeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	parent := prometheus.NewRegistry()
	events := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleet_gateway_events_total", Help: "Gateway dispatches."}, []string{"shard", "event"})
	events.WithLabelValues("0", "READY").Inc()
	parent.MustRegister(pc, events)
	n, err := testutil.GatherAndCount(parent, "fleet_gateway_events_total")
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("%d fleet_gateway_events_total series, want 2 (the parent's and the child's)", n)
	}
}

// Without Expect, a collection takes what answers within Timeout.
func TestProcessCollectorWithoutAnswers(t *testing.T) {
	pc, err := natsfleet.NewProcessCollector(connect(t), natsfleet.ProcessCollectorConfig{Prefix: newPrefix(), Timeout: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(pc)
	if v, err := testutil.GatherAndCount(reg, "fleet_process_metrics_answered"); err != nil || v != 1 {
		t.Fatalf("fleet_process_metrics_answered: %d series, %v", v, err)
	}
	want := `
# HELP fleet_process_metrics_answered Fleet processes whose metrics the last collection gathered.
# TYPE fleet_process_metrics_answered gauge
fleet_process_metrics_answered 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "fleet_process_metrics_answered"); err != nil {
		t.Fatal(err)
	}
	if _, err := natsfleet.NewProcessCollector(connect(t), natsfleet.ProcessCollectorConfig{Timeout: -1}); err == nil {
		t.Error("Timeout -1 accepted")
	}
}
