// Command quickstart runs a fleet: 16 shards in 4 clusters that answer
// "!ping" with "Pong!" through the shared REST limiter.
//
// Without DISCORD_TOKEN it starts an embedded Discord simulator
// (discordtest) with 5,000 guilds and has it send "!ping" messages; with
// DISCORD_TOKEN set, the same bot runs against Discord.
//
//	go run ./examples/quickstart -duration 10s
package main

import (
	"context"
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

func main() {
	duration := flag.Duration("duration", 0, "stop after this long (0: run until Ctrl-C)")
	shards := flag.Int("shards", 16, "shards (simulator only; Discord's recommendation otherwise)")
	clusters := flag.Int("clusters", 4, "clusters")
	verbose := flag.Bool("v", false, "log every lifecycle event")
	adminPort := flag.Int("admin-port", 0, "serve /metrics, /healthz and /status on 127.0.0.1 at this port (0: off); "+
		"FLEET_ADMIN_TOKEN enables the POST /admin/ operations")
	flag.Parse()
	if err := checkFlags(*duration, *shards, *clusters, *adminPort); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	if err := run(ctx, *shards, *clusters, *adminPort, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

// checkFlags says what to change in a flag that cannot run.
func checkFlags(duration time.Duration, shards, clusters, adminPort int) error {
	switch {
	case duration < 0:
		return fmt.Errorf("-duration %s is negative: use 0 to run until Ctrl-C", duration)
	case shards < 1:
		return fmt.Errorf("-shards %d: use 1 or more", shards)
	case clusters < 1:
		return fmt.Errorf("-clusters %d: use 1 or more", clusters)
	case clusters > shards:
		return fmt.Errorf("-clusters %d > -shards %d: use at most one cluster per shard", clusters, shards)
	case adminPort < 0 || adminPort > 65535:
		return fmt.Errorf("-admin-port %d: use a port from 1 to 65535, or 0 for none", adminPort)
	}
	return nil
}

// pingBot answers "!ping" with "Pong!".
type pingBot struct{ pongs *atomic.Int64 }

func (b pingBot) Setup(_ context.Context, g *shardgroup.Group) error {
	g.Client().AddEventListeners(bot.NewListenerFunc(func(e *events.MessageCreate) {
		if e.Message.Author.Bot || e.Message.Content != "!ping" {
			return
		}
		if _, err := e.Client().Rest().CreateMessage(e.ChannelID, discord.MessageCreate{Content: "Pong!"}); err != nil {
			g.Logger().Warn("reply failed", "err", err)
			return
		}
		b.pongs.Add(1)
	}))
	return nil
}

func run(ctx context.Context, shards, clusters, adminPort int, verbose bool) error {
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cfg := runtime.Config{
		Token:    runtime.Token(os.Getenv("DISCORD_TOKEN")),
		Clusters: clusters,
		Intents:  gateway.IntentGuilds | gateway.IntentGuildMessages | gateway.IntentMessageContent,
		Logger:   log,
	}
	var sim *discordtest.Server
	if cfg.Token == "" {
		sim = discordtest.NewServer(
			discordtest.WithGuilds(5000),
			discordtest.WithRecommendedShards(shards),
			discordtest.WithMaxConcurrency(4),
			discordtest.WithIdentifyWindow(100*time.Millisecond),
		)
		defer sim.Close()
		cfg.Token, cfg.GatewayURL, cfg.RESTURL = runtime.Token(sim.Token()), sim.GatewayURL(), sim.RESTURL()
		cfg.IdentifyInterval = sim.IdentifyWindow()
		fmt.Printf("simulator: %d guilds, %d shards, max_concurrency %d, identify window %s\n",
			sim.Guilds(), shards, sim.MaxConcurrency(), sim.IdentifyWindow())
	}
	var pongs atomic.Int64
	cfg.Bot = func(int) runtime.Bot { return pingBot{&pongs} }
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
	if adminPort > 0 {
		stopAdmin, err := serveAdmin(adminPort, metrics.Handler(rt, reg, metrics.HandlerOptions{
			AdminToken: metrics.Token(os.Getenv("FLEET_ADMIN_TOKEN")), Logger: log}))
		if err != nil {
			return err
		}
		defer stopAdmin()
		fmt.Printf("status page: http://127.0.0.1:%d/page/\n", adminPort)
	}
	var ready atomic.Int64
	rt.Subscribe(func(e runtime.Event) {
		switch e.Kind {
		case runtime.EventShardReady:
			ready.Store(int64(e.N))
			fmt.Printf("shard %d ready (%d of %d) in cluster %d after %s\n", e.Shard, e.N, e.Of, e.Cluster, e.Duration.Round(time.Millisecond))
		case runtime.EventFleetReady:
			fmt.Printf("fleet ready: %d shards in %s\n", e.Of, e.Duration.Round(time.Millisecond))
		case runtime.EventClusterFailed, runtime.EventFatal:
			fmt.Printf("%s: cluster %d: %v\n", e.Kind, e.Cluster, e.Err)
		}
	})

	go rt.Run(ctx)

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	start, pings := time.Now(), 0
	for {
		select {
		case <-rt.Done():
			fmt.Print("stopped:")
			summary(start, ready.Load(), pings, pongs.Load(), sim)
			return rt.Err()
		case <-tick.C:
			// No pings in the last second before a -duration stop, so
			// that every one sent is answered.
			dl, timed := ctx.Deadline()
			if sim != nil && ready.Load() > 0 && (!timed || time.Until(dl) > time.Second) {
				// Twenty pings a second, each in another guild: well
				// inside the global REST limit the replies share.
				for range 20 {
					g := sim.GuildID(pings * 7919 % sim.Guilds())
					if _, err := sim.Dispatch(g, "MESSAGE_CREATE", sim.MessageCreate(g, "!ping", pings)); err != nil {
						return err
					}
					pings++
				}
			}
			summary(start, ready.Load(), pings, pongs.Load(), sim)
		}
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

func summary(start time.Time, ready int64, pings int, pongs int64, sim *discordtest.Server) {
	line := fmt.Sprintf("%4s  shards ready %d  pings %d  pongs %d", time.Since(start).Round(time.Second), ready, pings, pongs)
	if sim != nil {
		st := sim.Stats()
		line += fmt.Sprintf("  events sent %d  REST 429s %d  violations %d", st.TotalEventsSent(), total(st.REST.RateLimited), total(st.Violations))
	}
	fmt.Println(line)
}

func total(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
