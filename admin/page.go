package admin

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gofleet/fleet/runtime"
)

//go:embed assets
var assets embed.FS

var pageTemplate = template.Must(template.New("page.html").Funcs(template.FuncMap{
	"tone":     tone,
	"symbol":   symbol,
	"duration": formatDuration,
	"rate":     formatRate,
	"latency":  formatLatency,
	"clock":    func(t time.Time) string { return t.UTC().Format("15:04:05 UTC") },
}).ParseFS(assets, "assets/page.html"))

// Source is what the page shows; *runtime.Runtime is one.
type Source interface {
	Stats() runtime.Stats
}

var _ Source = (*runtime.Runtime)(nil)

// PageOptions configure StatusPage. The zero value serves the public
// page: no controls.
type PageOptions struct {
	// Title heads the page (default "Fleet status").
	Title string
	// Operations is the URL of the admin operations, the /admin/ tree of
	// metrics.Handler, relative to the page's URL (as "../admin/") or
	// absolute. Empty: the page shows no operator controls, as it should
	// where it is public.
	Operations string
	// MaxAge is how long one snapshot of the fleet serves every reader
	// (default 250 ms; at most 1 s, so the page stays live).
	MaxAge time.Duration
	// Logger records pages that could not be written (default: no logs).
	Logger *slog.Logger
}

// StatusPage returns the status page handler for src (see the package
// documentation). It starts no goroutine and binds nothing. It panics if
// src is nil.
func StatusPage(src Source, opts PageOptions) http.Handler {
	if src == nil {
		panic("admin: StatusPage with a nil Source")
	}
	if opts.Title == "" {
		opts.Title = "Fleet status"
	}
	if opts.MaxAge <= 0 {
		opts.MaxAge = 250 * time.Millisecond
	}
	opts.MaxAge = min(opts.MaxAge, time.Second)
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	p := &page{src: src, opts: opts, log: opts.Logger.With("component", "status_page")}
	static, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServerFS(static)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", p.serveHTML)
	mux.HandleFunc("GET /status.json", p.serveJSON)
	mux.Handle("GET /assets/", http.StripPrefix("/assets", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/page.html" || strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r) // the template is not an asset, and no listings
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})))
	return secured(mux)
}

// secured adds the headers every answer of the page carries: the page
// loads its own files only, talks to its own origin only, submits no form
// to a URL and cannot be framed.
func secured(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "+
			"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		next.ServeHTTP(w, r)
	})
}

type page struct {
	src  Source
	opts PageOptions
	log  *slog.Logger

	mu       sync.Mutex // guards cached, cachedAt, base, rates
	cached   *view
	cachedAt time.Time
	base     map[int]int64   // events per shard at baseAt
	baseAt   time.Time       // when base was taken
	rates    map[int]float64 // events per second per shard, over the last full second
}

// snapshot returns the view, taking a new snapshot when the cached one is
// older than MaxAge. Readers wait for one snapshot instead of each taking
// theirs: that is what bounds a crowd's cost. The returned view is shared:
// read only.
func (p *page) snapshot() *view {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cached != nil && time.Since(p.cachedAt) < p.opts.MaxAge {
		return p.cached
	}
	st := p.src.Stats()
	p.updateRatesLocked(st)
	p.cached, p.cachedAt = newView(st, p.rates), time.Now()
	return p.cached
}

// updateRatesLocked measures events per second per shard over windows of
// at least a second. A shard whose count went down is a new instance
// (a restart): its count since then is its window's events.
func (p *page) updateRatesLocked(st runtime.Stats) {
	now := st.Time
	if p.base != nil && now.Sub(p.baseAt) < time.Second {
		return
	}
	counts := map[int]int64{}
	for _, c := range st.Clusters {
		for _, s := range c.Shards {
			counts[s.ID] = s.Events
		}
	}
	if p.base != nil {
		secs := now.Sub(p.baseAt).Seconds()
		rates := make(map[int]float64, len(counts))
		for id, n := range counts {
			d := n - p.base[id]
			if d < 0 {
				d = n
			}
			rates[id] = float64(d) / secs
		}
		p.rates = rates
	}
	p.base, p.baseAt = counts, now
}

// pageData is what page.html renders.
type pageData struct {
	Title      string
	Operations string // empty: no controls
	View       *view
	Summary    summary
	Guild      string  // the lookup's input, if any
	Lookup     *lookup // its answer; nil without input
}

func (p *page) serveHTML(w http.ResponseWriter, r *http.Request) {
	v := p.snapshot()
	d := pageData{Title: p.opts.Title, Operations: p.opts.Operations, View: v, Summary: summarize(v)}
	if g, ok := r.URL.Query()["guild"]; ok && len(g) > 0 {
		d.Guild = g[0]
		l := findGuild(v, g[0])
		d.Lookup = &l
	}
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, d); err != nil {
		p.log.Error("status page not rendered", "err", err.Error())
		http.Error(w, "status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(buf.Bytes())
}

func (p *page) serveJSON(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if err := json.NewEncoder(w).Encode(p.snapshot()); err != nil {
		p.log.Warn("status not written", "err", err.Error())
	}
}

// summary is the page's headline.
type summary struct {
	Tone, Text string
}

func summarize(v *view) summary {
	switch {
	case v.Shards == 0:
		return summary{"off", "The fleet is not running."}
	case v.ShardsReady == v.Shards && v.servicesDown() == 0:
		return summary{"ok", fmt.Sprintf("All systems operational: %d of %d shards ready.", v.ShardsReady, v.Shards)}
	case v.ShardsReady == v.Shards:
		return summary{"warn", fmt.Sprintf("%d of %d shards ready; %d services not ready.", v.ShardsReady, v.Shards, v.servicesDown())}
	case v.ShardsReady == 0:
		return summary{"bad", fmt.Sprintf("Outage: none of %d shards ready.", v.Shards)}
	}
	down := v.Shards - v.ShardsReady
	return summary{"warn", fmt.Sprintf("Partial outage: %d of %d shards not ready (%s).", down, v.Shards, v.downList(5))}
}
