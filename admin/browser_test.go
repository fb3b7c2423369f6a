package admin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	cdpruntime "github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/gofleet/fleet/admin"
	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/metrics"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// The browser tests drive a headless Chromium through the DevTools
// protocol. They need a Chromium (Debian: apt-get install chromium); set
// FLEET_CHROME to use another binary. In CI (CI=true) a missing browser
// fails them instead of skipping them. FLEET_SCREENSHOT_DIR keeps the
// screenshots there instead of in the test's temporary directory.

const adminToken = "correct-horse-battery-staple"

// chromePath finds the browser, or skips (fails in CI) saying how to run
// the tests.
func chromePath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("FLEET_CHROME"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	const how = "no Chromium found: install it (Debian: apt-get install chromium) or set FLEET_CHROME to a Chrome binary, " +
		"then run go test -run Browser -v ./admin/"
	if os.Getenv("CI") == "true" {
		t.Fatal(how + " (CI must run the browser tests: .ci/run installs chromium)")
	}
	t.Skip(how)
	return ""
}

// browser is a tab of the package's headless Chromium, and the console
// messages of that tab.
type browser struct {
	ctx context.Context // the tab's

	mu      sync.Mutex // guards console
	console []string   // errors, exceptions and browser log errors, in order
}

// chrome is the one Chromium the package's tests share, started by the
// first test that needs it and stopped by TestMain: starting a browser
// costs seconds, a tab little.
var chrome struct {
	once    sync.Once
	ctx     context.Context // the browser's: new tabs derive from it
	err     error
	stop    func() // cancels the browser and waits for its process to exit
	profile string
}

// startChrome starts the shared browser. Its whole life is bounded.
func startChrome(path string) {
	profile, err := os.MkdirTemp("", "fleet-admin-chromium-")
	if err != nil {
		chrome.err = err
		return
	}
	life, cancelLife := context.WithTimeout(context.Background(), 5*time.Minute)
	actx, cancelAlloc := chromedp.NewExecAllocator(life,
		chromedp.ExecPath(path),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Headless,
		chromedp.NoSandbox, // as root, Chromium has no sandbox
		chromedp.DisableGPU,
		chromedp.UserDataDir(profile), // new and empty
		chromedp.WindowSize(1280, 900),
		// The machine's network is closed: no background connections.
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-features", "Translate,MediaRouter,OptimizationHints"),
		chromedp.Flag("force-color-profile", "srgb"),
	)
	ctx, cancelBrowser := chromedp.NewContext(actx)
	chrome.ctx, chrome.profile = ctx, profile
	chrome.stop = func() {
		cancelBrowser()
		cancelAlloc() // waits for the browser process to exit
		cancelLife()
		os.RemoveAll(profile)
	}
	start, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	// Do with no action starts the browser; a timeout on it would bind
	// the browser's life to it, so the wait is bounded by a watchdog.
	done := make(chan error, 1)
	go func() { done <- chromedp.Do(ctx) }()
	select {
	case chrome.err = <-done:
	case <-start.Done():
		cancelBrowser()
		chrome.err = fmt.Errorf("Chromium did not start within a minute")
		<-done
	}
}

// stopChrome stops the shared browser, if a test started it.
func stopChrome() {
	if chrome.stop != nil {
		chrome.stop()
	}
}

// newBrowser opens a tab in the shared browser; Cleanup closes it.
func newBrowser(t *testing.T) *browser {
	t.Helper()
	path := chromePath(t)
	chrome.once.Do(func() { startChrome(path) })
	if chrome.err != nil {
		t.Fatalf("start Chromium (%s): %v", path, chrome.err)
	}
	ctx, cancelTab := chromedp.NewContext(chrome.ctx)
	t.Cleanup(cancelTab)
	b := &browser{ctx: ctx}
	if err := chromedp.Listen(ctx, b.record); err != nil {
		t.Fatalf("open a tab: %v", err)
	}
	return b
}

// record keeps the messages a person would see as errors in the console.
func (b *browser) record(ev any) {
	var msg string
	switch ev := ev.(type) {
	case *cdpruntime.EventConsoleAPICalled:
		if ev.Type == cdpruntime.ConsoleAPICalledTypeError || ev.Type == cdpruntime.ConsoleAPICalledTypeAssert {
			var parts []string
			for _, a := range ev.Args {
				parts = append(parts, string(a.Value)+a.Description)
			}
			msg = "console." + string(ev.Type) + ": " + strings.Join(parts, " ")
		}
	case *cdpruntime.EventExceptionThrown:
		msg = "exception: " + ev.ExceptionDetails.Text
		if ev.ExceptionDetails.Exception != nil {
			msg += " " + ev.ExceptionDetails.Exception.Description
		}
	case *cdplog.EventEntryAdded:
		if ev.Entry.Level == cdplog.EntryLevelError {
			msg = fmt.Sprintf("log (%s): %s %s", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL)
		}
	}
	if msg != "" {
		b.mu.Lock()
		b.console = append(b.console, msg)
		b.mu.Unlock()
	}
}

// consoleErrors returns the console errors so far, less those allowed.
func (b *browser) consoleErrors(allowed func(string) bool) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, m := range b.console {
		if allowed == nil || !allowed(m) {
			out = append(out, m)
		}
	}
	return out
}

func (b *browser) do(t *testing.T, what string, timeout time.Duration, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// js runs an expression in the page and returns its value.
func js[T any](t *testing.T, b *browser, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	return v
}

// waitText waits until the text of the first element matching sel
// contains want, and returns that text; it fails with what the page shows
// otherwise.
func (b *browser) waitText(t *testing.T, sel, want string, timeout time.Duration) string {
	t.Helper()
	q, _ := json.Marshal(sel)
	w, _ := json.Marshal(want)
	expr := fmt.Sprintf(`(() => { const e = document.querySelector(%s); return e && e.textContent.includes(%s) ? e.textContent : false })()`, q, w)
	ctx, cancel := context.WithTimeout(b.ctx, timeout)
	defer cancel()
	got, err := chromedp.Run(ctx, chromedp.Poll[string](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(timeout)))
	if err != nil {
		now := js[string](t, b, fmt.Sprintf(`(() => { const e = document.querySelector(%s); return e ? e.textContent : "(no element)" })()`, q))
		t.Fatalf("after %s, %s shows %q, want it to contain %q (%v)", timeout, sel, strings.TrimSpace(now), want, err)
	}
	return strings.Join(strings.Fields(got), " ")
}

// waitTrue waits until expr is true.
func (b *browser) waitTrue(t *testing.T, what, expr string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(timeout))); err != nil {
		t.Fatalf("%s, within %s: %v", what, timeout, err)
	}
}

// screenshot saves the full page as a PNG at the given width and prints
// its path.
func (b *browser) screenshot(t *testing.T, name string, width, height int64, mobile bool) {
	t.Helper()
	dir := os.Getenv("FLEET_SCREENSHOT_DIR")
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	opts := []chromedp.EmulateViewportOption{chromedp.EmulateScale(1)}
	if mobile {
		opts = append(opts, chromedp.EmulateMobile)
	}
	// A screenshot lays the page out at the viewport's new width first.
	b.do(t, "set the viewport", 10*time.Second, chromedp.EmulateViewport(width, height, opts...))
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(dir, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot (%dpx wide): %s", width, path)
}

// testFleet is a fleet on the simulator, behind metrics.Handler with an
// admin token; Cleanup stops both.
type testFleet struct {
	s        *discordtest.Server
	rt       *runtime.Runtime
	srv      *httptest.Server
	restarts chan int // clusters restarted by EventClusterRestarted
}

func startTestFleet(t *testing.T, shards, clusters int) *testFleet {
	t.Helper()
	s := discordtest.NewServer(discordtest.WithGuilds(shards*12), discordtest.WithRecommendedShards(shards),
		discordtest.WithMaxConcurrency(shards), discordtest.WithIdentifyWindow(10*time.Millisecond),
		discordtest.WithHeartbeatInterval(500*time.Millisecond)) // so latencies show
	t.Cleanup(s.Close)
	rt, err := runtime.New(runtime.Config{
		Token: runtime.Token(s.Token()), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		IdentifyInterval: s.IdentifyWindow(), Clusters: clusters,
		Bot: func(int) runtime.Bot { return nopBot{} },
	})
	if err != nil {
		t.Fatal(err)
	}
	f := &testFleet{s: s, rt: rt, restarts: make(chan int, 16)}
	rt.Subscribe(func(e runtime.Event) {
		if e, ok := e.(runtime.ClusterRestarted); ok {
			select {
			case f.restarts <- e.Cluster:
			default:
			}
		}
	})
	f.srv = httptest.NewServer(metrics.Handler(rt, nil, metrics.HandlerOptions{AdminToken: adminToken}))
	go rt.Run(context.Background())
	t.Cleanup(func() {
		f.srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
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
	case <-time.After(30 * time.Second):
		t.Fatal("the fleet was not ready within 30 s")
	}
	return f
}

type nopBot struct{}

func (nopBot) Setup(context.Context, *shardgroup.Group) error { return nil }

// TestBrowserStatusPage loads the private page of a fleet of 16 shards in
// 4 clusters and checks what a person sees.
func TestBrowserStatusPage(t *testing.T) {
	b := newBrowser(t)
	f := startTestFleet(t, 16, 4)
	page := f.srv.URL + "/page/"

	b.do(t, "load the page", 20*time.Second, chromedp.Navigate(page))
	b.waitText(t, "#live", "Live", 10*time.Second)

	// Every shard has a tile, in its cluster, labelled with its state.
	if n := js[int](t, b, `document.querySelectorAll("#clusters .tile").length`); n != 16 {
		t.Fatalf("%d shard tiles, want 16", n)
	}
	if n := js[int](t, b, `document.querySelectorAll("#clusters section.cluster").length`); n != 4 {
		t.Fatalf("%d clusters, want 4", n)
	}
	b.waitText(t, "#summary", "All systems operational: 16 of 16 shards ready.", 10*time.Second)
	for c := range 4 {
		if n := js[int](t, b, fmt.Sprintf(`document.querySelectorAll("#cluster-%d .tile").length`, c)); n != 4 {
			t.Fatalf("cluster %d has %d tiles, want 4", c, n)
		}
	}
	b.waitText(t, `[data-shard="5"] .lbl`, "ready", 5*time.Second)

	// A shard the simulator holds turns non-ready within 2 s, and its
	// label says so (not only its colour).
	const held = 5
	f.s.HoldShard(held)
	b.waitTrue(t, "shard 5's tile leaves ready",
		`(() => { const e = document.querySelector('[data-shard="5"] .lbl'); return !!e && !e.textContent.includes("ready") })()`, 2*time.Second)
	label := b.waitText(t, `[data-shard="5"] .lbl`, "", time.Second)
	summary := b.waitText(t, "#summary", "Partial outage: 1 of 16 shards not ready (shard 5", 2*time.Second)
	t.Logf("held shard 5: tile %q; %q", label, summary)

	// Its details: latency, servers and events per second.
	b.do(t, "select shard 5", 5*time.Second, chromedp.Click(chromedp.CSS(`[data-shard="5"]`)))
	details := b.waitText(t, "#details", "Shard 5", 5*time.Second)
	for _, want := range []string{"Latency", "Servers", "Events per second", "Cluster1"} {
		if !strings.Contains(strings.ReplaceAll(details, " ", ""), strings.ReplaceAll(want, " ", "")) {
			t.Errorf("the details panel %q lacks %q", details, want)
		}
	}
	// The keyboard reaches every tile: Enter on a focused tile shows its details.
	b.do(t, "focus shard 6 and press Enter", 5*time.Second,
		chromedp.Focus(chromedp.CSS(`[data-shard="6"]`)), chromedp.KeyEvent("\r"))
	b.waitText(t, "#details", "Shard 6", 5*time.Second)
	b.do(t, "select shard 5 again", 5*time.Second, chromedp.Click(chromedp.CSS(`[data-shard="5"]`)))
	b.waitText(t, "#details", "Shard 5", 5*time.Second)
	b.screenshot(t, "status-desktop-shard5-held", 1280, 900, false)
	b.screenshot(t, "status-phone-shard5-held", 390, 844, true)
	b.do(t, "back to desktop", 10*time.Second, chromedp.EmulateViewport(1280, 900))

	f.s.ReleaseShard(held)
	b.waitText(t, `[data-shard="5"] .lbl`, "ready", 30*time.Second)
	b.waitText(t, "#summary", "All systems operational", 5*time.Second)

	t.Run("guild lookup", func(t *testing.T) {
		js[bool](t, b, `(document.getElementById("guild").value = "") === ""`)
		b.do(t, "type a bad ID", 10*time.Second,
			chromedp.SendKeys(chromedp.CSS("#guild"), "not-an-id"),
			chromedp.Click(chromedp.CSS(`#find button[type=submit]`)))
		b.waitText(t, "#find-result", `"not-an-id" is not a server ID`, 5*time.Second)

		guild := f.s.GuildID(7)
		shard := int((guild >> 22) % 16)
		js[bool](t, b, `(document.getElementById("guild").value = "") === ""`)
		b.do(t, "type a server ID", 10*time.Second,
			chromedp.SendKeys(chromedp.CSS("#guild"), fmt.Sprint(guild)),
			chromedp.Click(chromedp.CSS(`#find button[type=submit]`)))
		cluster := -1
		for _, c := range f.rt.Clusters() {
			for _, in := range c.Shards {
				if in.ID == shard {
					cluster = c.ID
				}
			}
		}
		want := fmt.Sprintf("Server %d is on shard %d (cluster %d), which is ready.", guild, shard, cluster)
		b.waitText(t, "#find-result", want, 5*time.Second)
	})

	t.Run("restart", func(t *testing.T) {
		restart := func() {
			t.Helper()
			b.do(t, "press Restart of cluster 1", 10*time.Second,
				chromedp.Click(chromedp.CSS(`#cluster-1 button[data-op="restart"]`)),
				chromedp.WaitVisible(chromedp.CSS("#confirm-ok")))
			b.waitText(t, "#confirm-h", "Restart cluster 1?", 5*time.Second)
			b.do(t, "confirm", 10*time.Second, chromedp.Click(chromedp.CSS("#confirm-ok")))
		}
		// Escape cancels the confirmation: nothing happens.
		b.do(t, "press Restart of cluster 1, then Escape", 10*time.Second,
			chromedp.Click(chromedp.CSS(`#cluster-1 button[data-op="restart"]`)),
			chromedp.WaitVisible(chromedp.CSS("#confirm-ok")),
			chromedp.KeyEvent(kb.Escape))
		b.waitTrue(t, "the dialog closes", `!document.getElementById("confirm").open`, 5*time.Second)
		if n := js[int](t, b, `document.querySelectorAll("#ops li:not(.none)").length`); n != 0 {
			t.Fatalf("a cancelled confirmation started %d operations", n)
		}

		// Without a token: refused, nothing restarted.
		restart()
		b.waitText(t, "#ops li", "refused: enter the admin token first", 5*time.Second)
		if n := js[bool](t, b, `document.activeElement.id === "token"`); !n {
			t.Error("the refusal does not move the focus to the token field")
		}

		// With a wrong token: refused by the server.
		b.do(t, "enter a wrong token", 10*time.Second,
			chromedp.SendKeys(chromedp.CSS("#token"), "wrong"),
			chromedp.Click(chromedp.CSS(`#token-form button[type=submit]`)))
		restart()
		b.waitText(t, "#ops li", "refused: the admin token was refused (401)", 10*time.Second)
		select {
		case c := <-f.restarts:
			t.Fatalf("cluster %d restarted without the right token", c)
		default:
		}

		// With the token: done, and the page counts the restart.
		b.do(t, "enter the token", 10*time.Second,
			chromedp.SendKeys(chromedp.CSS("#token"), adminToken),
			chromedp.Click(chromedp.CSS(`#token-form button[type=submit]`)))
		b.waitText(t, "#token-state", "Token entered", 5*time.Second)
		if v := js[string](t, b, `document.getElementById("token").value`); v != "" {
			t.Error("the token stays in the input field after it was entered")
		}
		restart()
		b.waitText(t, "#ops li", "Restart of cluster 1: done after", 30*time.Second)
		select {
		case c := <-f.restarts:
			if c != 1 {
				t.Fatalf("cluster %d restarted, want 1", c)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the restart reported done, but the runtime reported no restart")
		}
		b.waitText(t, `#cluster-1 .cmeta`, "1 restarts", 5*time.Second)
		b.screenshot(t, "status-desktop-after-restart", 1280, 900, false)

		// The token is nowhere a page can keep it.
		kept := js[string](t, b, `location.href + JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie + document.documentElement.outerHTML`)
		if strings.Contains(kept, adminToken) {
			t.Error("the admin token is in the URL, storage, cookies or the DOM")
		}
	})

	// The only error a person sees in the console is the refused request
	// with the wrong token.
	refused := func(m string) bool {
		return strings.HasPrefix(m, "log (network):") && strings.Contains(m, "401") && strings.Contains(m, "/admin/clusters/1/restart")
	}
	if errs := b.consoleErrors(refused); len(errs) > 0 {
		t.Errorf("console errors:\n%s", strings.Join(errs, "\n"))
	}
}

// TestBrowserLongOperation follows an operation answered with 202: the
// page polls its URL, shows its progress, then its result.
func TestBrowserLongOperation(t *testing.T) {
	b := newBrowser(t)
	var finished atomic.Bool
	var polls atomic.Int64
	mux := http.NewServeMux()
	mux.Handle("/page/", http.StripPrefix("/page", admin.StatusPage(sixShards(), admin.PageOptions{Operations: "../admin/"})))
	authorized := func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("Authorization") != "Bearer "+adminToken {
			w.WriteHeader(http.StatusUnauthorized)
			return false
		}
		return true
	}
	mux.HandleFunc("POST /admin/reshard", func(w http.ResponseWriter, r *http.Request) {
		if !authorized(w, r) {
			return
		}
		var body struct{ Shards, Clusters int }
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Shards != 8 || body.Clusters != 2 {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error": "body %+v, %v"}`, body, err)
			return
		}
		w.Header().Set("Location", "/admin/operations/op-1")
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprint(w, `{"id": "op-1", "state": "running"}`)
	})
	mux.HandleFunc("GET /admin/operations/op-1", func(w http.ResponseWriter, r *http.Request) {
		if !authorized(w, r) {
			return
		}
		polls.Add(1)
		if finished.Load() {
			fmt.Fprint(w, `{"id": "op-1", "state": "done", "result": "8 shards in 2 clusters"}`)
			return
		}
		fmt.Fprint(w, `{"id": "op-1", "state": "running", "progress": "3 of 8 shards ready"}`)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	b.do(t, "load the page", 20*time.Second, chromedp.Navigate(srv.URL+"/page/"))
	b.waitText(t, "#live", "Live", 10*time.Second)
	b.do(t, "enter the token and reshard", 10*time.Second,
		chromedp.SendKeys(chromedp.CSS("#token"), adminToken),
		chromedp.Click(chromedp.CSS(`#token-form button[type=submit]`)),
		chromedp.SendKeys(chromedp.CSS("#rs-shards"), "8"),
		chromedp.SendKeys(chromedp.CSS("#rs-clusters"), "2"),
		chromedp.Click(chromedp.CSS(`#reshard-form button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS("#confirm-ok")))
	b.waitText(t, "#confirm-text", "8 shards in 2 clusters", 5*time.Second)
	b.do(t, "confirm", 10*time.Second, chromedp.Click(chromedp.CSS("#confirm-ok")))
	b.waitText(t, "#ops li", "3 of 8 shards ready", 10*time.Second)
	finished.Store(true)
	got := b.waitText(t, "#ops li", "done", 10*time.Second)
	if !strings.Contains(got, "8 shards in 2 clusters") || polls.Load() < 2 {
		t.Fatalf("operation shows %q after %d polls", got, polls.Load())
	}
	if errs := b.consoleErrors(nil); len(errs) > 0 {
		t.Errorf("console errors:\n%s", strings.Join(errs, "\n"))
	}
}

// TestBrowserWithoutJavaScript reads the page with scripts off: the
// server-rendered page shows every shard with its state, the table, and
// answers the lookup through its form.
func TestBrowserWithoutJavaScript(t *testing.T) {
	b := newBrowser(t)
	mux := http.NewServeMux()
	mux.Handle("/page/", http.StripPrefix("/page", admin.StatusPage(sixShards(), admin.PageOptions{Operations: "../admin/"})))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	noScripts := chromedp.Action[chromedp.Void](func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		_, err := cdp.Call(ctx, tg, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true})
		return chromedp.Void{}, err
	})
	b.do(t, "load the page without scripts", 20*time.Second, noScripts, chromedp.Navigate(srv.URL+"/page/"))
	if got := b.waitText(t, "#summary", "Partial outage: 2 of 6 shards not ready", 5*time.Second); !strings.Contains(got, "shard 5 disconnected") {
		t.Errorf("summary %q", got)
	}
	b.waitText(t, "#live", "Reload the page for newer figures.", time.Second)
	if n := js[int](t, b, `document.querySelectorAll("#clusters .tile").length`); n != 6 {
		t.Fatalf("%d tiles, want 6", n)
	}
	b.waitText(t, `[data-shard="5"] .lbl`, "disconnected", time.Second)
	if n := js[int](t, b, `document.querySelectorAll("#shard-table tbody tr").length`); n != 6 {
		t.Fatalf("%d rows in the shard table, want 6", n)
	}
	if visible := js[bool](t, b, `!document.getElementById("operator").hidden`); visible {
		t.Fatal("the operator controls show without the script that runs them")
	}
	b.do(t, "type a server ID", 10*time.Second, chromedp.SendKeys(chromedp.CSS("#guild"), "81384788765712384"))
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.WaitEvent(page.LoadEventFired, nil, chromedp.Click(chromedp.CSS(`#find button[type=submit]`)))); err != nil {
		t.Fatalf("submit the lookup: %v", err)
	}
	b.waitText(t, "#find-result", "Server 81384788765712384 is on shard 4 (cluster 1), which is resuming.", 10*time.Second)
	if u := js[string](t, b, `location.search`); u != "?guild=81384788765712384" {
		t.Fatalf("the lookup went to %q", u)
	}
	b.screenshot(t, "status-no-javascript", 1280, 900, false)
	if errs := b.consoleErrors(nil); len(errs) > 0 {
		t.Errorf("console errors:\n%s", strings.Join(errs, "\n"))
	}
}
