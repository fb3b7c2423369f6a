package admin_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofleet/fleet/admin"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// fakeSource serves a fixed snapshot and counts the snapshots taken.
type fakeSource struct {
	st    runtime.Stats
	calls atomic.Int64
}

func (f *fakeSource) Stats() runtime.Stats {
	f.calls.Add(1)
	st := f.st
	st.Time = time.Now()
	return st
}

// sixShards is a fleet of 6 shards in 2 clusters: shard 4 resuming and
// shard 5 disconnected, and a failed service.
func sixShards() *fakeSource {
	shard := func(id int, s shardgroup.State) runtime.ShardStats {
		return runtime.ShardStats{ID: id, State: s, Latency: 42 * time.Millisecond, Guilds: 10 + id, Events: 100}
	}
	return &fakeSource{st: runtime.Stats{
		Uptime: 3*time.Hour + 5*time.Minute, Shards: 6, TotalShards: 6, ShardsReady: 4, Guilds: 75,
		Clusters: []runtime.ClusterStats{
			{ID: 0, State: shardgroup.StateReady, Uptime: time.Hour, Restarts: 0, Guilds: 33,
				Shards: []runtime.ShardStats{shard(0, shardgroup.StateReady), shard(1, shardgroup.StateReady), shard(2, shardgroup.StateReady)}},
			{ID: 1, State: shardgroup.StateResuming, Uptime: time.Minute, Restarts: 2, Guilds: 42,
				Shards: []runtime.ShardStats{shard(3, shardgroup.StateReady), shard(4, shardgroup.StateResuming), shard(5, shardgroup.StateDisconnected)}},
		},
		Services: []runtime.ServiceStats{{Name: "store", State: "ready", Uptime: time.Hour}, {Name: "<mod>", State: "failed", Restarts: 5}},
	}}
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(b)
}

// TestPageWithoutJavaScript reads the page as a browser without
// JavaScript shows it: everything is in the HTML.
func TestPageWithoutJavaScript(t *testing.T) {
	srv := httptest.NewServer(admin.StatusPage(sixShards(), admin.PageOptions{Title: "Bot status"}))
	defer srv.Close()
	res, body := get(t, srv.URL+"/")
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	if csp := res.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Fatalf("Content-Security-Policy %q", csp)
	}
	for _, want := range []string{
		"<title>Bot status</title>",
		"Partial outage: 2 of 6 shards not ready (shard 4 resuming, shard 5 disconnected).",
		`data-shard="4" data-state="resuming"`,
		`title="Shard 5: disconnected, latency 42 ms, 15 servers, 0.0 events/s"`,
		"<td>5</td><td>1</td>", // the table: shard 5 in cluster 1
		"2 restarts",
		"&lt;mod&gt;", // escaped
		"3h 5m",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if n := strings.Count(body, `class="tile `); n != 6 {
		t.Errorf("%d shard tiles, want 6", n)
	}
	if strings.Contains(body, `id="operator"`) || strings.Contains(body, "data-op=") {
		t.Error("the public page shows operator controls")
	}

	// The lookup works without JavaScript too: a GET form.
	_, body = get(t, srv.URL+"/?guild=81384788765712384")
	// (81384788765712384 >> 22) % 6 = 4
	if !strings.Contains(body, "Server 81384788765712384 is on shard 4 (cluster 1), which is resuming.") {
		t.Errorf("lookup answer missing:\n%s", body)
	}
	_, body = get(t, srv.URL+"/?guild=%3Cscript%3E")
	if !strings.Contains(body, "is not a server ID") || strings.Contains(body, "<script>") {
		t.Error("a bad lookup input is not refused, or is not escaped")
	}

	res, body = get(t, srv.URL+"/assets/page.css")
	if res.StatusCode != http.StatusOK || !strings.Contains(body, ".tile") {
		t.Fatalf("page.css: %d", res.StatusCode)
	}
	for _, path := range []string{"/assets/page.html", "/assets/", "/nothing"} {
		if res, _ := get(t, srv.URL+path); res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", path, res.StatusCode)
		}
	}
}

func TestPageControlsOnlyWithOperations(t *testing.T) {
	srv := httptest.NewServer(admin.StatusPage(sixShards(), admin.PageOptions{Operations: "../admin/"}))
	defer srv.Close()
	_, body := get(t, srv.URL+"/")
	if !strings.Contains(body, `data-operations="../admin/"`) || !strings.Contains(body, `<section id="operator" aria-labelledby="operator-h" hidden>`) {
		t.Fatal("the private page has no operator section (hidden until its script runs)")
	}
	if strings.Contains(body, `name="token"`) {
		t.Fatal("the token field has a name: a form submitted without the script would carry it")
	}
}

func TestStatusJSON(t *testing.T) {
	src := sixShards()
	srv := httptest.NewServer(admin.StatusPage(src, admin.PageOptions{MaxAge: time.Hour}))
	defer srv.Close()
	res, body := get(t, srv.URL+"/status.json")
	if res.StatusCode != http.StatusOK || res.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("status.json: %d, Cache-Control %q", res.StatusCode, res.Header.Get("Cache-Control"))
	}
	var v struct {
		Shards      int `json:"shards"`
		TotalShards int `json:"total_shards"`
		ShardsReady int `json:"shards_ready"`
		Clusters    []struct {
			ID       int    `json:"id"`
			State    string `json:"state"`
			Restarts int    `json:"restarts"`
			Shards   []struct {
				ID        int     `json:"id"`
				Cluster   int     `json:"cluster"`
				State     string  `json:"state"`
				LatencyMS float64 `json:"latency_ms"`
			} `json:"shards"`
		} `json:"clusters"`
		Services []struct{ Name, State string } `json:"services"`
	}
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatal(err)
	}
	if v.Shards != 6 || v.TotalShards != 6 || v.ShardsReady != 4 || len(v.Clusters) != 2 || len(v.Services) != 2 {
		t.Fatalf("status.json: %s", body)
	}
	if s := v.Clusters[1].Shards[2]; s.ID != 5 || s.Cluster != 1 || s.State != "disconnected" || s.LatencyMS != 42 {
		t.Fatalf("shard 5: %+v", s)
	}
	for _, secret := range []string{"memory", "rest", "bus", "users"} {
		if strings.Contains(body, `"`+secret+`":`) {
			t.Errorf("status.json carries %q, which the public page does not show", secret)
		}
	}
	// Readers share one snapshot within MaxAge (clamped to a second): at
	// most one more snapshot per second the reads took.
	began := time.Now()
	for range 20 {
		get(t, srv.URL+"/status.json")
		get(t, srv.URL+"/")
	}
	if n, most := src.calls.Load(), 1+int64(time.Since(began)/time.Second)+1; n > most {
		t.Fatalf("%d snapshots for 41 reads in %s, want at most %d", n, time.Since(began), most)
	}
}

func TestGuildLookupInput(t *testing.T) {
	srv := httptest.NewServer(admin.StatusPage(sixShards(), admin.PageOptions{}))
	defer srv.Close()
	cases := []struct{ input, want string }{
		{"81384788765712384", "is on shard 4 (cluster 1), which is resuming."},
		{" 81384788765712384 ", "is on shard 4 (cluster 1), which is resuming."},
		{"4503599656730624", "is on shard 5 (cluster 1), which is disconnected."}, // 16 digits, as the simulator makes them
		{"hello", "is not a server ID"},
		{"", "is not a server ID"},
		{"4194303", "is not a server ID"},              // before Discord's epoch
		{"18446744073709551616", "is not a server ID"}, // 2^64
		{"-81384788765712384", "is not a server ID"},
		{"8138478876571238.4", "is not a server ID"},
	}
	for _, tc := range cases {
		t.Run(tc.input, func(t *testing.T) {
			_, body := get(t, srv.URL+"/?guild="+url.QueryEscape(tc.input))
			if !strings.Contains(body, tc.want) {
				t.Fatalf("lookup of %q does not say %q", tc.input, tc.want)
			}
		})
	}
}
