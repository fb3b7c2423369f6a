package runtime

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/rest"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/shardgroup"
)

// The token appears in none of the ways a value is commonly printed or
// encoded: fmt's verbs, slog's handlers and JSON, for the token itself,
// the configs that hold it, the runtime and a group.
func TestTokenNeverPrinted(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(2), discordtest.WithRecommendedShards(1))
	defer s.Close()
	secret := s.Token()
	cfg := testConfig(s)
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	run, err := shardgroup.New(shardgroup.Config{Token: cfg.Token, ShardIDs: []int{0}, ShardCount: 1,
		IdentifyLimiter: noLimiter{}, GatewayURL: s.GatewayURL(),
		// disgo's own REST limiter starts a goroutine nothing stops.
		ClientOptions: []bot.ConfigOpt{bot.WithRestClientConfigOpts(rest.WithRateLimiter(rest.NewNoopRateLimiter()))}})
	if err != nil {
		t.Fatal(err)
	}
	g := run.Group()
	defer g.Client().Close(t.Context())
	sgCfg := shardgroup.Config{Token: cfg.Token, ShardIDs: []int{0}, ShardCount: 1}
	values := map[string]any{"token": cfg.Token, "config": cfg, "shardgroup config": sgCfg, "runtime": rt, "group": g, "runner": run}
	for name, v := range values {
		var outs []string
		for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
			outs = append(outs, fmt.Sprintf(verb, v))
		}
		var buf bytes.Buffer
		slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "v", v)
		slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "v", v)
		outs = append(outs, buf.String())
		if b, err := json.Marshal(v); err == nil { // a Runtime or Group need not encode
			outs = append(outs, string(b))
		}
		for _, out := range outs {
			if strings.Contains(out, secret) {
				t.Errorf("%s: the token appears in %q", name, out)
			}
		}
	}
}

type noLimiter struct{}

func (noLimiter) WaitBucket(ctx context.Context, _ int) error { return ctx.Err() }
func (noLimiter) UnlockBucket(int)                            {}
