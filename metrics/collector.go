package metrics

import (
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gofleet/fleet/restproxy"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// shardStates are the states fleet_shards always reports, zeros included,
// so that a state's series does not vanish when no shard is in it.
var shardStates = [...]shardgroup.State{shardgroup.StateIdle, shardgroup.StateConnecting, shardgroup.StateIdentifying,
	shardgroup.StateResuming, shardgroup.StateReady, shardgroup.StateDisconnected, shardgroup.StateStopped}

// fleetCollector reads the attached runtime at scrape time: what is a
// state rather than an event is not counted on the hot path at all.
type fleetCollector struct {
	rt      atomic.Pointer[runtime.Runtime]
	limiter atomic.Pointer[restproxy.Limiter] // AttachLimiter's; an attached runtime's wins
	invalid atomic.Int64                      // the limiter hook's last invalid-request count

	shards, latency, guilds, cache                     *prometheus.Desc
	startReady, startShards, startWindow, startWindows *prometheus.Desc
	startETA, startLate                                *prometheus.Desc
	restInvalid, restBuckets, restQueued, restInFlight *prometheus.Desc
	heartbeat                                          prometheus.Histogram

	mu   sync.Mutex    // guards seen
	seen map[int]int64 // shard -> the latency last put in heartbeat
}

func newFleetCollector() *fleetCollector {
	return &fleetCollector{
		shards: prometheus.NewDesc("fleet_shards", "Shards by state.", []string{"state"}, nil),
		latency: prometheus.NewDesc("fleet_shard_heartbeat_latency_seconds",
			"Last heartbeat round trip, by shard (shards without one yet are left out).", []string{"shard"}, nil),
		guilds: prometheus.NewDesc("fleet_guilds", "Guilds in a cluster's cache, by cluster.", []string{"cluster"}, nil),
		cache: prometheus.NewDesc("fleet_cache_entries", "Entries of a cluster's disgo caches, by cluster and cache.",
			[]string{"cluster", "cache"}, nil),
		startReady:   prometheus.NewDesc("fleet_startup_shards_ready", "Shards of the start-up ready.", nil, nil),
		startShards:  prometheus.NewDesc("fleet_startup_shards", "Shards the start-up starts: the runtime's.", nil, nil),
		startWindow:  prometheus.NewDesc("fleet_startup_identify_window", "Identify window the start-up has reached.", nil, nil),
		startWindows: prometheus.NewDesc("fleet_startup_identify_windows", "Identify windows the start-up needs: shards / max_concurrency, rounded up.", nil, nil),
		startETA: prometheus.NewDesc("fleet_startup_eta_seconds",
			"Time the identify queue needs at least for the shards not ready yet; 0 once every shard is.", nil, nil),
		startLate: prometheus.NewDesc("fleet_startup_late_shards",
			"Shards that sent IDENTIFY more than two identify windows ago and are not ready yet.", nil, nil),
		restInvalid: prometheus.NewDesc("fleet_rest_invalid_requests",
			"REST 401, 403 and non-shared 429 responses in Discord's invalid-request window (a ban comes at 10,000).", nil, nil),
		restBuckets:  prometheus.NewDesc("fleet_rest_limiter_buckets", "Rate-limit buckets the shared REST limiter tracks.", nil, nil),
		restQueued:   prometheus.NewDesc("fleet_rest_limiter_queued_requests", "REST requests waiting in the shared limiter.", nil, nil),
		restInFlight: prometheus.NewDesc("fleet_rest_limiter_in_flight_requests", "REST requests sent and not answered yet.", nil, nil),
		heartbeat: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fleet_heartbeat_latency_seconds",
			Help:    "Heartbeat round trips of every shard, one sample per new measurement seen at scrape time.",
			Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5},
		}),
		seen: map[int]int64{},
	}
}

func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.shards, c.latency, c.guilds, c.cache, c.restInvalid,
		c.restBuckets, c.restQueued, c.restInFlight, c.startReady, c.startShards, c.startWindow, c.startWindows,
		c.startETA, c.startLate} {
		ch <- d
	}
	c.heartbeat.Describe(ch)
}

func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	var byState [len(shardStates)]int
	rt := c.rt.Load()
	if rt != nil {
		c.collectGroups(ch, rt, byState[:])
		c.collectStartup(ch, rt.Startup())
	}
	for i, st := range shardStates {
		ch <- prometheus.MustNewConstMetric(c.shards, prometheus.GaugeValue, float64(byState[i]), st.String())
	}
	c.heartbeat.Collect(ch)
	c.collectREST(ch, rt)
}

// collectStartup reports the start-up's progress.
func (c *fleetCollector) collectStartup(ch chan<- prometheus.Metric, p runtime.StartupProgress) {
	for _, m := range []struct {
		d *prometheus.Desc
		v float64
	}{
		{c.startReady, float64(p.Ready)}, {c.startShards, float64(p.Shards)},
		{c.startWindow, float64(p.Window)}, {c.startWindows, float64(p.Windows)},
		{c.startETA, p.ETA.Seconds()}, {c.startLate, float64(len(p.Late))},
	} {
		ch <- prometheus.MustNewConstMetric(m.d, prometheus.GaugeValue, m.v)
	}
}

// collectREST reports the REST limiter's gauges: the attached runtime's
// limiter, or else AttachLimiter's.
func (c *fleetCollector) collectREST(ch chan<- prometheus.Metric, rt *runtime.Runtime) {
	invalid := float64(c.invalid.Load())
	l := c.limiter.Load()
	if rt != nil {
		l = rt.RESTLimiter()
	}
	if l != nil {
		st := l.Stats()
		invalid = float64(st.InvalidRequests) // the window slides between hook calls
		ch <- prometheus.MustNewConstMetric(c.restBuckets, prometheus.GaugeValue, float64(st.Buckets))
		ch <- prometheus.MustNewConstMetric(c.restQueued, prometheus.GaugeValue, float64(st.Queued))
		ch <- prometheus.MustNewConstMetric(c.restInFlight, prometheus.GaugeValue, float64(st.InFlight))
	}
	ch <- prometheus.MustNewConstMetric(c.restInvalid, prometheus.GaugeValue, invalid)
}

// collectGroups reports the groups' shards and caches, counts shards by
// state into byState and feeds the heartbeat histogram.
func (c *fleetCollector) collectGroups(ch chan<- prometheus.Metric, rt *runtime.Runtime, byState []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// A metric reported twice fails the whole scrape: report each cluster
	// and shard once, whatever a restart or reshard under way does.
	clusters, shards := map[int]bool{}, map[int]bool{}
	for _, cl := range rt.Clusters() {
		if clusters[cl.ID] {
			continue
		}
		clusters[cl.ID] = true
		cluster := strconv.Itoa(cl.ID)
		for _, sh := range cl.Shards {
			if shards[sh.ID] {
				continue
			}
			shards[sh.ID] = true
			if i := int(sh.State); i >= 0 && i < len(byState) {
				byState[i]++
			}
			if sh.Latency <= 0 {
				continue
			}
			ch <- prometheus.MustNewConstMetric(c.latency, prometheus.GaugeValue, sh.Latency.Seconds(), strconv.Itoa(sh.ID))
			if c.seen[sh.ID] != int64(sh.Latency) {
				c.seen[sh.ID] = int64(sh.Latency)
				c.heartbeat.Observe(sh.Latency.Seconds())
			}
		}
		ch <- prometheus.MustNewConstMetric(c.guilds, prometheus.GaugeValue, float64(cl.Guilds), cluster)
		for _, e := range []struct {
			name string
			n    int
		}{
			{"guilds", cl.Cache.Guilds},
			{"channels", cl.Cache.Channels},
			{"roles", cl.Cache.Roles},
			{"members", cl.Cache.Members},
			{"presences", cl.Cache.Presences},
			{"voice_states", cl.Cache.VoiceStates},
			{"messages", cl.Cache.Messages},
			{"emojis", cl.Cache.Emojis},
			{"stickers", cl.Cache.Stickers},
		} {
			ch <- prometheus.MustNewConstMetric(c.cache, prometheus.GaugeValue, float64(e.n), cluster, e.name)
		}
	}
}
