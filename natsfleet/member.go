package natsfleet

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/disgoorg/disgo/bot"

	"github.com/gofleet/fleet/runtime"
)

// runMember runs one cluster this host holds the lease of, as a runtime
// serving that cluster only: its shards resume the sessions stored in the
// fleet's sessions bucket (the previous owner's checkpoint, or the exact
// sessions it handed over), checkpoint there while the lease is valid,
// and when ctx ends close resumably and save their sessions.
func (h *Host) runMember(ctx context.Context, c *clusterRun) error {
	sh, err := h.clusterShared(ctx, c.Plan)
	if err != nil {
		return err
	}
	cfg := h.cfg.Runtime
	cfg.Shards = c.Plan.Shards
	cfg.Clusters, cfg.ShardsPerCluster = 0, 0
	cfg.GatewayURL = c.Plan.GatewayURL
	cfg.MaxConcurrencyOverride = c.Plan.MaxConcurrency
	cfg.IdentifyQueue = sharedQueue{sh.queue}
	cfg.Bus = sh.bus
	if cfg.SessionStore, err = h.clusterSessionStore(ctx, c); err != nil {
		return err
	}
	cfg.Member = &runtime.Member{Clusters: []runtime.ClusterPlan{{ID: c.ID, Shards: c.Shards}},
		// Fencing: nothing is delivered past the lease's local deadline;
		// nor by a reshard's new cluster before the switch.
		Delivering: func(int) bool { return c.Lease.valid(time.Now()) && c.Next.delivers() }}
	cfg.Logger = h.cfg.Logger.With("cluster", c.ID)
	if h.restOpts != nil {
		cfg.RESTURL, cfg.RESTLimiter, cfg.NoSharedRESTLimiter = "", nil, true
		cfg.ClientOptions = append(slices.Clone(cfg.ClientOptions), bot.WithRestClientConfigOpts(h.restOpts...))
	}
	rt, err := runtime.New(cfg)
	if err != nil {
		return err
	}
	if c.Next != nil {
		defer rt.Subscribe(c.Next.observe)()
	}
	c.SetOps(rt)
	defer c.SetOps(nil)
	return rt.Run(ctx)
}

// clusterShared returns what the host's clusters share, making the
// identify queue once the plan is known.
func (h *Host) clusterShared(ctx context.Context, p planRecord) (*hostShared, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	sh := h.shared
	if sh == nil {
		return nil, errors.New("natsfleet: the host is not running")
	}
	if sh.queue == nil {
		interval := h.cfg.Runtime.IdentifyInterval
		if interval == 0 {
			interval = 5 * time.Second
		}
		// A bucket whose holder went silent waits at most a lease TTL:
		// a host silent that long has lost its clusters anyway.
		q, err := NewIdentifyQueue(ctx, h.nc, IdentifyConfig{Prefix: h.cfg.Fleet, MaxConcurrency: p.MaxConcurrency, Interval: interval,
			Lease: h.cfg.LeaseTTL})
		if err != nil {
			return nil, err
		}
		sh.queue = q
	}
	return sh, nil
}

// sharedQueue hands the host's identify queue to each of its runtimes,
// which close the queue they are given when they stop: the host closes
// it itself when Run returns.
type sharedQueue struct{ *IdentifyQueue }

// Close leaves the shared queue open.
func (sharedQueue) Close(context.Context) {}
