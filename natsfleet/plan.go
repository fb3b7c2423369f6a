package natsfleet

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	goruntime "runtime"
	"time"

	"github.com/disgoorg/disgo/rest"
)

// makePlan is the first leader's plan: the shard count and
// max_concurrency from the runtime config, or from GET /gateway/bot for
// what it leaves 0, and contiguous clusters as a single-process runtime
// makes them (Clusters, or ShardsPerCluster, or one per CPU).
func (h *Host) makePlan(ctx context.Context) (planRecord, error) {
	rc := h.cfg.Runtime
	p := planRecord{Shards: rc.Shards, MaxConcurrency: rc.MaxConcurrencyOverride, GatewayURL: rc.GatewayURL}
	if p.Shards == 0 || p.MaxConcurrency == 0 || p.GatewayURL == "" {
		gb, err := gatewayBot(ctx, string(rc.Token), rc.RESTURL)
		if err != nil {
			return p, err
		}
		if p.Shards == 0 {
			p.Shards = gb.Shards
		}
		if p.MaxConcurrency == 0 {
			p.MaxConcurrency = max(gb.SessionStartLimit.MaxConcurrency, 1)
		}
		if p.GatewayURL == "" {
			p.GatewayURL = gb.URL
		}
	}
	if p.Shards < 1 {
		return p, fmt.Errorf("natsfleet: the fleet has %d shards: set Runtime.Shards", p.Shards)
	}
	return h.splitPlan(p)
}

// splitPlan splits p's shards into contiguous clusters as a
// single-process runtime does (Runtime.Clusters, or ShardsPerCluster, or
// one per CPU).
func (h *Host) splitPlan(p planRecord) (planRecord, error) {
	rc := h.cfg.Runtime
	n := min(goruntime.NumCPU(), p.Shards)
	switch {
	case rc.Clusters > 0:
		n = rc.Clusters
	case rc.ShardsPerCluster > 0:
		n = (p.Shards + rc.ShardsPerCluster - 1) / rc.ShardsPerCluster
	}
	if n > p.Shards {
		return p, fmt.Errorf("natsfleet: Runtime.Clusters (%d) > shards (%d): lower Clusters", n, p.Shards)
	}
	next := 0
	for i := range n {
		size := p.Shards / n
		if i < p.Shards%n {
			size++
		}
		ids := make([]int, size)
		for j := range ids {
			ids[j] = next + j
		}
		next += size
		p.Clusters = append(p.Clusters, ids)
	}
	return p, nil
}

// gatewayBotResult is what the plan needs of GET /gateway/bot.
type gatewayBotResult struct {
	URL               string
	Shards            int
	SessionStartLimit struct{ MaxConcurrency int }
}

// gatewayBot asks GET /gateway/bot on a client of its own, whose
// connections are closed when it returns.
func gatewayBot(ctx context.Context, token, restURL string) (gatewayBotResult, error) {
	tr := &http.Transport{Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true, TLSHandshakeTimeout: 10 * time.Second}
	defer tr.CloseIdleConnections()
	opts := []rest.ConfigOpt{rest.WithHTTPClient(&http.Client{Transport: tr, Timeout: time.Minute}), rest.WithRateLimiter(rest.NewNoopRateLimiter())}
	if restURL != "" {
		opts = append(opts, rest.WithURL(restURL))
	}
	client := rest.NewClient(token, opts...)
	defer client.Close(context.Background())
	gb, err := rest.NewGateway(client).GetGatewayBot(rest.WithCtx(ctx))
	var re rest.Error
	switch {
	case ctx.Err() != nil:
		return gatewayBotResult{}, ctx.Err()
	case errors.As(err, &re) && re.Response != nil && re.Response.StatusCode == http.StatusUnauthorized:
		return gatewayBotResult{}, errors.New("natsfleet: Discord refused the token (401): check HostConfig.Runtime.Token")
	case err != nil:
		return gatewayBotResult{}, fmt.Errorf("natsfleet: GET /gateway/bot: %w", err)
	}
	out := gatewayBotResult{URL: gb.URL, Shards: gb.Shards}
	out.SessionStartLimit.MaxConcurrency = gb.SessionStartLimit.MaxConcurrency
	return out, nil
}
