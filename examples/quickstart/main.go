// Command quickstart runs a fleet that answers "!ping" with "Pong!"
// through the shared REST limiter: by default 16 shards in 4 clusters
// against an embedded Discord simulator (discordtest) with 5,000 guilds,
// which it sends "!ping" messages once the fleet is ready.
//
// -gateway, -rest and -token point it at any Discord-compatible server,
// such as cmd/fakediscord (which prints those three values at start-up);
// with -control, fakediscord's control API, it sends the pings there. With
// DISCORD_TOKEN set and no -gateway, the same bot runs against Discord and
// answers the "!ping"s people send.
//
//	go run ./examples/quickstart -duration 10s
//	go run ./examples/quickstart -shards 1000 -clusters 10 -duration 40s
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/events"
	"github.com/disgoorg/disgo/gateway"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/metrics"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// options are the command's flags.
type options struct {
	duration       time.Duration
	shards         int
	clusters       int
	shardsSet      bool // -shards was given
	clustersSet    bool // -clusters was given
	identifyWindow time.Duration
	maxConc        int
	gateway, rest  string
	token          string
	control        string
	adminPort      int
	verbose        bool
}

func main() {
	var o options
	flag.DurationVar(&o.duration, "duration", 0, "stop after this long (0: run until Ctrl-C)")
	flag.IntVar(&o.shards, "shards", 16, "shards (with -gateway or against Discord, the default is the server's recommendation)")
	flag.IntVar(&o.clusters, "clusters", 4, "clusters (at most one per shard; with -gateway or against Discord, the default is one per CPU)")
	flag.DurationVar(&o.identifyWindow, "identify-window", 100*time.Millisecond,
		"the embedded simulator's identify window (Discord's: 5s)")
	flag.IntVar(&o.maxConc, "max-concurrency", 0,
		"the embedded simulator's max_concurrency (0: the largest of 8, 4, 2 and 1 that divides -shards)")
	flag.StringVar(&o.gateway, "gateway", "", "gateway URL of a Discord-compatible server (fakediscord's gateway: line); needs -rest and -token")
	flag.StringVar(&o.rest, "rest", "", "REST base URL of that server (fakediscord's rest: line)")
	flag.StringVar(&o.token, "token", "", "bot token for that server (fakediscord's token: line; default $DISCORD_TOKEN, which a real token should use: flags show in ps)")
	flag.StringVar(&o.control, "control", "", "fakediscord's control API (its control: line): send the pings there")
	flag.IntVar(&o.adminPort, "admin-port", 0, "serve /metrics, /healthz and /status on 127.0.0.1 at this port (0: off); "+
		"FLEET_ADMIN_TOKEN enables the POST /admin/ operations")
	flag.BoolVar(&o.verbose, "v", false, "log every lifecycle event, and each shard as it becomes ready")
	flag.Parse()
	flag.Visit(func(f *flag.Flag) {
		o.shardsSet = o.shardsSet || f.Name == "shards"
		o.clustersSet = o.clustersSet || f.Name == "clusters"
	})
	if o.token == "" {
		o.token = os.Getenv("DISCORD_TOKEN")
	}
	if err := o.check(); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

// embedded reports whether the quickstart runs its own simulator.
func (o options) embedded() bool { return o.gateway == "" && o.token == "" }

// maxConcurrency is the embedded simulator's max_concurrency: the flag,
// or the largest of 8, 4, 2 and 1 that divides -shards, since Discord
// requires a shard count that is a multiple of it (the large-bot rule):
// exactly -shards run, and a reshard to 1.5 times as many is valid.
func (o options) maxConcurrency() int {
	if o.maxConc > 0 {
		return o.maxConc
	}
	mc := 8
	for o.shards%mc != 0 {
		mc /= 2
	}
	return mc
}

// check says what to change in flags that cannot run.
func (o options) check() error {
	switch {
	case flag.NArg() > 0:
		return fmt.Errorf("unexpected arguments %q: every setting is a flag (-h lists them)", flag.Args())
	case o.duration < 0:
		return fmt.Errorf("-duration %s is negative: use 0 to run until Ctrl-C", o.duration)
	case o.shards < 1:
		return fmt.Errorf("-shards %d: use 1 or more", o.shards)
	case o.clusters < 1:
		return fmt.Errorf("-clusters %d: use 1 or more", o.clusters)
	case o.clustersSet && (o.embedded() || o.shardsSet) && o.clusters > o.shards:
		return fmt.Errorf("-clusters %d > -shards %d: use at most one cluster per shard", o.clusters, o.shards)
	case o.maxConc < 0 || (o.maxConc > 0 && o.shards%o.maxConc != 0):
		return fmt.Errorf("-max-concurrency %d: use one that divides -shards %d (Discord's large-bot rule), or 0 to choose one", o.maxConc, o.shards)
	case o.identifyWindow <= 0:
		return fmt.Errorf("-identify-window %s: use a positive duration", o.identifyWindow)
	case o.adminPort < 0 || o.adminPort > 65535:
		return fmt.Errorf("-admin-port %d: use a port from 1 to 65535, or 0 for none", o.adminPort)
	case (o.gateway == "") != (o.rest == ""):
		return errors.New("-gateway and -rest go together: give both (fakediscord prints them), or neither")
	case o.gateway != "" && o.token == "":
		return errors.New("-gateway needs -token (fakediscord prints it) or DISCORD_TOKEN")
	case o.control != "" && o.gateway == "":
		return errors.New("-control needs -gateway and -rest: the server whose control API it is")
	}
	return nil
}

// pingBot answers "!ping" with "Pong!" and counts the pongs that come
// back from the server as its own messages.
type pingBot struct{ c *counts }

// counts are the quickstart's tallies.
type counts struct {
	pings   atomic.Int64 // "!ping"s the server accepted for a connected session
	replies atomic.Int64 // "Pong!"s the server accepted (REST 2xx)
	failed  atomic.Int64 // replies the server refused or that failed
	pongs   atomic.Int64 // "Pong!"s received back through the gateway
}

func (b pingBot) Setup(_ context.Context, g *shardgroup.Group) error {
	g.Client().AddEventListeners(bot.NewListenerFunc(func(e *events.MessageCreate) {
		if e.Message.Author.Bot {
			if e.Message.Content == "Pong!" && e.Message.Author.ID == e.Client().ID() {
				b.c.pongs.Add(1)
			}
			return
		}
		if e.Message.Content != "!ping" {
			return
		}
		if _, err := e.Client().Rest().CreateMessage(e.ChannelID, discord.MessageCreate{Content: "Pong!"}); err != nil {
			b.c.failed.Add(1)
			g.Logger().Warn("reply failed", "err", err)
			return
		}
		b.c.replies.Add(1)
	}))
	return nil
}

func run(ctx context.Context, o options) error {
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cfg := runtime.Config{
		Token:   runtime.Token(o.token),
		Intents: gateway.IntentGuilds | gateway.IntentGuildMessages | gateway.IntentMessageContent,
		Logger:  log,
	}
	var src pingSource
	switch {
	case o.embedded():
		mc := o.maxConcurrency()
		sim := discordtest.NewServer(
			discordtest.WithGuilds(5000),
			discordtest.WithRecommendedShards(o.shards),
			discordtest.WithMaxConcurrency(mc),
			discordtest.WithIdentifyWindow(o.identifyWindow),
		)
		defer sim.Close()
		cfg.Token, cfg.GatewayURL, cfg.RESTURL = runtime.Token(sim.Token()), sim.GatewayURL(), sim.RESTURL()
		cfg.IdentifyInterval = sim.IdentifyWindow()
		cfg.Shards = o.shards
		src = simSource{sim}
		windows := (o.shards + mc - 1) / mc
		fmt.Printf("simulator: %d guilds, %d shards, max_concurrency %d, identify window %s (Discord's: 5s): "+
			"start-up needs %d identify windows, %s\n",
			sim.Guilds(), o.shards, mc, sim.IdentifyWindow(), windows, time.Duration(windows)*sim.IdentifyWindow())
	case o.gateway != "":
		cfg.GatewayURL, cfg.RESTURL = o.gateway, o.rest
		if o.control != "" {
			src = &controlSource{url: o.control, client: &http.Client{Timeout: 5 * time.Second}}
		}
		fmt.Printf("server: gateway %s, rest %s\n", o.gateway, o.rest)
	default:
		fmt.Println("Discord: DISCORD_TOKEN is set; send \"!ping\" in a channel the bot can read")
	}
	switch {
	case o.embedded() || o.shardsSet:
		cfg.Shards = o.shards
		cfg.Clusters = min(o.clusters, o.shards) // -clusters' default, 4, for fewer shards: one each
	case o.clustersSet:
		cfg.Clusters = o.clusters
	}
	if src == nil {
		fmt.Println("pings: none sent (no simulator and no -control); the bot answers the \"!ping\"s it receives")
	}

	c := &counts{}
	cfg.Bot = func(int) runtime.Bot { return pingBot{c} }
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		return err
	}
	cfg.Observer = m.Observer()
	cfg.RESTLimiterConfig.Hooks = m.RESTHooks()
	rt, err := runtime.New(cfg)
	if err != nil {
		return err
	}
	m.Attach(rt)
	if o.adminPort > 0 {
		stopAdmin, err := serveAdmin(o.adminPort, metrics.Handler(rt, reg, metrics.HandlerOptions{
			AdminToken: metrics.Token(os.Getenv("FLEET_ADMIN_TOKEN")), Logger: log}))
		if err != nil {
			return err
		}
		defer stopAdmin()
		fmt.Printf("status page: http://127.0.0.1:%d/page/\n", o.adminPort)
	}
	var ready atomic.Bool // the fleet is ready: pings count from now on
	rt.Subscribe(func(e runtime.Event) { printEvent(e, &ready, o.verbose) })

	// The fleet runs until the pings sent have had their pongs (or a
	// bound passes) after ctx ends, so that the summary counts them all.
	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	errc := make(chan error, 1)
	go func() { errc <- rt.Run(runCtx) }()

	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	next := 0 // the next ping's number
	for {
		select {
		case err := <-errc:
			fmt.Println("stopped: " + summary(start, rt, c, src, true))
			return err
		case <-ctx.Done():
			// The summary is taken before the fleet stops, so that it
			// shows the shards that served.
			drain(c, src != nil, errc)
			line := summary(start, rt, c, src, true)
			stopRun()
			err := <-errc
			fmt.Println("stopped: " + line)
			return err
		case <-tick.C:
			if src != nil && ready.Load() {
				// Twenty pings a second, each in another guild: well
				// inside the global REST limit the replies share.
				// A ping under way completes even if ctx ends, so that
				// every ping the server took is counted.
				guilds := max(rt.Stats().Guilds, 1)
				for i := 0; i < 20 && ctx.Err() == nil; i++ {
					ok, err := src.ping(context.WithoutCancel(ctx), next*7919%guilds, next)
					if err != nil {
						return err
					}
					if ok {
						c.pings.Add(1)
					}
					next++
				}
			}
			fmt.Println(summary(start, rt, c, src, false))
		}
	}
}

// drain waits, at most 10 s, until every ping sent has had its pong back,
// or Run returns (it then puts its error back for the caller).
func drain(c *counts, pinging bool, errc chan error) {
	if !pinging {
		return
	}
	bound := time.NewTimer(10 * time.Second)
	defer bound.Stop()
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	for c.pongs.Load() < c.pings.Load() {
		select {
		case err := <-errc:
			errc <- err
			return
		case <-bound.C:
			return
		case <-poll.C:
		}
	}
}

// printEvent prints the events an operator watches for; with verbose,
// each shard's ready too.
func printEvent(e runtime.Event, ready *atomic.Bool, verbose bool) {
	switch e.Kind {
	case runtime.EventShardReady:
		if verbose {
			fmt.Printf("shard %d ready (%d of %d) in cluster %d after %s\n", e.Shard, e.N, e.Of, e.Cluster, e.Duration.Round(time.Millisecond))
		}
	case runtime.EventFleetReady:
		ready.Store(true)
		fmt.Printf("fleet ready: %d shards in %s; pinging\n", e.Of, e.Duration.Round(time.Millisecond))
	case runtime.EventReshardStarted:
		fmt.Printf("reshard: %d shards to %d\n", e.N, e.Of)
	case runtime.EventReshardDone:
		fmt.Println("reshard done")
	case runtime.EventClusterFailed, runtime.EventFatal:
		fmt.Printf("%s: cluster %d: %v\n", e.Kind, e.Cluster, e.Err)
	}
}

// serveAdmin serves h on 127.0.0.1:port, never on other interfaces, and
// prints its URL; the returned func shuts it down.
func serveAdmin(port int, h http.Handler) (stop func(), err error) {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("admin server: %w", err)
	}
	// ReadTimeout is longer than the admin handler's OperationTimeout (5
	// minutes): net/http cancels a request whose read deadline passes.
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 6 * time.Minute, IdleTimeout: 2 * time.Minute}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln) // returns http.ErrServerClosed after Shutdown
	}()
	fmt.Printf("admin: http://%s/ (/metrics, /healthz, /status)\n", ln.Addr())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	}, nil
}

// summary is one line: the fleet's shards as they are now (a reshard
// included), the pings and pongs, and what the server counted. The final
// line adds the pongs missing: pings sent whose pong never came back.
func summary(start time.Time, rt *runtime.Runtime, c *counts, src pingSource, final bool) string {
	st := rt.Stats()
	line := fmt.Sprintf("%4s  shards ready %d of %d in %d clusters", time.Since(start).Round(time.Second), st.ShardsReady, st.Shards, len(st.Clusters))
	pings, pongs := c.pings.Load(), c.pongs.Load()
	if src != nil {
		line += fmt.Sprintf("  pings sent %d  pongs received %d", pings, pongs)
		if final {
			line += fmt.Sprintf("  pongs missing %d", pings-pongs)
		}
	} else {
		line += fmt.Sprintf("  pongs sent %d", c.replies.Load())
	}
	if n := c.failed.Load(); n > 0 {
		line += fmt.Sprintf("  replies failed %d", n)
	}
	if src != nil {
		if ss, ok := src.stats(); ok {
			line += fmt.Sprintf("  events sent %d  REST 429s %d  violations %d", ss.TotalEventsSent(), total(ss.REST.RateLimited), total(ss.Violations))
		}
	}
	return line
}

func total(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
