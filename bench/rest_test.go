package main

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/disgoorg/disgo/rest"
)

func TestOpenConnsOpensOnePerRequest(t *testing.T) {
	var opened atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"url":"wss://gateway.discord.gg"}`))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			opened.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	_, tr, closeClient := restClient(srv.URL+"/api/v10", "", rest.WithRateLimiter(rest.NewNoopRateLimiter()))
	defer closeClient()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 50
	if err := openConns(ctx, tr, srv.URL+"/api/v10/gateway", n); err != nil {
		t.Fatal(err)
	}
	if got := opened.Load(); got != n {
		t.Fatalf("%d connections opened, want %d", got, n)
	}
	// They wait idle: the same number of requests again opens none.
	if err := openConns(ctx, tr, srv.URL+"/api/v10/gateway", n); err != nil {
		t.Fatal(err)
	}
	if got := opened.Load(); got != n {
		t.Fatalf("%d connections after a second round, want %d reused", got, n)
	}
}
