// Command restproxy runs the fleet's REST rate limiter as an HTTP proxy, so
// that several processes or hosts of one bot share its Discord rate limits.
// Point each process's REST client at it instead of at Discord (disgo:
// rest.WithURL("http://127.0.0.1:8080/api/v10") with
// rest.WithRateLimiter(rest.NewNoopRateLimiter())); it forwards each call
// with the caller's Authorization header and passes Discord's answer back.
//
//	restproxy -addr 127.0.0.1:8080 -global-limit 50
//
// With RESTPROXY_TOKEN set in the environment it accepts that bot token
// only; otherwise any "Bot" token, which then must always be the same bot's.
// Tokens are never logged.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/gofleet/fleet/restproxy"
)

func main() {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if err := run(ctx, os.Args[1:], os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "restproxy:", err)
		cancel()
		os.Exit(1)
	}
}

// run serves until ctx ends, then shuts down gracefully. It sends the
// address it listens on to ready, if not nil.
func run(ctx context.Context, args []string, stderr io.Writer, ready chan<- string) error {
	fs := flag.NewFlagSet("restproxy", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8080", "address to listen on")
	upstream := fs.String("upstream", "https://discord.com", "Discord's origin (or a discordtest server's, http://host:port)")
	global := fs.Int("global-limit", 50, "global requests per -global-window (Discord raises it for large bots)")
	window := fs.Duration("global-window", time.Second, "global limit window")
	retries := fs.Int("retries", 3, "retries after a 429, or after a 5xx for idempotent methods")
	stop := fs.Int("invalid-stop", 0, "invalid (401/403/429) responses per 10 minutes at which requests fail fast (default 9500)")
	debug := fs.Bool("debug", false, "log every request")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *retries == 0 {
		*retries = -1 // Config's zero means the default
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	l, err := restproxy.New(restproxy.Config{
		GlobalLimit: *global, GlobalWindow: *window, Retries: *retries, InvalidRequestStop: *stop, Logger: log,
	})
	if err != nil {
		return err
	}
	proxy, err := restproxy.NewServer(l, restproxy.ServerConfig{
		Upstream: *upstream, Token: os.Getenv("RESTPROXY_TOKEN"), Logger: log,
	})
	if err != nil {
		return err
	}
	defer proxy.Close()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: proxy, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("restproxy listening", "addr", ln.Addr().String(), "upstream", *upstream, "global_limit", *global, "global_window", *window)
	if ready != nil {
		ready <- ln.Addr().String()
	}

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	log.Info("restproxy shutting down")
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	err = srv.Shutdown(sctx)
	if serr := <-served; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}
