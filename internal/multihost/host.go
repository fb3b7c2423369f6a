package multihost

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/events"
	"github.com/nats-io/nats.go"

	"github.com/gofleet/fleet/natsfleet"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// RunHostFromEnv runs a host process with the [HostArgs] in HostEnv: it
// joins the fleet, reports every MESSAGE_CREATE its clusters' listeners
// see, and speaks on stdout ("ready" once it runs, "owned 0,3" when its
// clusters change, "drained" or "drained <error>" after a drain) and
// stdin ("drain"; stdin's end stops it, handing its clusters over).
func RunHostFromEnv() error {
	var a HostArgs
	if err := json.Unmarshal([]byte(os.Getenv(HostEnv)), &a); err != nil {
		return fmt.Errorf("%s: %w", HostEnv, err)
	}
	return RunHost(a, LineReader())
}

// RunHost is RunHostFromEnv with its arguments and commands given.
func RunHost(a HostArgs, commands <-chan string) error {
	if a.NATSNodes > 0 {
		return runNodes(a.NATSNodes, commands)
	}
	log := slog.New(slog.DiscardHandler)
	if os.Getenv("FLEET_MULTIHOST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	opts := append(a.NATS.Options(), natsfleet.Logger(log), natsfleet.Name(a.ID))
	if a.Only {
		opts = append(opts, natsfleet.NATSOptions(nats.IgnoreDiscoveredServers()))
	}
	cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	nc, err := natsfleet.Connect(cctx, a.NATS.URL, opts...)
	cancel()
	if err != nil {
		return err
	}
	defer nc.Close()
	rep, err := NewReporter(nc, a.Prefix, a.ID)
	if err != nil {
		return err
	}
	listener := bot.NewListenerFunc(func(e *events.MessageCreate) {
		rep.Seen(e.ShardID(), uint64(e.Message.ID))
	})
	cctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	h, err := natsfleet.NewHost(cctx, nc, natsfleet.HostConfig{
		Fleet: a.Prefix, ID: a.ID, LeaseTTL: a.LeaseTTL, Logger: log,
		Runtime: runtime.Config{
			Token: runtime.Token(a.Token), GatewayURL: a.GatewayURL, RESTURL: a.RESTURL,
			Shards: a.Shards, Clusters: a.Clusters, MaxConcurrencyOverride: a.MaxConcurrency,
			IdentifyInterval: a.IdentifyWindow, CheckpointInterval: a.Checkpoint, Logger: log,
			Bot: func(int) runtime.Bot {
				return runtime.BotFunc(func(_ context.Context, g *shardgroup.Group) error {
					g.Client().AddEventListeners(listener)
					return nil
				})
			},
		},
	})
	cancel()
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	fmt.Println("ready")

	var owned []int
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	drained := make(chan error, 1)
	for {
		select {
		case err := <-done:
			return err
		case cmd, ok := <-commands:
			if !ok {
				commands = nil
				stop() // Run hands the clusters over, then returns
				continue
			}
			if cmd == "drain" {
				go func() {
					dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
					defer cancel()
					drained <- h.Drain(dctx)
				}()
			}
		case err := <-drained:
			if err != nil {
				fmt.Println("drained", strings.ReplaceAll(err.Error(), "\n", " "))
			} else {
				fmt.Println("drained")
			}
		case <-tick.C:
			if now := h.Owned(); !slices.Equal(now, owned) {
				owned = now
				fmt.Println("owned", strings.Trim(strings.Join(strings.Fields(fmt.Sprint(owned)), ","), "[]"))
			}
		}
	}
}
