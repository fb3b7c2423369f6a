package metrics

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/services"
)

// exercise feeds every hook once, so that every vector has a child.
func exercise(m *Metrics) {
	o, h := m.observer(), m.RESTHooks()
	o.GatewayEvent(0, 1, "MESSAGE_CREATE")
	for _, e := range []runtime.Event{
		runtime.ShardIdentify{Cluster: 0, Shard: 1, Waited: 20 * time.Millisecond},
		runtime.ShardResumed{Cluster: 0, Shard: 1},
		runtime.ShardClosed{Cluster: 0, Shard: 1, Code: 4000},
		runtime.ShardZombie{Cluster: 0, Shard: 1},
		runtime.ClusterRestarted{Cluster: 0},
		runtime.ListenerPanic{Cluster: 0, Shard: 1, Value: "boom"},
		services.Restarted{Service: "store", Attempt: 2},
	} {
		m.runtimeEvent(e)
	}
	h.Response("/channels/{channel.id}/messages", "POST", 200)
	h.RateLimited("/channels/{channel.id}/messages", "user")
	h.Queued("/channels/{channel.id}/messages")
	h.Waited("/channels/{channel.id}/messages", time.Millisecond)
	h.InvalidRequests(3)
	m.ObserveBusRequest("get", time.Millisecond, nil)
}

func TestCollectorsLint(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	exercise(m)
	for _, c := range []prometheus.Collector{m.events.vec, m.fleet, m.identifies, m.identifyWait, m.resumes, m.reconnects,
		m.clusterRestarts, m.listenerPanics, m.serviceRestarts, m.busRequests, m.busLatency,
		m.restRequests, m.restRateLimited, m.restQueued, m.restWait} {
		problems, err := testutil.CollectAndLint(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	}
	// The pedantic registry checks every collected metric against its
	// description.
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range fams {
		names[f.GetName()] = true
	}
	for _, want := range []string{"fleet_gateway_events_total", "fleet_shards", "fleet_rest_invalid_requests",
		"go_goroutines", "process_cpu_seconds_total"} {
		if !names[want] {
			t.Errorf("%s not gathered", want)
		}
	}
	if got := testutil.ToFloat64(m.reconnects.WithLabelValues("zombie")); got != 1 {
		t.Fatalf("zombie reconnects %v", got)
	}
}

func TestNew(t *testing.T) {
	if _, err := New(nil); err == nil || !strings.Contains(err.Error(), "nil Registerer") {
		t.Fatalf("New(nil): %v", err)
	}
	reg := prometheus.NewRegistry()
	if _, err := New(reg); err != nil {
		t.Fatal(err)
	}
	var are prometheus.AlreadyRegisteredError
	if _, err := New(reg); !errors.As(err, &are) {
		t.Fatalf("second New on one registry: %v", err)
	}
	// A failed New leaves nothing behind: a fresh registry with the Go
	// collector already there takes New without complaint.
	reg2 := prometheus.NewRegistry()
	reg2.MustRegister(collectors.NewGoCollector())
	if _, err := New(reg2, WithMaxLabelValues(4)); err != nil {
		t.Fatalf("New on a registry with a Go collector: %v", err)
	}
	if _, err := New(prometheus.NewRegistry(), WithMaxLabelValues(0)); err == nil {
		t.Fatal("WithMaxLabelValues(0) accepted")
	}
	m, err := New(prometheus.NewRegistry(), WithoutProcessCollectors(), WithEventTypes("A", "B", "A"))
	if err != nil {
		t.Fatal(err)
	}
	m.observer().GatewayEvent(0, 0, "A")
	m.observer().GatewayEvent(0, 0, "MESSAGE_CREATE")
	if got := testutil.ToFloat64(m.events.vec.WithLabelValues("0", other)); got != 1 {
		t.Fatalf("other %v", got)
	}
}

func TestLabelsStayBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := New(reg, WithoutProcessCollectors(), WithMaxLabelValues(8))
	if err != nil {
		t.Fatal(err)
	}
	o, h := m.observer(), m.RESTHooks()
	const shards = 4
	for i := range 10_000 {
		o.GatewayEvent(0, i%shards, fmt.Sprintf("EVENT_%d", i%1000)) // unknown names
		o.GatewayEvent(0, i%shards, "MESSAGE_CREATE")
		m.runtimeEvent(runtime.ShardClosed{Shard: i % shards, Code: 1000 + i%5000})
		h.Response(fmt.Sprintf("/route/%d", i%1000), "GET", 200)
		h.RateLimited("", fmt.Sprintf("scope%d", i))
		m.ObserveBusRequest(fmt.Sprintf("cmd%d", i%1000), time.Microsecond, errors.New("x"))
		m.ServiceRestarted(fmt.Sprintf("svc%d", i%1000))
	}
	m.ObserveBusRequest("cmd0", time.Microsecond, bus.ErrTimeout)
	bound := map[string]int{
		"fleet_gateway_events_total":         shards * 2,  // MESSAGE_CREATE and other
		"fleet_shard_reconnects_total":       15 + 16 + 1, // 1000–1015, 4000–4014, other
		"fleet_rest_requests_total":          8 + 1,
		"fleet_rest_rate_limited_total":      1,
		"fleet_bus_requests_total":           (8 + 1) + 1, // error for each, and cmd0's timeout
		"fleet_bus_request_duration_seconds": 8 + 1,
		"fleet_service_restarts_total":       8 + 1,
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if b, ok := bound[f.GetName()]; ok && len(f.GetMetric()) > b {
			t.Errorf("%s: %d series, want at most %d", f.GetName(), len(f.GetMetric()), b)
		}
		delete(bound, f.GetName())
	}
	if len(bound) != 0 {
		t.Fatalf("not gathered: %v", bound)
	}
}

func TestGatewayEventDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("allocations differ under -race")
	}
	m, err := New(prometheus.NewRegistry(), WithoutProcessCollectors())
	if err != nil {
		t.Fatal(err)
	}
	f := m.observer().GatewayEvent
	f(0, 3, "MESSAGE_CREATE") // the first event of a kind resolves its counter
	f(0, 3, "SOMETHING_ELSE")
	if n := testing.AllocsPerRun(1000, func() {
		f(0, 3, "MESSAGE_CREATE")
		f(0, 3, "SOMETHING_ELSE")
	}); n != 0 {
		t.Fatalf("%v allocations per event", n)
	}
}

func BenchmarkGatewayEvent(b *testing.B) {
	m, err := New(prometheus.NewRegistry(), WithoutProcessCollectors())
	if err != nil {
		b.Fatal(err)
	}
	f := m.observer().GatewayEvent
	types := []string{"MESSAGE_CREATE", "GUILD_CREATE", "TYPING_START", "UNKNOWN"}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			f(0, i%16, types[i%len(types)])
			i++
		}
	})
}

// TestDashboardUsesTheseMetrics checks that every fleet_ metric the
// Grafana dashboard in examples/grafana queries is one this package
// exports.
func TestDashboardUsesTheseMetrics(t *testing.T) {
	b, err := os.ReadFile("../examples/grafana/fleet.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	m, err := New(prometheus.NewRegistry(), WithoutProcessCollectors())
	if err != nil {
		t.Fatal(err)
	}
	descs := make(chan *prometheus.Desc, 64)
	go func() {
		for _, c := range []prometheus.Collector{m.events.vec, m.fleet, m.identifies, m.identifyWait, m.resumes, m.reconnects,
			m.clusterRestarts, m.listenerPanics, m.serviceRestarts, m.busRequests, m.busLatency,
			m.restRequests, m.restRateLimited, m.restQueued, m.restWait} {
			c.Describe(descs)
		}
		close(descs)
	}()
	exported := map[string]bool{}
	name := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	for d := range descs {
		exported[name.FindStringSubmatch(d.String())[1]] = true
	}
	used := regexp.MustCompile(`\bfleet_[a-z_]+`)
	n := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, u := range used.FindAllString(tg.Expr, -1) {
				n++
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(u, "_bucket"), "_sum"), "_count")
				if !exported[u] && !exported[base] {
					t.Errorf("panel %q queries %s, which the package does not export", p.Title, u)
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("the dashboard queries no fleet_ metric")
	}
}
