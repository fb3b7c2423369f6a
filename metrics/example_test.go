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
	// In a real fleet the runtime calls the observer: put it in
	// runtime.Config.Observer.
	obs := m.Observer()
	obs.GatewayEvent(0, 2, "MESSAGE_CREATE")
	obs.GatewayEvent(0, 2, "MESSAGE_CREATE")
	obs.GatewayEvent(0, 2, "A_NAME_NOBODY_KNOWS")
	n, _ := testutil.GatherAndCount(reg, "fleet_gateway_events_total")
	fmt.Println(n, "series")
	// Output: 2 series
}

func ExampleHandler() {
	reg := prometheus.NewRegistry()
	m, _ := metrics.New(reg)
	cfg := runtime.Config{Token: "token", Bot: func(int) runtime.Bot { return nil }, Observer: m.Observer()}
	cfg.RESTLimiterConfig.Hooks = m.RESTHooks()
	rt, err := runtime.New(cfg)
	if err != nil {
		panic(err)
	}
	m.Attach(rt)
	h := metrics.Handler(rt, reg, metrics.HandlerOptions{})
	// Serve h on a loopback address of your own; here, a recorder.
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	fmt.Print(rec.Code, " ", rec.Body.String())
	// Output: 503 unhealthy: no shards: the fleet is not running
}
