package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gofleet/fleet/restproxy"
)

// NewREST creates only the REST collectors (fleet_rest_*), for a process
// that runs a restproxy Limiter without a fleet, such as cmd/restproxy:
// the same series a fleet reports, and no gateway ones. Feed them with
// RESTHooks in the limiter's Config, then AttachLimiter for its gauges.
// The Go and process collectors are registered as New does.
func NewREST(reg prometheus.Registerer, opts ...Option) (*Metrics, error) {
	return New(reg, append(opts, func(c *config) error { c.restOnly = true; return nil })...)
}

// AttachLimiter makes the REST gauges (buckets, queued and in-flight
// requests, invalid requests) read l when no runtime is attached; nil
// detaches.
func (m *Metrics) AttachLimiter(l *restproxy.Limiter) { m.fleet.limiter.Store(l) }

// restGauges reports the REST limiter's gauges of a fleetCollector, alone.
type restGauges struct{ c *fleetCollector }

func (g restGauges) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{g.c.restInvalid, g.c.restBuckets, g.c.restQueued, g.c.restInFlight} {
		ch <- d
	}
}

func (g restGauges) Collect(ch chan<- prometheus.Metric) { g.c.collectREST(ch, nil) }
