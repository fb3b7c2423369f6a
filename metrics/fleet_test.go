package metrics

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/cache"
	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/rest"
	"github.com/disgoorg/snowflake/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// fleet is a runtime on a simulator, with its metrics and admin handler
// served on a loopback test server.
type fleet struct {
	s   *discordtest.Server
	rt  *runtime.Runtime
	m   *Metrics
	reg *prometheus.Registry
	srv *httptest.Server
}

func nopBot(int) runtime.Bot {
	return runtime.BotFunc(func(context.Context, *shardgroup.Group) error { return nil })
}

// startFleet runs a fleet of the simulator's recommended shard count in
// clusters, with every disgo cache on, and waits until it is ready.
// Cleanup stops it.
func startFleet(t *testing.T, s *discordtest.Server, clusters int, opts HandlerOptions) *fleet {
	t.Helper()
	cfg := runtime.Config{
		Token: runtime.Token(s.Token()), Bot: nopBot, GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		IdentifyInterval: s.IdentifyWindow(), Clusters: clusters,
		ClientOptions: []bot.ConfigOpt{bot.WithCacheConfigOpts(cache.WithCaches(cache.FlagsAll))},
	}
	rt, err := runtime.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	m, err := Register(rt, reg)
	if err != nil {
		t.Fatal(err)
	}
	f := &fleet{s: s, rt: rt, m: m, reg: reg}
	f.srv = httptest.NewServer(m.Handler(opts))
	go rt.Run(context.Background())
	t.Cleanup(func() {
		f.srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := rt.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if <-rt.Done(); rt.Err() != nil {
			t.Errorf("Run: %v", rt.Err())
		}
	})
	select {
	case <-rt.Ready():
	case <-rt.Done():
		t.Fatalf("Run: %v", rt.Err())
	case <-time.After(20 * time.Second):
		t.Fatal("fleet not ready")
	}
	return f
}

// get fetches a path of the admin handler.
func (f *fleet) get(t *testing.T, path string) (int, string) {
	t.Helper()
	return f.do(t, http.MethodGet, path, "", "")
}

func (f *fleet) do(t *testing.T, method, path, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// scrape reads /metrics with the Prometheus text parser.
func (f *fleet) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := f.get(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// sum adds the samples of a family whose labels include want.
func sum(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	var total float64
	fam := fams[name]
	if fam == nil {
		return 0
	}
	for _, m := range fam.GetMetric() {
		if !hasLabels(m, want) {
			continue
		}
		switch {
		case m.Counter != nil:
			total += m.GetCounter().GetValue()
		case m.Gauge != nil:
			total += m.GetGauge().GetValue()
		case m.Histogram != nil:
			total += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return total
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	for k, v := range want {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == k && l.GetValue() == v {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// series counts the series of the fleet's own families.
func series(fams map[string]*dto.MetricFamily) int {
	n := 0
	for name, fam := range fams {
		if strings.HasPrefix(name, "fleet_") {
			n += len(fam.GetMetric())
		}
	}
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	// Generous: a scrape of a thousand guilds is itself work, and a loaded
	// machine slows both sides.
	const bound = time.Minute
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached in %s", what, bound)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestScrapeMatchesSimulator(t *testing.T) {
	const guilds, shards, events = 1000, 4, 10_000
	s := discordtest.NewServer(discordtest.WithGuilds(guilds), discordtest.WithRecommendedShards(shards),
		discordtest.WithMaxConcurrency(shards), discordtest.WithIdentifyWindow(time.Millisecond),
		discordtest.WithRouteRateLimit(1000, 20*time.Millisecond))
	defer s.Close()
	f := startFleet(t, s, 2, HandlerOptions{})

	// Every guild has arrived and every dispatch is counted.
	caught := func(fams map[string]*dto.MetricFamily) bool {
		return sum(fams, "fleet_gateway_events_total", nil) == float64(s.Stats().TotalEventsSent()) &&
			sum(fams, "fleet_guilds", nil) == guilds
	}
	var before map[string]*dto.MetricFamily
	waitFor(t, "guilds loaded", func() bool { before = f.scrape(t); return caught(before) })

	// 10,000 events to 1,000 guilds, and dispatches the package does not
	// know by name.
	if _, err := s.Load(t.Context(), discordtest.Load{Events: events, Guilds: guilds}); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		g := s.GuildID(i)
		if _, err := s.Dispatch(g, fmt.Sprintf("CUSTOM_EVENT_%d", i), `{"guild_id":"`+strconv.FormatUint(g, 10)+`"}`); err != nil {
			t.Fatal(err)
		}
	}
	// 429s: two of scope user and one shared, which disgo retries.
	const route = "POST /channels/{id}/messages"
	s.FailNextREST(route, http.StatusTooManyRequests, 2)
	s.SharedRateLimitNext(route, 1)
	// A REST client on the fleet's shared limiter, as every cluster's is.
	rc := rest.NewClient(s.Token(), rest.WithURL(s.RESTURL()), f.rt.RESTLimiter().ConfigOpt())
	defer rc.Close(context.Background())
	channels := rest.NewChannels(rc)
	for i := range 3 {
		if _, err := channels.CreateMessage(snowflake.ID(s.ChannelID(i, 0)), discord.MessageCreate{Content: "hi"}); err != nil {
			t.Fatalf("CreateMessage: %v", err)
		}
	}

	// Bus requests by command and outcome.
	fc := runtime.NewClient(f.rt.Bus())
	if _, err := fc.Workers(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := fc.FetchGuild(t.Context(), snowflake.ID(s.GuildID(0))); err != nil {
		t.Fatal(err)
	}

	var fams map[string]*dto.MetricFamily
	waitFor(t, "events counted", func() bool { fams = f.scrape(t); return caught(fams) })
	if got := sum(fams, "fleet_bus_requests_total", map[string]string{"command": "workers", "outcome": "ok"}); got != 1 {
		t.Fatalf("fleet_bus_requests_total{command=workers,outcome=ok} %v, want 1", got)
	}
	// fetch_guild to the admiral, which asks the owning cluster.
	if got := sum(fams, "fleet_bus_requests_total", map[string]string{"command": "fetch_guild"}); got != 2 {
		t.Fatalf("fleet_bus_requests_total{command=fetch_guild} %v, want 2", got)
	}
	st := s.Stats()
	t.Logf("simulator sent %d events; %d series before the load, %d after", st.TotalEventsSent(), series(before), series(fams))

	// Shards by state match the simulator's connections.
	if got := sum(fams, "fleet_shards", map[string]string{"state": "ready"}); got != float64(st.OpenConnections) || got != shards {
		t.Fatalf("fleet_shards{state=ready} %v, simulator has %d open connections", got, st.OpenConnections)
	}
	if got := sum(fams, "fleet_shards", nil); got != shards {
		t.Fatalf("fleet_shards adds up to %v, want %d", got, shards)
	}
	// 429s match the simulator's, by scope.
	var limited int
	for _, n := range st.REST.RateLimited {
		limited += n
	}
	if got := sum(fams, "fleet_rest_rate_limited_total", nil); got != float64(limited) || limited != 3 {
		t.Fatalf("fleet_rest_rate_limited_total %v, simulator answered %d 429s (%v)", got, limited, st.REST.RateLimited)
	}
	for scope, n := range st.REST.RateLimited {
		if got := sum(fams, "fleet_rest_rate_limited_total", map[string]string{"scope": scope}); got != float64(n) {
			t.Fatalf("scope %s: %v 429s counted, simulator sent %d", scope, got, n)
		}
	}
	if got := sum(fams, "fleet_rest_requests_total", map[string]string{"status": "429", "route": "/channels/{channel.id}/messages"}); got != 3 {
		t.Fatalf("fleet_rest_requests_total{status=429} %v, want 3", got)
	}
	if got := sum(fams, "fleet_identifies_total", nil); got != shards {
		t.Fatalf("fleet_identifies_total %v, want %d", got, shards)
	}
	// The start-up is over: every shard ready, nothing left to wait for.
	for name, want := range map[string]float64{"fleet_startup_shards_ready": shards, "fleet_startup_shards": shards,
		"fleet_startup_identify_window": 1, "fleet_startup_identify_windows": 1, "fleet_startup_eta_seconds": 0,
		"fleet_startup_late_shards": 0} {
		if got := sum(fams, name, nil); got != want {
			t.Fatalf("%s %v, want %v", name, got, want)
		}
	}

	// Labels stay bounded: the load added at most MESSAGE_CREATE and
	// other per shard, the whole fleet has a few series per shard, and no
	// label holds an ID.
	const eventsTotal = "fleet_gateway_events_total"
	if grew := len(fams[eventsTotal].GetMetric()) - len(before[eventsTotal].GetMetric()); grew > 2*shards {
		t.Fatalf("the load added %d series to %s", grew, eventsTotal)
	}
	if n := series(fams); n > 30*shards {
		t.Fatalf("%d series for %d shards", n, shards)
	}
	for _, m := range fams["fleet_gateway_events_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			switch l.GetName() {
			case "event":
				switch l.GetValue() {
				case "READY", "GUILD_CREATE", "MESSAGE_CREATE", other:
				default:
					t.Fatalf("event label %q", l.GetValue())
				}
			case "shard":
				if n, err := strconv.Atoi(l.GetValue()); err != nil || n < 0 || n >= shards {
					t.Fatalf("shard label %q", l.GetValue())
				}
			}
		}
	}
	if got := sum(fams, "fleet_gateway_events_total", map[string]string{"event": other}); got != 50 {
		t.Fatalf("%v events counted as other, want 50", got)
	}
	for name, fam := range fams {
		for _, m := range fam.GetMetric() {
			for _, l := range m.GetLabel() {
				if n, err := strconv.ParseUint(l.GetValue(), 10, 64); err == nil && n > 1<<22 {
					t.Fatalf("%s has an ID-like label %s=%q", name, l.GetName(), l.GetValue())
				}
			}
		}
	}
}

func TestHealthzFollowsAHeldShard(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(2),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	// Any resume that is still going on when /healthz looks counts as
	// an outage, so that the held shard shows at once.
	f := startFleet(t, s, 2, HandlerOptions{ResumeGrace: time.Nanosecond})
	var code int
	var body string
	waitFor(t, "healthy", func() bool { code, body = f.get(t, "/healthz"); return code == http.StatusOK })
	if !strings.Contains(body, "2 shards ready") {
		t.Fatalf("healthz body %q", body)
	}

	s.HoldShard(1) // drops its connection; its RESUME gets no answer
	waitFor(t, "unhealthy", func() bool { code, body = f.get(t, "/healthz"); return code == http.StatusServiceUnavailable })
	if !strings.Contains(body, "shard 1 (cluster 1)") || strings.Contains(body, "shard 0") {
		t.Fatalf("healthz body %q, want it to name shard 1 only", body)
	}
	t.Logf("held: %q", body)

	s.ReleaseShard(1)
	waitFor(t, "healthy again", func() bool { code, body = f.get(t, "/healthz"); return code == http.StatusOK })
	if got := sum(f.scrape(t), "fleet_resumes_total", map[string]string{"shard": "1"}); got != 1 {
		t.Fatalf("fleet_resumes_total{shard=1} %v, want 1", got)
	}
}

func TestStatusServesTheSnapshot(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(2),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	f := startFleet(t, s, 1, HandlerOptions{})
	var st runtime.Stats
	waitFor(t, "guilds loaded", func() bool {
		code, body := f.get(t, "/status")
		if code != http.StatusOK {
			t.Fatalf("/status: %d %s", code, body)
		}
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatalf("/status: %v\n%s", err, body)
		}
		return st.Guilds == 8
	})
	if st.Shards != 2 || len(st.Clusters) != 1 || len(st.Clusters[0].Shards) != 2 ||
		st.Clusters[0].Shards[1].State != shardgroup.StateReady {
		t.Fatalf("status %+v", st)
	}
	if p := st.Startup; p.Ready != 2 || p.Shards != 2 || p.Window != 1 || p.Windows != 1 || p.ETA != 0 || p.Elapsed <= 0 {
		t.Fatalf("status startup %+v, want 2 of 2 ready in one window", p)
	}
}
