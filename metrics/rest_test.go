package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gofleet/fleet/restproxy"
)

func TestNewRESTHasOnlyTheRESTSeries(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := NewREST(reg, WithoutProcessCollectors())
	if err != nil {
		t.Fatal(err)
	}
	l, err := restproxy.New(restproxy.Config{InvalidRequestStop: 5, InvalidRequestLimit: 10})
	if err != nil {
		t.Fatal(err)
	}
	m.AttachLimiter(l)
	h := m.RESTHooks()
	h.Response("/interactions/{interaction.id}/{interaction.token}/callback", "POST", 204)
	h.RateLimited("/channels/{channel.id}/messages", "shared")
	h.Queued("/channels/{channel.id}/messages")
	h.Waited("/channels/{channel.id}/messages", time.Millisecond)
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", err, problems)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
		if !strings.HasPrefix(mf.GetName(), "fleet_rest_") {
			t.Errorf("series %s on a REST-only registry", mf.GetName())
		}
	}
	for _, want := range []string{"fleet_rest_requests_total", "fleet_rest_rate_limited_total", "fleet_rest_queued_requests_total",
		"fleet_rest_limiter_wait_seconds", "fleet_rest_invalid_requests", "fleet_rest_limiter_buckets",
		"fleet_rest_limiter_queued_requests", "fleet_rest_limiter_in_flight_requests"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Errorf("%s missing from %v", want, names)
		}
	}
}
