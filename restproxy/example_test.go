package restproxy_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"

	"github.com/disgoorg/disgo/rest"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/restproxy"
)

// Every cluster's REST client gets the same Limiter through ConfigOpt.
func ExampleLimiter_ConfigOpt() {
	srv := discordtest.NewServer()
	defer srv.Close()

	l, err := restproxy.New(restproxy.Config{}) // Discord's limits
	if err != nil {
		panic(err)
	}
	var clients []rest.Rest
	for range 2 {
		c := rest.NewClient(srv.Token(), rest.WithURL(srv.RESTURL()), rest.WithLogger(slog.New(slog.DiscardHandler)), l.ConfigOpt())
		defer c.Close(context.Background())
		clients = append(clients, rest.New(c))
	}
	for _, c := range clients {
		me, err := c.GetCurrentUser("")
		if err != nil {
			panic(err)
		}
		fmt.Println(me.Username, me.Bot)
	}
	fmt.Println("buckets:", l.Stats().Buckets)
	// Output:
	// user0 true
	// user0 true
	// buckets: 1
}

// Processes that cannot share memory share the limiter through the proxy:
// their clients talk to it instead of to Discord, with no limiter and no
// token of their own: the proxy holds the bot's token.
func ExampleNewServer() {
	srv := discordtest.NewServer()
	defer srv.Close()

	l, err := restproxy.New(restproxy.Config{})
	if err != nil {
		panic(err)
	}
	proxy, err := restproxy.NewServer(l, restproxy.ServerConfig{Upstream: "http://" + srv.Addr(), Token: srv.Token()})
	if err != nil {
		panic(err)
	}
	defer proxy.Close()
	ps := httptest.NewServer(proxy) // cmd/restproxy serves it in production
	defer ps.Close()

	c := rest.NewClient("", rest.WithURL(ps.URL+"/api/v10"),
		rest.WithRateLimiter(rest.NewNoopRateLimiter()), rest.WithLogger(slog.New(slog.DiscardHandler)))
	defer c.Close(context.Background())
	gw, err := rest.New(c).GetGatewayBot()
	if err != nil {
		panic(err)
	}
	fmt.Println("shards:", gw.Shards)
	// Output:
	// shards: 1
}

// A proxy reachable from other hosts asks its clients for a shared
// secret; SecretTransport sends it.
func ExampleSecretTransport() {
	srv := discordtest.NewServer()
	defer srv.Close()

	l, err := restproxy.New(restproxy.Config{})
	if err != nil {
		panic(err)
	}
	proxy, err := restproxy.NewServer(l, restproxy.ServerConfig{Upstream: "http://" + srv.Addr(), Token: srv.Token(), Secret: "s3cret"})
	if err != nil {
		panic(err)
	}
	defer proxy.Close()
	ps := httptest.NewServer(proxy)
	defer ps.Close()

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := rest.NewClient("", rest.WithURL(ps.URL+"/api/v10"), rest.WithRateLimiter(rest.NewNoopRateLimiter()),
		rest.WithHTTPClient(&http.Client{Transport: restproxy.SecretTransport(tr, "s3cret")}),
		rest.WithLogger(slog.New(slog.DiscardHandler)))
	defer c.Close(context.Background())
	me, err := rest.New(c).GetCurrentUser("")
	if err != nil {
		panic(err)
	}
	fmt.Println(me.Username)
	// Output:
	// user0
}
