package restproxy_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gofleet/fleet/restproxy"
)

// discordHeaders answers like Discord with limits far above any rate.
func discordHeaders(h http.Header) {
	h.Set("Via", "1.1 google")
	h.Set("Content-Type", "application/json")
	h.Set("X-RateLimit-Limit", "1000000000")
	h.Set("X-RateLimit-Remaining", "999999999")
	h.Set("X-RateLimit-Reset-After", "3600.000")
	h.Set("X-RateLimit-Reset", strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10))
	h.Set("X-RateLimit-Bucket", "bench")
}

const benchMessage = `{"id":"1","channel_id":"2","content":"bench"}`

// fakeDiscord is an upstream in memory: it answers every request with a
// message and Discord's headers, without a network.
type fakeDiscord struct{ header http.Header }

func (f *fakeDiscord) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		_ = r.Body.Close()
	}
	return &http.Response{StatusCode: http.StatusOK, Header: f.header.Clone(), ContentLength: int64(len(benchMessage)),
		Body: io.NopCloser(strings.NewReader(benchMessage)), Request: r}, nil
}

// BenchmarkServerHandler is the proxy's own cost per request: ServeHTTP
// for a message post with the bot's token added, through the Limiter,
// to an upstream in memory, over 64 channels.
func BenchmarkServerHandler(b *testing.B) {
	h := http.Header{}
	discordHeaders(h)
	l := newLimiter(b, restproxy.Config{GlobalLimit: 1 << 20})
	p, err := restproxy.NewServer(l, restproxy.ServerConfig{Token: "bench-token", Logger: quiet,
		Client: &http.Client{Transport: &fakeDiscord{header: h}}})
	if err != nil {
		b.Fatal(err)
	}
	urls := make([]*url.URL, 64)
	for i := range urls {
		urls[i], _ = url.Parse(fmt.Sprintf("http://proxy/api/v10/channels/%d/messages", 1_000_000+i))
	}
	// What a disgo client without a token sends; the handler only reads
	// it.
	header := http.Header{}
	header.Set("Content-Type", "application/json")
	header.Set("Authorization", "Bot")
	header.Set("User-Agent", "DiscordBot (https://github.com/disgoorg/disgo, 0.18.15)")
	body := []byte(`{"content":"bench"}`)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for i := 0; pb.Next(); i++ {
			r := &http.Request{Method: http.MethodPost, URL: urls[i%len(urls)], Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Header: header, Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body)), Host: "proxy"}
			w := deadlineRecorder{httptest.NewRecorder()}
			p.ServeHTTP(w, r)
			if w.Code != http.StatusOK {
				b.Fatalf("status %d: %s", w.Code, w.Body)
			}
		}
	})
}

// deadlineRecorder takes deadlines as a server's connection does.
type deadlineRecorder struct{ *httptest.ResponseRecorder }

func (deadlineRecorder) SetReadDeadline(time.Time) error  { return nil }
func (deadlineRecorder) SetWriteDeadline(time.Time) error { return nil }

// BenchmarkServerLoopback is a request one at a time over loopback, as
// the rest bench scenario measures it: straight to an upstream ("direct"),
// through a proxy in front of it ("proxied"), and through net/http's
// ReverseProxy for comparison ("reverseproxy"). The difference to direct
// is what a proxy adds to a request in one process.
func BenchmarkServerLoopback(b *testing.B) {
	h := http.Header{}
	discordHeaders(h)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		for k, v := range h {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(benchMessage)))
		_, _ = io.WriteString(w, benchMessage)
	}))
	defer up.Close()
	l := newLimiter(b, restproxy.Config{GlobalLimit: 1 << 20})
	ps := newProxy(b, l, restproxy.ServerConfig{Upstream: up.URL, Token: "bench-token", Logger: quiet})
	uu, _ := url.Parse(up.URL)
	rp := httptest.NewServer(httputil.NewSingleHostReverseProxy(uu))
	defer rp.Close()
	for _, c := range []struct{ name, url, auth string }{{"direct", up.URL, "Bot bench-token"}, {"proxied", ps.URL, "Bot"}, {"reverseproxy", rp.URL, "Bot bench-token"}} {
		b.Run(c.name, func(b *testing.B) {
			client := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
			defer client.CloseIdleConnections()
			u := c.url + "/api/v10/channels/1000000/messages"
			body := []byte(`{"content":"bench"}`)
			b.ReportAllocs()
			for b.Loop() {
				r, err := http.NewRequest(http.MethodPost, u, bytes.NewReader(body))
				if err != nil {
					b.Fatal(err)
				}
				r.Header.Set("Content-Type", "application/json")
				r.Header.Set("Authorization", c.auth)
				rs, err := client.Do(r)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, rs.Body)
				_ = rs.Body.Close()
				if rs.StatusCode != http.StatusOK {
					b.Fatalf("status %d", rs.StatusCode)
				}
			}
		})
	}
}
