package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	goruntime "runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/rest"

	"github.com/gofleet/fleet/restproxy"
	"github.com/gofleet/fleet/shardgroup"
)

// Runtime plans a bot's shards into clusters, starts them at Discord's
// identify limit, supervises them and stops them. It is eris-fleet's
// Admiral, with goroutines for processes.
type Runtime struct {
	cfg    Config
	events *events

	mu       sync.Mutex // guards the fields below
	running  bool
	cancel   context.CancelFunc
	clusters []*cluster
	fatal    error
	shutdown chan struct{} // closed by Shutdown
	stopped  chan struct{} // closed when Run returns

	ready   atomic.Int64
	started time.Time
}

// cluster is one supervised group.
type cluster struct {
	id     int
	shards []int
	mu     sync.Mutex // guards group, bot, restarts
	group  *shardgroup.Group
	bot    Bot
	ready  chan struct{} // closed when every shard of the current group is ready
	once   *sync.Once
}

// New validates cfg and returns a runtime; nothing starts until Run.
func New(cfg Config) (*Runtime, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if c.RESTLimiter == nil && !c.NoSharedRESTLimiter {
		lc := c.RESTLimiterConfig
		if lc.Logger == nil {
			lc.Logger = c.Logger
		}
		if c.RESTLimiter, err = restproxy.New(lc); err != nil {
			return nil, fmt.Errorf("runtime: RESTLimiterConfig: %w", err)
		}
	}
	return &Runtime{cfg: c, events: newEvents(c.Logger.With("component", "fleet"), c.WhatToLog),
		shutdown: make(chan struct{}), stopped: make(chan struct{})}, nil
}

// GatewayBot is Discord's GET /gateway/bot answer.
type GatewayBot struct {
	URL               string `json:"url"`
	Shards            int    `json:"shards"`
	SessionStartLimit struct {
		Total          int `json:"total"`
		Remaining      int `json:"remaining"`
		ResetAfter     int `json:"reset_after"`
		MaxConcurrency int `json:"max_concurrency"`
	} `json:"session_start_limit"`
}

// ErrUnauthorized means Discord refused the token.
var ErrUnauthorized = errors.New("runtime: Discord refused the token (401): check Config.Token")

func (r *Runtime) gatewayBot(ctx context.Context) (GatewayBot, error) {
	base := r.cfg.RESTURL
	if base == "" {
		base = rest.DefaultConfig().URL
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/gateway/bot", nil)
	if err != nil {
		return GatewayBot{}, err
	}
	req.Header.Set("Authorization", "Bot "+string(r.cfg.Token))
	req.Header.Set("User-Agent", "DiscordBot (https://github.com/gofleet/fleet, 0.1)")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return GatewayBot{}, fmt.Errorf("runtime: GET /gateway/bot: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized {
		return GatewayBot{}, ErrUnauthorized
	}
	if resp.StatusCode != http.StatusOK {
		return GatewayBot{}, fmt.Errorf("runtime: GET /gateway/bot: %s", resp.Status)
	}
	var gb GatewayBot
	if err := json.NewDecoder(resp.Body).Decode(&gb); err != nil {
		return GatewayBot{}, fmt.Errorf("runtime: GET /gateway/bot: %w", err)
	}
	return gb, nil
}

// Run asks Discord for the shard count and limits, starts every cluster,
// and supervises them until ctx ends or Shutdown is called (it then
// returns nil), or a fatal gateway close (it returns that error).
func (r *Runtime) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.running {
		r.mu.Unlock()
		return errors.New("runtime: Run called twice")
	}
	r.running = true
	r.started = time.Now()
	ctx, cancel := context.WithCancel(ctx)
	r.cancel = cancel
	r.mu.Unlock()
	defer close(r.stopped)
	defer cancel()

	gb, err := r.gatewayBot(ctx)
	if err != nil {
		return err
	}
	total, first, last, mc, err := r.resolve(gb)
	if err != nil {
		return err
	}
	queue := r.cfg.IdentifyQueue
	if queue == nil {
		q, err := NewLocalIdentifyQueue(mc, r.cfg.IdentifyInterval)
		if err != nil {
			return err
		}
		queue = q
	}
	defer queue.Close(context.Background())
	n := r.cfg.Clusters
	if n == 0 {
		n = min(goruntime.NumCPU(), last-first+1)
	}
	gatewayURL := r.cfg.GatewayURL
	if gatewayURL == "" {
		gatewayURL = gb.URL
	}

	var wg sync.WaitGroup
	fatal := make(chan error, 1)
	shardsToRun := last - first + 1
	for i, ids := range plan(first, last, n) {
		c := &cluster{id: i, shards: ids}
		r.mu.Lock()
		r.clusters = append(r.clusters, c)
		r.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.supervise(ctx, c, total, gatewayURL, queue, shardsToRun, fatal)
		}()
	}
	var runErr error
	select {
	case <-ctx.Done():
	case <-r.shutdown:
	case runErr = <-fatal:
		r.events.emit(Event{Kind: EventFatal, Cluster: -1, Shard: -1, Err: runErr})
	}
	cancel()
	wg.Wait()
	r.events.emit(Event{Kind: EventShutdown, Cluster: -1, Shard: -1})
	return runErr
}

// resolve turns config and /gateway/bot into the fleet's shard count,
// this runtime's range and the identify concurrency.
func (r *Runtime) resolve(gb GatewayBot) (total, first, last, mc int, err error) {
	mc = gb.SessionStartLimit.MaxConcurrency
	if r.cfg.MaxConcurrencyOverride > 0 {
		mc = r.cfg.MaxConcurrencyOverride
	}
	mc = max(mc, 1)
	switch {
	case r.cfg.TotalShards > 0:
		total = r.cfg.TotalShards
	case r.cfg.Shards > 0:
		total = r.cfg.Shards
	default:
		total = max(gb.Shards, 1)
		if r.cfg.GuildsPerShard > 0 {
			total = (gb.Shards*1000 + r.cfg.GuildsPerShard - 1) / r.cfg.GuildsPerShard
		}
		if mc > 1 {
			total = (total + mc - 1) / mc * mc
		}
	}
	if mc > 1 && total%mc != 0 {
		lo, hi := total/mc*mc, (total/mc+1)*mc
		return 0, 0, 0, 0, fmt.Errorf("runtime: Shards (%d) must be a multiple of %d for a bot with max_concurrency %d (Discord's large-bot sharding): use %d or %d",
			total, mc, mc, max(lo, mc), hi)
	}
	first, last = 0, total-1
	if r.cfg.TotalShards > 0 {
		first, last = r.cfg.FirstShardID, r.cfg.LastShardID
	}
	if n := last - first + 1; r.cfg.Clusters > n {
		return 0, 0, 0, 0, fmt.Errorf("runtime: Clusters (%d) > Shards (%d): lower Clusters", r.cfg.Clusters, n)
	}
	if rem := gb.SessionStartLimit.Remaining; gb.SessionStartLimit.Total > 0 && rem < last-first+1 {
		reset := time.Duration(gb.SessionStartLimit.ResetAfter) * time.Millisecond
		return 0, 0, 0, 0, fmt.Errorf("runtime: %d session starts remain today but %d shards must identify: wait until the limit resets in %s (at %s) or run fewer shards",
			rem, last-first+1, reset.Round(time.Second), time.Now().Add(reset).Format(time.RFC3339))
	}
	return total, first, last, mc, nil
}

// supervise runs one cluster: it builds a group, runs the user's Setup,
// starts the shards, and restarts the group with back-off when it does not
// become ready within ClusterTimeout, at most MaxRestarts times per
// RestartWindow; then the cluster is reported failed.
func (r *Runtime) supervise(ctx context.Context, c *cluster, total int, gatewayURL string, queue IdentifyQueue, fleet int, fatal chan<- error) {
	var restarts []time.Time
	backoff := r.cfg.RestartBackoff
	for {
		g, b, ready, err := r.startGroup(ctx, c, total, gatewayURL, queue, fleet, fatal)
		if err != nil {
			select {
			case fatal <- err:
			default:
			}
			return
		}
		restart := false
		if r.cfg.ClusterTimeout > 0 {
			t := time.NewTimer(r.cfg.ClusterTimeout)
			select {
			case <-ctx.Done():
			case <-ready:
			case <-t.C:
				restart = true
			}
			t.Stop()
		}
		if !restart {
			<-ctx.Done() // ready, or no bound: serve until the runtime stops
		}
		r.stopGroup(g, b)
		if !restart {
			return
		}
		now := time.Now()
		kept := restarts[:0]
		for _, t := range restarts {
			if now.Sub(t) < r.cfg.RestartWindow {
				kept = append(kept, t)
			}
		}
		restarts = append(kept, now)
		if r.cfg.MaxRestarts >= 0 && len(restarts) > r.cfg.MaxRestarts {
			r.events.emit(Event{Kind: EventClusterFailed, Cluster: c.id, Shard: -1,
				Err: fmt.Errorf("cluster %d not ready within %s after %d restarts", c.id, r.cfg.ClusterTimeout, r.cfg.MaxRestarts)})
			return
		}
		r.events.emit(Event{Kind: EventClusterRestarted, Cluster: c.id, Shard: -1, N: len(restarts), Of: max(r.cfg.MaxRestarts, 0)})
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
		backoff = min(2*backoff, time.Minute)
	}
}

func (r *Runtime) startGroup(ctx context.Context, c *cluster, total int, gatewayURL string, queue IdentifyQueue, fleet int, fatal chan<- error) (*shardgroup.Group, Bot, chan struct{}, error) {
	ready := make(chan struct{})
	var readyOnce sync.Once
	var readyShards sync.Map
	hooks := shardgroup.Hooks{
		Identify: func(g *shardgroup.Group, shard int) {
			r.events.emit(Event{Kind: EventShardIdentify, Cluster: g.ID(), Shard: shard})
		},
		ShardReady: func(g *shardgroup.Group, shard, guilds int, resumed bool) {
			if resumed {
				r.events.emit(Event{Kind: EventShardResumed, Cluster: g.ID(), Shard: shard})
			}
			if _, seen := readyShards.LoadOrStore(shard, true); seen {
				return
			}
			n := int(r.ready.Add(1))
			r.events.emit(Event{Kind: EventShardReady, Cluster: g.ID(), Shard: shard, N: n, Of: fleet, Duration: time.Since(r.started)})
			if g.State() == shardgroup.StateReady {
				readyOnce.Do(func() {
					close(ready)
					r.events.emit(Event{Kind: EventClusterReady, Cluster: g.ID(), Shard: -1, Duration: time.Since(r.started)})
				})
			}
			if n == fleet {
				r.events.emit(Event{Kind: EventFleetReady, Cluster: -1, Shard: -1, N: n, Of: fleet, Duration: time.Since(r.started)})
			}
		},
		ShardState: func(g *shardgroup.Group, shard int, from, to shardgroup.State) {
			if from == shardgroup.StateReady && to == shardgroup.StateDisconnected {
				r.events.emit(Event{Kind: EventShardDisconnected, Cluster: g.ID(), Shard: shard})
			}
		},
		Fatal: func(g *shardgroup.Group, err *shardgroup.CloseError) {
			select {
			case fatal <- fmt.Errorf("runtime: cluster %d: %w", g.ID(), err):
			default:
			}
		},
	}
	g, err := shardgroup.New(shardgroup.Config{
		ID: c.id, ShardIDs: c.shards, ShardCount: total, Token: string(r.cfg.Token), GatewayURL: gatewayURL,
		Intents: r.cfg.Intents, IdentifyLimiter: queue, Logger: r.cfg.Logger, Presence: r.cfg.StartingStatus,
		ClientOptions: r.clientOptions(), Hooks: hooks,
	})
	if err != nil {
		return nil, nil, nil, err
	}
	b := r.cfg.Bot(c.id)
	if err := b.Setup(ctx, g); err != nil {
		return nil, nil, nil, fmt.Errorf("runtime: cluster %d: Setup: %w", c.id, err)
	}
	c.mu.Lock()
	c.group, c.bot = g, b
	c.mu.Unlock()
	g.Start(ctx)
	return g, b, ready, nil
}

// clientOptions are the options every cluster's disgo client gets: the
// REST base URL and the shared limiter, then the user's.
func (r *Runtime) clientOptions() []bot.ConfigOpt {
	var restOpts []rest.ConfigOpt
	if r.cfg.RESTURL != "" {
		restOpts = append(restOpts, rest.WithURL(r.cfg.RESTURL))
	}
	if r.cfg.RESTLimiter != nil {
		restOpts = append(restOpts, r.cfg.RESTLimiter.ConfigOpt())
	}
	return append([]bot.ConfigOpt{bot.WithRestClientConfigOpts(restOpts...)}, r.cfg.ClientOptions...)
}

// RESTLimiter is the limiter every cluster's REST client shares, or nil.
func (r *Runtime) RESTLimiter() *restproxy.Limiter { return r.cfg.RESTLimiter }

// stopGroup runs the Bot's Shutdown hook (bounded by ShutdownTimeout) and
// stops the group's shards.
func (r *Runtime) stopGroup(g *shardgroup.Group, b Bot) {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.ShutdownTimeout)
	defer cancel()
	if s, ok := b.(BotShutdowner); ok {
		if err := s.Shutdown(ctx); err != nil {
			r.cfg.Logger.Warn("cluster shutdown hook failed", "cluster", g.ID(), "err", err.Error())
		}
	}
	_, _ = g.Stop(ctx, false)
	g.Client().Rest().Close(ctx)
}

// Shutdown stops every cluster (their Shutdown hooks first, each bounded
// by ShutdownTimeout) and waits for Run to return, or for ctx.
func (r *Runtime) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	running := r.running
	select {
	case <-r.shutdown:
	default:
		close(r.shutdown)
	}
	r.mu.Unlock()
	if !running {
		return nil
	}
	select {
	case <-r.stopped:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("runtime: shutdown: %w", ctx.Err())
	}
}

// Groups returns the clusters' current groups, in cluster order.
func (r *Runtime) Groups() []*shardgroup.Group {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*shardgroup.Group, 0, len(r.clusters))
	for _, c := range r.clusters {
		c.mu.Lock()
		if c.group != nil {
			out = append(out, c.group)
		}
		c.mu.Unlock()
	}
	return out
}
