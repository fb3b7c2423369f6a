package metrics_test

import (
	"fmt"
	"net/http/httptest"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gofleet/fleet/metrics"
	"github.com/gofleet/fleet/runtime"
)

func ExampleNew() {
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg, metrics.WithoutProcessCollectors())
	if err != nil {
		panic(err)
	}
	// A REST limiter built without a runtime reports through the hooks
	// (Register wires them for a runtime's own limiter).
	hooks := m.RESTHooks()
	hooks.Response("/channels/{channel.id}/messages", "POST", 200)
	hooks.Response("/channels/{channel.id}/messages", "POST", 200)
	hooks.Response("/gateway/bot", "GET", 200)
	n, _ := testutil.GatherAndCount(reg, "fleet_rest_requests_total")
	fmt.Println(n, "series")
	// Output: 2 series
}

func ExampleRegister() {
	rt, err := runtime.New(runtime.Config{Token: "token", Bot: func(int) runtime.Bot { return nil }})
	if err != nil {
		panic(err)
	}
	// One call: collectors on the registry, the runtime's hot paths, its
	// REST limiter and its events.
	m, err := metrics.Register(rt, prometheus.NewRegistry())
	if err != nil {
		panic(err)
	}
	h := m.Handler(metrics.HandlerOptions{})
	// Serve h on a loopback address of your own; here, a recorder.
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	fmt.Print(rec.Code, " ", rec.Body.String())
	// Output: 503 unhealthy: no shards: the fleet is not running
}
