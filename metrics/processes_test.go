package metrics

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/runtime"
)

// collectingProcesses is a process mode (never started) with a collector
// of its children's metrics.
type collectingProcesses struct{ c prometheus.Collector }

func (collectingProcesses) Transport() bus.Transport { return nil }
func (collectingProcesses) Child(context.Context, runtime.Config, func()) (bool, error) {
	return false, nil
}
func (collectingProcesses) Start(context.Context, runtime.ProcessFleet) (runtime.ProcessPool, error) {
	return nil, nil
}
func (p collectingProcesses) Collector() prometheus.Collector { return p.c }

// unchecked is a collector that describes nothing, as natsfleet's of the
// children does.
type unchecked struct{ prometheus.Collector }

func (unchecked) Describe(chan<- *prometheus.Desc) {}

const eventsHelp = "Gateway dispatches received, by shard and event name (names outside the known set count as other)."

// The children's families merge with the parent's of the same name.
func TestRegisterAddsTheChildProcessesCollector(t *testing.T) {
	children := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleet_gateway_events_total", Help: eventsHelp},
		[]string{"cluster", "event", "pid", "shard"})
	children.WithLabelValues("1", "READY", "4242", "3").Add(2)
	rt, err := runtime.New(runtime.Config{Token: "t", Bot: nopBot, Processes: collectingProcesses{unchecked{children}}})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if _, err := Register(rt, reg, WithoutProcessCollectors()); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP fleet_gateway_events_total Gateway dispatches received, by shard and event name (names outside the known set count as other).
# TYPE fleet_gateway_events_total counter
fleet_gateway_events_total{cluster="1",event="READY",pid="4242",shard="3"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "fleet_gateway_events_total"); err != nil {
		t.Fatal(err)
	}
}
