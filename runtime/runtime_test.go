package runtime

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/shardgroup"
)

func nopBot(int) Bot {
	return BotFunc(func(context.Context, *shardgroup.Group) error { return nil })
}

func testConfig(s *discordtest.Server) Config {
	return Config{Token: Token(s.Token()), Bot: nopBot, GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		IdentifyInterval: s.IdentifyWindow()}
}

// runUntil runs rt in the background and returns a func that shuts it
// down and returns Run's error.
func runUntil(t *testing.T, rt *Runtime) func() error {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- rt.Run(context.Background()) }()
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := rt.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		return <-errc
	}
}

func TestStartupAtTheIdentifyLimit(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(640), discordtest.WithRecommendedShards(64),
		discordtest.WithMaxConcurrency(16), discordtest.WithIdentifyWindow(100*time.Millisecond))
	defer s.Close()
	cfg := testConfig(s)
	cfg.Clusters = 4
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fleetReady := make(chan Event, 1)
	rt.Subscribe(func(e Event) {
		if e.Kind == EventFleetReady {
			fleetReady <- e
		}
	})
	stop := runUntil(t, rt)
	var ev Event
	select {
	case ev = <-fleetReady:
	case <-time.After(20 * time.Second):
		t.Fatal("fleet not ready")
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	st := s.Stats()
	if len(st.Violations) != 0 || st.Identifies != 64 {
		t.Fatalf("violations %v, identifies %d", st.Violations, st.Identifies)
	}
	if ev.N != 64 || ev.Of != 64 {
		t.Fatalf("fleet ready event %+v", ev)
	}
	// Four rounds of 16 identifies: the bound is 4 windows plus 300 ms.
	t.Logf("fleet ready in %s", ev.Duration)
	if ev.Duration > 700*time.Millisecond && !raceEnabled {
		t.Fatalf("fleet ready in %s, want <= 700ms", ev.Duration)
	}
	if groups := rt.Groups(); len(groups) != 4 {
		t.Fatalf("%d groups", len(groups))
	}
}

func TestValidation(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(100), discordtest.WithSessionStartLimit(3, time.Hour))
	defer s.Close()
	base := testConfig(s)
	cases := []struct {
		name string
		edit func(*Config)
		want string
		run  bool // the error comes from Run (it needs /gateway/bot)
	}{
		{"missing token", func(c *Config) { c.Token = "" }, "Config.Token is empty", false},
		{"more clusters than shards", func(c *Config) { c.Shards, c.Clusters = 2, 3 }, "Clusters (3) > Shards (2): lower Clusters", false},
		{"range outside total", func(c *Config) { c.TotalShards, c.FirstShardID, c.LastShardID = 4, 2, 4 }, "outside 0..3", false},
		{"guilds per shard", func(c *Config) { c.GuildsPerShard = 3000 }, "GuildsPerShard (3000) > 2500", false},
		{"large bot multiple", func(c *Config) { c.Shards, c.MaxConcurrencyOverride = 20, 16 }, "must be a multiple of 16", true},
		{"session starts", func(c *Config) { c.Shards = 4 }, "3 session starts remain today but 4 shards must identify", true},
		{"bad token", func(c *Config) { c.Token = "nope" }, "refused the token (401)", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			tc.edit(&cfg)
			rt, err := New(cfg)
			if tc.run {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				err = rt.Run(context.Background())
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to say %q", err, tc.want)
			}
			if strings.Contains(err.Error(), s.Token()) {
				t.Fatal("the token leaked into an error")
			}
		})
	}
}

func TestAuthenticationFailureStopsRun(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithPrivilegedIntents(0))
	defer s.Close()
	cfg := testConfig(s)
	cfg.Intents = 1 << 15 // MESSAGE_CONTENT, not approved
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = rt.Run(context.Background())
	var ce *shardgroup.CloseError
	if !errors.As(err, &ce) || ce.Code != 4014 || !strings.Contains(err.Error(), "disallowed intents") {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("returned after %s", time.Since(start))
}
