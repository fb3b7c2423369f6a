package multihost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/natsfleet"
)

// HostEnv is the environment variable that carries a host process's
// [HostArgs] as JSON: the environment, not the command line, since they
// hold the NATS password and the bot token.
const HostEnv = "FLEET_MULTIHOST_HOST"

// HostArgs is what a host process needs to join the fleet.
type HostArgs struct {
	NATS           natsfleet.ConnectInfo `json:"nats"`
	Prefix         string                `json:"prefix"`
	ID             string                `json:"id"`
	Token          string                `json:"token"`
	GatewayURL     string                `json:"gateway_url"`
	RESTURL        string                `json:"rest_url"`
	Shards         int                   `json:"shards"`
	Clusters       int                   `json:"clusters"`
	MaxConcurrency int                   `json:"max_concurrency"`
	IdentifyWindow time.Duration         `json:"identify_window"`
	LeaseTTL       time.Duration         `json:"lease_ttl"`
	Checkpoint     time.Duration         `json:"checkpoint"`
	// Only: use NATS.URL alone, not the servers the cluster tells of
	// (for a host behind a [Cutter]).
	Only bool `json:"only"`
	// NATSNodes, when set, makes the process the fleet's NATS cluster of
	// that many nodes instead of a host (see [Nodes]); no other field is
	// read then.
	NATSNodes int `json:"nats_nodes,omitempty"`
}

// Config describes a fleet of host processes. Zero fields take the
// defaults in brackets.
type Config struct {
	// Exe and Args run this program again as a host, and as the NATS
	// cluster's process ([Nodes]): the process must call [RunHostFromEnv]
	// when HostEnv is set.
	Exe  string
	Args []string
	// Hosts is the number of host processes [3]; Nodes the NATS nodes [3].
	Hosts, Nodes int
	// Shards [12] in Clusters [6], Guilds [Shards*8] in the simulator,
	// MaxConcurrency [4] and IdentifyWindow [50 ms] its identify rule.
	Shards, Clusters, Guilds, MaxConcurrency int
	IdentifyWindow                           time.Duration
	// LeaseTTL [2 s] and Checkpoint [250 ms] go to every host.
	LeaseTTL, Checkpoint time.Duration
	// Prefix names the fleet on NATS ["fleet"].
	Prefix string
	// Grace is how long a host may still deliver a cluster after its
	// lease changed hands, for reports in flight [250 ms].
	Grace time.Duration
	// Cuttable lists hosts that reach NATS only through a [Cutter] in
	// front of their node (see [Fleet.Cutter]).
	Cuttable []int
	// Logger receives progress; nil: none.
	Logger *slog.Logger
}

func (c *Config) defaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Hosts, 3)
	def(&c.Nodes, 3)
	def(&c.Shards, 12)
	def(&c.Clusters, 6)
	def(&c.Guilds, c.Shards*8)
	def(&c.MaxConcurrency, 4)
	defD(&c.IdentifyWindow, 50*time.Millisecond)
	defD(&c.LeaseTTL, 2*time.Second)
	defD(&c.Checkpoint, 250*time.Millisecond)
	defD(&c.Grace, 250*time.Millisecond)
	if c.Prefix == "" {
		c.Prefix = "fleet"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Fleet is a NATS cluster (in a process of its own), a simulator and
// host processes, all on loopback, with a tally of what the hosts' listeners saw.
type Fleet struct {
	Cfg     Config
	NATS    *Nodes
	Discord *discordtest.Server
	Tally   *Tally
	Hosts   []*Proc // by index; a killed host stays, Exited
	IDs     []string
	cutters map[int]*Cutter
	nc      *nats.Conn
	closed  sync.Once
	err     error // Close's
}

// Start starts the NATS cluster, the simulator and cfg.Hosts hosts at
// once, and waits (bounded by ctx) until every shard is READY and every
// cluster leased.
func Start(ctx context.Context, cfg Config) (*Fleet, error) {
	cfg.defaults()
	f := &Fleet{Cfg: cfg, cutters: map[int]*Cutter{}}
	var err error
	if f.NATS, err = StartNodes(ctx, cfg.Exe, cfg.Args, cfg.Nodes); err != nil {
		return nil, err
	}
	f.Discord = discordtest.NewServer(discordtest.WithGuilds(cfg.Guilds), discordtest.WithRecommendedShards(cfg.Shards),
		discordtest.WithMaxConcurrency(cfg.MaxConcurrency), discordtest.WithIdentifyWindow(cfg.IdentifyWindow))
	if f.nc, err = f.NATS.Connect(ctx, natsfleet.Logger(cfg.Logger)); err != nil {
		f.Close()
		return nil, err
	}
	if f.Tally, err = NewTally(f.nc, cfg.Prefix, cfg.Grace); err != nil {
		f.Close()
		return nil, err
	}
	for i := range cfg.Hosts {
		if err := f.StartHost(i); err != nil {
			f.Close()
			return nil, err
		}
	}
	for _, p := range f.Hosts {
		if _, err := p.Await(ctx, "ready"); err != nil {
			f.Close()
			return nil, err
		}
	}
	if err := f.Tally.WatchLeases(ctx, f.nc, cfg.Prefix); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.AwaitSettled(ctx); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// StartHost starts host i (a new process for the same ID if it ran
// before), connected first to NATS node i % Nodes.
func (f *Fleet) StartHost(i int) error {
	id := fmt.Sprintf("host-%d", i)
	info := f.NATS.ConnectInfo()
	info.URL = f.NATS.ClientURL(i % f.NATS.Len())
	a := HostArgs{NATS: info, Prefix: f.Cfg.Prefix, ID: id, Token: f.Discord.Token(),
		GatewayURL: f.Discord.GatewayURL(), RESTURL: f.Discord.RESTURL(), Shards: f.Cfg.Shards, Clusters: f.Cfg.Clusters,
		MaxConcurrency: f.Cfg.MaxConcurrency, IdentifyWindow: f.Cfg.IdentifyWindow, LeaseTTL: f.Cfg.LeaseTTL,
		Checkpoint: f.Cfg.Checkpoint}
	if slices.Contains(f.Cfg.Cuttable, i) {
		c := f.cutters[i]
		if c == nil {
			var err error
			if c, err = NewCutter(strings.TrimPrefix(info.URL, "nats://")); err != nil {
				return err
			}
			f.cutters[i] = c
		}
		a.NATS.URL, a.Only = "nats://"+c.Addr(), true
	}
	raw, err := json.Marshal(a)
	if err != nil {
		return err
	}
	p, err := StartProc(id, f.Cfg.Exe, f.Cfg.Args, []string{HostEnv + "=" + string(raw)})
	if err != nil {
		return err
	}
	for len(f.Hosts) <= i {
		f.Hosts = append(f.Hosts, nil)
		f.IDs = append(f.IDs, "")
	}
	f.Hosts[i], f.IDs[i] = p, id
	return nil
}

// AwaitSettled waits until every cluster's lease has a live owner and
// every shard is READY in the simulator.
func (f *Fleet) AwaitSettled(ctx context.Context) error {
	for {
		owners := f.Tally.Owners()
		leased := 0
		for c := range f.Cfg.Clusters {
			if o := owners[c]; o != "" && f.live(o) {
				leased++
			}
		}
		st := f.Discord.Stats()
		ready := 0
		for s := range f.Cfg.Shards {
			if st.ReadyShards[s] > 0 {
				ready++
			}
		}
		if leased == f.Cfg.Clusters && ready == f.Cfg.Shards {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waited for every cluster leased by a live host and every shard READY: %d of %d clusters leased (%v), %d of %d shards READY: %w",
				leased, f.Cfg.Clusters, owners, ready, f.Cfg.Shards, context.Cause(ctx))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (f *Fleet) live(id string) bool {
	i := slices.Index(f.IDs, id)
	return i >= 0 && !f.Hosts[i].Exited()
}

// ShardsOf returns the shards of the clusters whose lease host i holds.
func (f *Fleet) ShardsOf(i int) []int {
	owners := f.Tally.Owners()
	var shards []int
	for s := range f.Cfg.Shards {
		if c, ok := f.Tally.ClusterOf(s); ok && owners[c] == f.IDs[i] {
			shards = append(shards, s)
		}
	}
	return shards
}

// ClustersOf returns the clusters whose lease host i holds.
func (f *Fleet) ClustersOf(i int) []int {
	var out []int
	for c, o := range f.Tally.Owners() {
		if o == f.IDs[i] {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return out
}

// Cutter returns the proxy between host i and NATS, if Cuttable lists it.
func (f *Fleet) Cutter(i int) *Cutter { return f.cutters[i] }

// Kill kills host i with SIGKILL and reaps it.
func (f *Fleet) Kill(i int) { f.Hosts[i].Kill() }

// Drain asks host i to hand its clusters over, and waits for it to say
// it is done.
func (f *Fleet) Drain(ctx context.Context, i int) error {
	if err := f.Hosts[i].Send("drain"); err != nil {
		return fmt.Errorf("drain %s: %w", f.IDs[i], err)
	}
	line, err := f.Hosts[i].Await(ctx, "drained")
	if err != nil {
		return err
	}
	if rest := strings.TrimSpace(strings.TrimPrefix(line, "drained")); rest != "" {
		return fmt.Errorf("drain %s: %s", f.IDs[i], rest)
	}
	return nil
}

// Close stops every host still running (closing its stdin, then killing
// it after 10 s), the tally, the simulator and the NATS cluster. Later
// calls return the first one's result.
func (f *Fleet) Close() error {
	f.closed.Do(func() { f.err = f.close() })
	return f.err
}

func (f *Fleet) close() error {
	var errs []error
	for _, p := range f.Hosts {
		if p == nil || p.Exited() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := p.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p.Name, err))
		}
		cancel()
	}
	for _, c := range f.cutters {
		c.Close()
	}
	if f.Tally != nil {
		f.Tally.Close()
	}
	if f.nc != nil {
		f.nc.Close()
	}
	if f.Discord != nil {
		f.Discord.Close()
	}
	if f.NATS != nil {
		if err := f.NATS.Close(); err != nil {
			errs = append(errs, fmt.Errorf("the NATS cluster: %w", err))
		}
	}
	return errors.Join(errs...)
}
