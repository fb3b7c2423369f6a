// Command redeploy shows how to ship a new binary without re-identifying:
// the fleet saves its sessions when it stops and the next process resumes
// them. Discord replays the events that arrived in between.
//
// Without DISCORD_TOKEN it plays both processes against an embedded
// simulator and prints the IDENTIFYs each run spent (the second spends
// none). With DISCORD_TOKEN set it is one real run: start it, stop it with
// Ctrl-C, start it again within a few minutes.
//
//	go run ./examples/redeploy
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/events"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

func main() {
	store := flag.String("store", "", "session file (default: sessions.json in a private directory under the user's cache directory)")
	flag.Parse()
	path, err := storePath(*store)
	if err == nil {
		err = run(path)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "redeploy:", err)
		os.Exit(1)
	}
}

// storePath is the session file to use: the flag's, or sessions.json in
// a directory only this user can enter. A session file carries what a
// RESUME needs, so it does not belong in a directory others can write,
// such as /tmp.
func storePath(flagged string) (string, error) {
	if flagged != "" {
		return flagged, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no user cache directory (%w): pass -store with a path in a private directory", err)
	}
	dir := filepath.Join(cache, "gofleet-redeploy")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return "", err
	}
	return filepath.Join(dir, "sessions.json"), nil
}

type counter struct{ messages atomic.Int64 }

func (c *counter) bot(int) runtime.Bot {
	return runtime.BotFunc(func(_ context.Context, g *shardgroup.Group) error {
		g.Client().AddEventListeners(bot.NewListenerFunc(func(*events.MessageCreate) { c.messages.Add(1) }))
		return nil
	})
}

// runOnce runs the fleet until it is ready (or, with stopAfterReady false,
// until ctx ends), then stops it, saving the sessions.
func runOnce(ctx context.Context, cfg runtime.Config, stopAfterReady bool) error {
	rt, err := runtime.New(cfg)
	if err != nil {
		return err
	}
	start := time.Now()
	go rt.Run(ctx)
	select {
	case <-rt.Ready():
		fmt.Printf("  fleet ready in %s\n", time.Since(start).Round(time.Millisecond))
	case <-rt.Done():
		return rt.Err()
	}
	if stopAfterReady {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := rt.Shutdown(sctx); err != nil {
			return err
		}
	}
	<-rt.Done()
	return rt.Err()
}

func run(storePath string) error {
	c := &counter{}
	cfg := runtime.Config{
		Token:        runtime.Token(os.Getenv("DISCORD_TOKEN")),
		Bot:          c.bot,
		SessionStore: runtime.FileSessionStore{Path: storePath},
	}
	if cfg.Token != "" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		fmt.Println("running; Ctrl-C saves the sessions to", storePath)
		if err := runOnce(ctx, cfg, false); err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
		return nil
	}

	sim := discordtest.NewServer(discordtest.WithGuilds(320), discordtest.WithRecommendedShards(16),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(50*time.Millisecond))
	defer sim.Close()
	_ = os.Remove(storePath)
	cfg.Token, cfg.GatewayURL, cfg.RESTURL = runtime.Token(sim.Token()), sim.GatewayURL(), sim.RESTURL()
	cfg.IdentifyInterval, cfg.Clusters = sim.IdentifyWindow(), 4

	fmt.Println("first process:")
	if err := runOnce(context.Background(), cfg, true); err != nil {
		return err
	}
	first := sim.Stats().Identifies
	fmt.Printf("  stopped; %d IDENTIFYs; sessions saved to %s\n", first, storePath)

	for i := range 100 {
		g := sim.GuildID(i % sim.Guilds())
		if _, err := sim.Dispatch(g, "MESSAGE_CREATE", sim.MessageCreate(g, "while deploying", i)); err != nil {
			return err
		}
	}
	fmt.Println("100 messages sent while no process runs")

	fmt.Println("second process (the new binary):")
	before := c.messages.Load()
	if err := runOnce(context.Background(), cfg, true); err != nil {
		return err
	}
	st := sim.Stats()
	fmt.Printf("  %d IDENTIFYs, %d RESUMEs; %d of the 100 messages replayed to it\n",
		st.Identifies-first, st.Resumes, c.messages.Load()-before)
	if st.Identifies != first {
		return fmt.Errorf("the second process identified %d times", st.Identifies-first)
	}
	return nil
}
