// Command restproxy runs the fleet's REST rate limiter as an HTTP proxy, so
// that several processes or hosts of one bot share its Discord rate limits.
// It holds the bot's token: point each process's REST client at it instead
// of at Discord, with no token and no limiter of its own (disgo:
// rest.WithURL("http://127.0.0.1:8080/api/v10") with
// rest.WithRateLimiter(rest.NewNoopRateLimiter())).
//
//	RESTPROXY_TOKEN=... restproxy -addr 127.0.0.1:8080
//
// Every flag can be set by an environment variable instead: RESTPROXY_
// and the flag's name in capitals, dashes as underscores (-global-limit:
// RESTPROXY_GLOBAL_LIMIT). A flag given on the command line wins. Run
// restproxy -h for the list. Tokens are never logged.
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
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gofleet/fleet/metrics"
	"github.com/gofleet/fleet/restproxy"
)

func main() {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stderr, nil)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, errorLine(err))
		cancel()
		os.Exit(1)
	}
}

// errorLine is how the command reports err: with one "restproxy: "
// prefix, whether or not the package's error has it already.
func errorLine(err error) string {
	msg := err.Error()
	if !strings.HasPrefix(msg, "restproxy: ") {
		msg = "restproxy: " + msg
	}
	return msg
}

// envName is the environment variable of a flag.
func envName(flagName string) string {
	return "RESTPROXY_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// options are the command's settings.
type options struct {
	addr, upstream, token, tokenFile, secret string
	allowOpen, debug                         bool
	global, retries, stop, procs             int
	window, bodyTimeout, headerTimeout, idle time.Duration
	maxBody                                  int64
}

// parse reads flags, then, for each flag not on the command line, its
// environment variable.
func parse(args []string, getenv func(string) string, stderr io.Writer) (*options, error) {
	var o options
	fs := flag.NewFlagSet("restproxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.addr, "addr", "127.0.0.1:8080", "address to listen on; a non-loopback one needs -secret or -allow-unauthenticated")
	fs.StringVar(&o.upstream, "upstream", "https://discord.com", "Discord's origin (or a discordtest server's, http://host:port)")
	fs.StringVar(&o.token, "token", "", "the bot token the proxy adds to requests (prefer the environment variable or -token-file: a flag shows in ps)")
	fs.StringVar(&o.tokenFile, "token-file", "", "file holding the bot token")
	fs.StringVar(&o.secret, "secret", "", "shared secret clients must send in the "+restproxy.SecretHeader+" header (prefer the environment variable)")
	fs.BoolVar(&o.allowOpen, "allow-unauthenticated", false, "serve a non-loopback address without -secret (only behind a firewall or on a private network: whoever reaches the proxy acts as the bot)")
	fs.IntVar(&o.global, "global-limit", 0, "global requests per -global-window (0: Discord's 50; Discord raises it for large bots)")
	fs.DurationVar(&o.window, "global-window", time.Second, "global limit window")
	fs.IntVar(&o.retries, "retries", 3, "retries after a 429, or after a 5xx for idempotent methods; 0: never (bodies over 64 KiB are never retried)")
	fs.IntVar(&o.stop, "invalid-stop", 0, "invalid (401/403/429) responses per 10 minutes at which requests fail fast (0: 9500)")
	fs.Int64Var(&o.maxBody, "max-body", restproxy.DefaultMaxBodyBytes, "largest request body in bytes (Discord: 10 MiB in most guilds, 100 MiB at boost level 3)")
	fs.DurationVar(&o.bodyTimeout, "body-timeout", 30*time.Second, "how long a request body may stall, or a client take to read a piece of the answer")
	fs.DurationVar(&o.headerTimeout, "header-timeout", 10*time.Second, "time a client has to send a request's headers")
	fs.DurationVar(&o.idle, "idle-timeout", 2*time.Minute, "how long an idle client connection is kept")
	fs.BoolVar(&o.debug, "debug", false, "log every request (routes only: never tokens)")
	fs.IntVar(&o.procs, "procs", 1, "threads running Go code at once (GOMAXPROCS; 0: Go's default, the CPU count); "+
		"without this flag or its variable, a GOMAXPROCS variable is kept")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: restproxy [flags]\n\n"+
			"Forwards Discord REST calls through one shared rate limiter, adding the bot's token.\n"+
			"Each flag can also be set by the environment variable shown.\n\n")
		fs.VisitAll(func(f *flag.Flag) {
			name, usage := flag.UnquoteUsage(f)
			if name != "" {
				name = " " + name
			}
			fmt.Fprintf(fs.Output(), "  -%s%s\n    \t%s", f.Name, name, usage)
			if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
				fmt.Fprintf(fs.Output(), " (default %s)", f.DefValue)
			}
			fmt.Fprintf(fs.Output(), "\n    \tenv %s\n", envName(f.Name))
		})
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: every setting is a flag (see -h)", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		v := getenv(envName(f.Name))
		if set[f.Name] || v == "" || err != nil {
			return
		}
		if e := fs.Set(f.Name, v); e != nil {
			err = fmt.Errorf("%s=%q: %v", envName(f.Name), v, e)
		}
	})
	if err != nil {
		return nil, err
	}
	switch {
	case o.token != "" && o.tokenFile != "":
		return nil, errors.New("both -token and -token-file are set: keep one")
	case o.tokenFile != "":
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("-token-file: %w", err)
		}
		o.token = strings.TrimSpace(string(b))
		if o.token == "" {
			return nil, fmt.Errorf("-token-file %s is empty: put the bot token in it", o.tokenFile)
		}
	case o.token == "":
		return nil, errors.New("no bot token: set RESTPROXY_TOKEN, or -token-file (RESTPROXY_TOKEN_FILE); the proxy adds it to every request")
	}
	if o.retries == 0 {
		o.retries = -1 // Config's zero means the default
	}
	switch {
	case o.procs < 0:
		return nil, fmt.Errorf("-procs %d < 0: use 0 for Go's default or a count of threads", o.procs)
	case !set["procs"] && getenv(envName("procs")) == "" && getenv("GOMAXPROCS") != "":
		o.procs = 0 // the runtime has applied GOMAXPROCS
	}
	return &o, nil
}

// loopbackHost reports whether host names a loopback address:
// "localhost" or a loopback IP.
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkOpen refuses to serve a non-loopback address without a client
// secret unless -allow-unauthenticated says so.
func (o *options) checkOpen(addr string) error {
	if o.secret != "" || o.allowOpen {
		return nil
	}
	return fmt.Errorf("refusing to serve %s without a client secret: anyone who reaches it could call Discord as the bot. "+
		"Set -secret (RESTPROXY_SECRET) and have clients send it in the %s header, listen on a loopback address, "+
		"or pass -allow-unauthenticated (RESTPROXY_ALLOW_UNAUTHENTICATED=true) if a firewall or private network already decides who reaches it",
		addr, restproxy.SecretHeader)
}

// setProcs applies -procs; tests replace it, since GOMAXPROCS is the
// whole process's.
//
// One by default: the proxy's own work per request is small next to its
// system calls and its waits for sockets, and with more than one, each
// request wakes further threads (a goroutine made ready while a P is idle
// wakes a thread to run it), which costs more than that work on a busy or
// virtual machine. One thread forwards thousands of requests a second,
// far above Discord's global limit.
var setProcs = func(n int) { runtime.GOMAXPROCS(n) }

// run serves until ctx ends, then shuts down gracefully. It sends the
// address it listens on to ready, if not nil.
func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer, ready chan<- string) error {
	o, err := parse(args, getenv, stderr)
	if err != nil {
		return err
	}
	if o.procs > 0 {
		setProcs(o.procs)
	}
	level := slog.LevelInfo
	if o.debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	reg := prometheus.NewRegistry()
	m, err := metrics.NewREST(reg)
	if err != nil {
		return err
	}
	l, err := restproxy.New(restproxy.Config{
		GlobalLimit: o.global, GlobalWindow: o.window, Retries: o.retries, InvalidRequestStop: o.stop,
		Logger: log, Hooks: m.RESTHooks(),
	})
	if err != nil {
		return err
	}
	m.AttachLimiter(l)
	proxy, err := restproxy.NewServer(l, restproxy.ServerConfig{
		Upstream: o.upstream, Token: o.token, Secret: o.secret,
		MaxBodyBytes: o.maxBody, BodyTimeout: o.bodyTimeout,
		Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
		Logger:  log,
	})
	if err != nil {
		return err
	}
	defer proxy.Close()

	// An address that is plainly not loopback is refused before it is
	// bound; a host name, once it is.
	if host, _, err := net.SplitHostPort(o.addr); err == nil && (host == "" || (net.ParseIP(host) != nil && !loopbackHost(host))) {
		if err := o.checkOpen(o.addr); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return err
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		if err := o.checkOpen(ln.Addr().String()); err != nil {
			_ = ln.Close()
			return err
		}
	}
	srv := &http.Server{
		Handler:           proxy,
		ReadHeaderTimeout: o.headerTimeout,
		// Covers a request until the proxy reads its body, whose reads
		// then get -body-timeout each.
		ReadTimeout: o.headerTimeout + o.bodyTimeout,
		IdleTimeout: o.idle,
		ErrorLog:    slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	cfg := l.Config()
	log.Info("restproxy listening", "addr", ln.Addr().String(), "upstream", o.upstream,
		"global_limit", cfg.GlobalLimit, "global_window", cfg.GlobalWindow,
		"invalid_stop", cfg.InvalidRequestStop, "client_secret", o.secret != "", "max_body", o.maxBody,
		"procs", runtime.GOMAXPROCS(0))
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
