package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	goruntime "runtime"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/cache"
	"github.com/disgoorg/disgo/gateway"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/restproxy"
	"github.com/gofleet/fleet/services"
	"github.com/gofleet/fleet/shardgroup"
)

// Bot is the user's code for one cluster instance: Setup registers
// listeners on the group's disgo client before its shards connect. The
// group is the cluster as its code sees it (ID, shards, disgo client, bus
// client, logger); the runtime starts and stops it.
//
// Setup's ctx lives as long as the instance: it is cancelled when the
// instance stops, when the fleet stops, or when Setup does not return
// within ClusterTimeout. A Setup that fails or panics counts against
// MaxRestarts and the cluster is started again after a back-off; only an
// error wrapping ErrFatal stops the whole fleet.
type Bot interface {
	Setup(ctx context.Context, g *shardgroup.Group) error
}

// BotShutdowner is a Bot with a hook that runs when its cluster stops,
// bounded by Config.ShutdownTimeout.
type BotShutdowner interface {
	Shutdown(ctx context.Context) error
}

// BotFunc adapts a function to Bot.
type BotFunc func(ctx context.Context, g *shardgroup.Group) error

// Setup calls f.
func (f BotFunc) Setup(ctx context.Context, g *shardgroup.Group) error { return f(ctx, g) }

// Token is a bot token: the shards' own type, which redacts itself in
// logs, formatted output and encodings.
type Token = shardgroup.Token

// WhatToLog filters the runtime's event log records by kind, as
// eris-fleet's whatToLog: with Allow set only those kinds are logged,
// kinds in Deny never are. Warnings and errors are always logged.
type WhatToLog struct {
	Allow []EventKind
	Deny  []EventKind
}

// Config configures a Runtime. Zero fields take the defaults given.
type Config struct {
	// Token is the bot token. Required.
	Token Token
	// Shards is the fleet's shard count; 0 asks GET /gateway/bot.
	Shards int
	// GuildsPerShard rescales the recommended count when Shards is 0:
	// ceil(recommended × 1000 / GuildsPerShard). At most 2500.
	GuildsPerShard int
	// Clusters is how many groups the shards are split into, as contiguous
	// ranges; 0 means one per CPU (eris-fleet's default), never more than
	// shards. Set it or ShardsPerCluster, not both.
	Clusters int
	// ShardsPerCluster sizes clusters instead of counting them
	// (discord-hybrid-sharding's shardsPerClusters): ceil(shards /
	// ShardsPerCluster) clusters, the first ones one shard longer when
	// they do not divide evenly. A Reshard keeps the size. 0: Clusters
	// decides.
	ShardsPerCluster int
	// TotalShards, FirstShardID and LastShardID make this runtime run a
	// slice of a bigger fleet: shards FirstShardID..LastShardID (inclusive)
	// of TotalShards. With TotalShards 0 the runtime runs every shard.
	TotalShards, FirstShardID, LastShardID int
	// Intents for every shard (default: guilds and guild messages).
	Intents gateway.Intents
	// Bot builds the user's code for a cluster instance. Required.
	Bot func(cluster int) Bot
	// ClientOptions apply to every cluster's disgo client (caches,
	// listeners, a custom REST client...): eris-fleet's customClient.
	ClientOptions []bot.ConfigOpt
	// CacheFlags are the disgo caches every cluster's client keeps
	// (default: guilds, channels, roles and members, which the fetch
	// commands and the stats read). A ClientOption setting the cache
	// config's CacheFlags overrides it.
	CacheFlags cache.Flags
	// GatewayURL and RESTURL override Discord's (point them at
	// discordtest in tests).
	GatewayURL, RESTURL string
	// Compression is the gateway transport compression (default
	// shardgroup.DefaultCompression, zstd-stream; CompressionNone for
	// plain JSON).
	Compression shardgroup.Compression
	// MaxConcurrencyOverride replaces /gateway/bot's max_concurrency.
	MaxConcurrencyOverride int
	// IdentifyInterval is the time between two IDENTIFYs of a bucket
	// (default 5 s, Discord's).
	IdentifyInterval time.Duration
	// IdentifyQueue replaces the in-process queue (a cross-host one).
	IdentifyQueue IdentifyQueue
	// ConnectAhead is how many shards of an identify bucket connect
	// before their turn (default 1): the bucket's next shard dials when
	// one of them is granted its turn, so that a start does not dial
	// every shard at once (see shardgroup.Pacer). Negative: every shard
	// connects at once. With an IdentifyQueue that reserves turns
	// (shardgroup.TurnReserver: natsfleet's), the reservations pace the
	// dials and ConnectAhead is not used: every shard takes its turn in
	// the queue's order at once, and dials once that turn is the
	// bucket's next.
	ConnectAhead int
	// RESTLimiter is the REST rate limiter every cluster's client shares
	// (eris-fleet's central request handler). Nil builds one with
	// Discord's limits; set RESTLimiterConfig to tune it (a raised global
	// limit), or give clients your own limiter through ClientOptions and
	// set NoSharedRESTLimiter.
	RESTLimiter         *restproxy.Limiter
	RESTLimiterConfig   restproxy.Config
	NoSharedRESTLimiter bool
	// ClusterTimeout bounds how long a cluster may take to become ready,
	// its Setup included; a cluster not ready in time is restarted. The
	// default is derived from the cluster's place in the identify queue:
	// (windows ahead of its last shard + 1) × IdentifyInterval + 30 s,
	// where the windows ahead of shard s are (s − first shard) /
	// max_concurrency, the IDENTIFYs of its bucket that come first when
	// every shard queues at once. A healthy large cluster waiting its turn
	// is never cut short; one that never becomes ready is caught.
	ClusterTimeout time.Duration
	// ShutdownTimeout bounds stopping (default 10 s): a Bot's Shutdown
	// hook, a cluster's shards, and Shutdown as a whole, which names what
	// did not stop in time.
	ShutdownTimeout time.Duration
	// MaxRestarts is how many times a cluster is restarted within
	// RestartWindow before it is reported failed (default 5; -1: never
	// give up): after a Setup that fails or panics, or ClusterTimeout.
	// Back-off between restarts doubles from RestartBackoff (default 1 s)
	// up to a minute, plus up to a quarter at random; it starts again
	// from RestartBackoff once the cluster has been ready for a minute.
	MaxRestarts    int
	RestartWindow  time.Duration
	RestartBackoff time.Duration
	// Logger receives the runtime's records (default: discarded).
	Logger *slog.Logger
	// WhatToLog filters event records.
	WhatToLog WhatToLog
	// SessionStore keeps sessions across process restarts: Run resumes
	// the stored ones and, when it stops, closes shards with a resumable
	// code and saves their sessions. A resumed process starts with empty
	// caches: Discord replays only the events it missed.
	SessionStore SessionStore
	// SessionMaxAge is how old a stored session may be to be resumed
	// (default 3 minutes; Discord keeps sessions "a few minutes").
	SessionMaxAge time.Duration
	// CheckpointInterval is how often, with a SessionStore, the live
	// sessions of every cluster are saved while the fleet runs (default 1
	// s; CheckpointOff, or any negative value, saves them only when Run
	// stops). A checkpointed sequence is the last event delivered to the
	// listeners: a process that dies without stopping is resumed from its
	// last checkpoint, Discord replays what came after it, and the events
	// delivered since the checkpoint are delivered again.
	CheckpointInterval time.Duration
	// Member makes this runtime serve some clusters of a fleet whose
	// admiral runs elsewhere (another process or host); nil runs a whole
	// fleet. See Member.
	Member *Member
	// Services are the fleet's service actors, started (in order, or all
	// at once with StartServicesTogether) before any cluster; clusters
	// start once every service is ready. The central store is always
	// there, as the service named "store". Names must be unique.
	Services              []services.Spec
	ServiceTimeout        time.Duration // bounds a service's Start (0: none)
	StartServicesTogether bool
	// Bus is the IPC bus; nil makes one with RequestTimeout (eris-fleet's
	// fetchTimeout, default 10 s) and StrictBus (every payload round-trips
	// through JSON, so code that works here works across processes).
	Bus            *bus.Bus
	RequestTimeout time.Duration
	StrictBus      bool
	// StatsInterval is how often a StatsReport event carries a Stats
	// snapshot (default 60 s, eris-fleet's statsInterval; StatsOff, or any
	// negative value, sends none). Snapshots are taken on a goroutine of
	// their own, never on a shard's.
	StatsInterval time.Duration
	// StartingStatus is the presence shards identify with.
	StartingStatus *gateway.MessageDataPresenceUpdate
	// Processes, if set, runs each cluster in a child process of this
	// executable (natsfleet.Processes): see Processes. The program's main
	// stays the same; nil runs every cluster in this process.
	Processes Processes
}

const maxGuildsPerShard = 2500

// CheckpointOff as Config.CheckpointInterval saves sessions only when Run
// stops.
const CheckpointOff time.Duration = -1

// DefaultCheckpointInterval is Config.CheckpointInterval's default.
const DefaultCheckpointInterval = time.Second

// Member is the part of a fleet one runtime serves when the fleet spans
// several processes or hosts: the admiral (plan, services, operations for
// the whole fleet) runs elsewhere, and this runtime runs the clusters
// listed, under their fleet-wide IDs, on what the fleet shares.
//
// With Config.Member set, Config.Shards (the fleet's shard count),
// GatewayURL, IdentifyQueue (the fleet-wide queue) and Bus (the fleet's
// bus) are required, Run does not ask GET /gateway/bot, and serves
// neither the admiral nor services (Config.Services must be empty).
// SoftRestart, Restart and ShutdownCluster act on its clusters by ID;
// Reshard is refused. When Run stops, shards close resumably and their
// sessions are saved to the SessionStore, if one is set, as in a whole
// fleet.
type Member struct {
	// Clusters are the clusters to run: fleet-wide IDs (their bus
	// addresses are bus.Cluster(ID)) and shard IDs. Required; IDs and
	// shards must not repeat.
	Clusters []ClusterPlan
	// Resume, if set, is called for a cluster once its Setup has returned
	// and before its shards connect. The sessions it returns are resumed;
	// nil resumes the SessionStore's, as without Resume. It may block
	// until another process hands the sessions over: its ctx ends with the
	// cluster's ClusterTimeout or the fleet's stop. An error counts as a
	// failed start of the cluster.
	Resume func(ctx context.Context, cluster int) (map[int]shardgroup.Session, error)
	// Delivering, if set, is asked before each gateway event of a cluster
	// reaches its listeners; false keeps the event from them (the
	// cluster's caches still take it in): a reshard's new cluster does
	// not deliver before the switch, with its caches filled.
	Delivering func(cluster int) bool
	// Serving, if set, is asked before each gateway event of a cluster
	// reaches its client (before Delivering). False holds the event (and
	// the shard's reading): it is asked again every few milliseconds, and
	// the event goes on once it answers true. A shard that stops while
	// holding an event does not deliver it, and its session stops before
	// it, so that the session's next owner gets it replayed. A host whose
	// lease on the cluster has ended, or whose checkpoints fail, returns
	// false, so that it delivers nothing the cluster's next owner will
	// deliver again after resuming. It must not block.
	Serving func(cluster int) bool
	// Await, if set, is given to the shards of each cluster that have no
	// session to resume: such a shard waits for the session another
	// process opened for it and RESUMEs it, delivering its READY first,
	// or identifies when Await says it will not come (see
	// shardgroup.Config.Await). Process mode's warm start uses it.
	Await func(ctx context.Context, cluster, shard int) (sess shardgroup.Session, ready []byte, ok bool)
}

// memberShards is how many shards a member runs.
func memberShards(m *Member) int {
	n := 0
	for _, cp := range m.Clusters {
		n += len(cp.Shards)
	}
	return n
}

// concurrencyReporter is an IdentifyQueue that knows its max_concurrency.
type concurrencyReporter interface{ MaxConcurrency() int }

// memberConcurrency is a member's max_concurrency: the override, else the
// fleet queue's, else 1.
func memberConcurrency(c Config) int {
	if c.MaxConcurrencyOverride > 0 {
		return c.MaxConcurrencyOverride
	}
	if q, ok := c.IdentifyQueue.(concurrencyReporter); ok {
		return max(q.MaxConcurrency(), 1)
	}
	return 1
}

// ClusterPlan is one cluster of a fleet: its ID and its shards.
type ClusterPlan struct {
	ID     int   `json:"id"`
	Shards []int `json:"shards"`
}

// validate checks a Member against the fleet's shard count.
func (m *Member) validate(c Config) error {
	switch {
	case len(m.Clusters) == 0:
		return errors.New("runtime: Member.Clusters is empty: list the clusters this runtime runs")
	case c.Shards <= 0:
		return errors.New("runtime: Member needs Config.Shards, the fleet's shard count")
	case c.GatewayURL == "":
		return errors.New("runtime: Member needs Config.GatewayURL (the admiral's gateway URL): a member does not ask GET /gateway/bot")
	case c.IdentifyQueue == nil:
		return errors.New("runtime: Member needs Config.IdentifyQueue, the fleet-wide identify queue: a queue of its own would break Discord's identify limit")
	case c.Bus == nil:
		return errors.New("runtime: Member needs Config.Bus, the fleet's shared bus")
	case len(c.Services) > 0:
		return errors.New("runtime: Member with Config.Services: services run beside the admiral; remove them from the member's Config")
	case c.TotalShards > 0 || c.Clusters > 0 || c.ShardsPerCluster > 0:
		return errors.New("runtime: Member with TotalShards, Clusters or ShardsPerCluster: a member's clusters come from Member.Clusters; leave those at 0")
	}
	ids, shards := map[int]bool{}, map[int]bool{}
	for _, cp := range m.Clusters {
		if cp.ID < 0 || ids[cp.ID] {
			return fmt.Errorf("runtime: Member.Clusters: cluster ID %d is negative or repeated: give each cluster its own fleet-wide ID", cp.ID)
		}
		ids[cp.ID] = true
		if len(cp.Shards) == 0 {
			return fmt.Errorf("runtime: Member.Clusters: cluster %d has no shards", cp.ID)
		}
		for _, sh := range cp.Shards {
			if sh < 0 || sh >= c.Shards || shards[sh] {
				return fmt.Errorf("runtime: Member.Clusters: shard %d of cluster %d is outside 0..%d or repeated", sh, cp.ID, c.Shards-1)
			}
			shards[sh] = true
		}
	}
	return nil
}

// StatsOff as Config.StatsInterval turns the periodic StatsReport events off
// (eris-fleet's statsInterval "disable").
const StatsOff time.Duration = -1

// DefaultStatsInterval is Config.StatsInterval's default, eris-fleet's.
const DefaultStatsInterval = time.Minute

// withDefaults validates what can be checked before asking Discord and
// fills defaults. Errors say what to change.
func (c Config) withDefaults() (Config, error) {
	if c.Token == "" {
		return c, errors.New("runtime: Config.Token is empty: set it to the bot token from the developer portal")
	}
	if c.Bot == nil {
		return c, errors.New("runtime: Config.Bot is nil: set it to a function returning your cluster code")
	}
	if c.Shards < 0 || c.Clusters < 0 || c.TotalShards < 0 {
		return c, fmt.Errorf("runtime: Shards (%d), Clusters (%d) and TotalShards (%d) must not be negative", c.Shards, c.Clusters, c.TotalShards)
	}
	if c.ShardsPerCluster < 0 {
		return c, fmt.Errorf("runtime: ShardsPerCluster (%d) is negative: use 1 or more, or 0 to let Clusters decide", c.ShardsPerCluster)
	}
	if c.Clusters > 0 && c.ShardsPerCluster > 0 {
		return c, fmt.Errorf("runtime: Clusters (%d) and ShardsPerCluster (%d) are both set: remove one (Clusters fixes how many clusters, ShardsPerCluster how many shards each runs)",
			c.Clusters, c.ShardsPerCluster)
	}
	if c.GuildsPerShard > maxGuildsPerShard {
		return c, fmt.Errorf("runtime: GuildsPerShard (%d) > %d, Discord's limit: lower GuildsPerShard", c.GuildsPerShard, maxGuildsPerShard)
	}
	if c.TotalShards > 0 {
		if c.FirstShardID < 0 || c.LastShardID < c.FirstShardID || c.LastShardID >= c.TotalShards {
			return c, fmt.Errorf("runtime: shard range %d..%d is outside 0..%d (TotalShards %d): set 0 <= FirstShardID <= LastShardID < TotalShards",
				c.FirstShardID, c.LastShardID, c.TotalShards-1, c.TotalShards)
		}
		if c.Shards > 0 && c.Shards != c.TotalShards {
			return c, fmt.Errorf("runtime: Shards (%d) and TotalShards (%d) differ: set only TotalShards with a shard range", c.Shards, c.TotalShards)
		}
	} else if c.FirstShardID != 0 || c.LastShardID != 0 {
		return c, errors.New("runtime: FirstShardID/LastShardID need TotalShards: set TotalShards to the whole fleet's shard count")
	}
	if n := c.shardsToRun(c.Shards); n > 0 && c.Clusters > n {
		return c, fmt.Errorf("runtime: Clusters (%d) > Shards (%d): lower Clusters", c.Clusters, n)
	}
	switch c.Compression {
	case "", shardgroup.CompressionZstd, shardgroup.CompressionZlib, shardgroup.CompressionNone:
	default:
		return c, fmt.Errorf("runtime: Compression %q is unknown: use %q, %q or %q", string(c.Compression),
			shardgroup.CompressionZstd, shardgroup.CompressionZlib, shardgroup.CompressionNone)
	}
	if c.GatewayURL != "" {
		u, err := url.Parse(c.GatewayURL)
		if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
			return c, fmt.Errorf("runtime: GatewayURL %q is not a ws:// or wss:// URL with a host: set it to the gateway's URL (wss://gateway.discord.gg) or leave it empty", c.GatewayURL)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"IdentifyInterval", c.IdentifyInterval}, {"ClusterTimeout", c.ClusterTimeout}, {"ShutdownTimeout", c.ShutdownTimeout},
		{"RestartWindow", c.RestartWindow}, {"RestartBackoff", c.RestartBackoff}, {"SessionMaxAge", c.SessionMaxAge},
		{"ServiceTimeout", c.ServiceTimeout}, {"RequestTimeout", c.RequestTimeout},
	} {
		if d.v < 0 {
			return c, fmt.Errorf("runtime: %s (%s) is negative: use a positive duration, or 0 for the default", d.name, d.v)
		}
	}
	if c.GuildsPerShard < 0 || c.MaxConcurrencyOverride < 0 {
		return c, fmt.Errorf("runtime: GuildsPerShard (%d) and MaxConcurrencyOverride (%d) must not be negative: use 0 for Discord's values",
			c.GuildsPerShard, c.MaxConcurrencyOverride)
	}
	if c.MaxRestarts < -1 {
		return c, fmt.Errorf("runtime: MaxRestarts (%d) is below -1: use -1 to restart without limit, or 0 for the default (5)", c.MaxRestarts)
	}
	if c.Processes != nil && c.Member != nil {
		return c, errors.New("runtime: Config.Processes and Config.Member are both set: a member serves clusters of a fleet planned elsewhere; remove Processes")
	}
	if c.Processes != nil && c.Bus != nil {
		return c, errors.New("runtime: Config.Bus is set with Config.Processes: remove Bus (process mode builds the fleet's bus across the processes)")
	}
	if c.Intents == 0 {
		c.Intents = gateway.IntentGuilds | gateway.IntentGuildMessages
	}
	if c.IdentifyInterval == 0 {
		c.IdentifyInterval = 5 * time.Second
	}
	if c.StatsInterval == 0 {
		c.StatsInterval = DefaultStatsInterval
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	if c.MaxRestarts == 0 {
		c.MaxRestarts = 5
	}
	if c.RestartWindow == 0 {
		c.RestartWindow = 10 * time.Minute
	}
	if c.RestartBackoff == 0 {
		c.RestartBackoff = time.Second
	}
	if c.CacheFlags == 0 {
		c.CacheFlags = cache.FlagGuilds | cache.FlagChannels | cache.FlagRoles | cache.FlagMembers
	}
	if c.CheckpointInterval == 0 {
		c.CheckpointInterval = DefaultCheckpointInterval
	}
	if c.Member != nil {
		if err := c.Member.validate(c); err != nil {
			return c, err
		}
	}
	if c.SessionMaxAge == 0 {
		c.SessionMaxAge = 3 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// shardsToRun is how many shards this runtime runs for a fleet of total.
func (c Config) shardsToRun(total int) int {
	if c.TotalShards > 0 {
		return c.LastShardID - c.FirstShardID + 1
	}
	return total
}

// clusterCount is how many clusters run shards shards: Clusters, or
// ceil(shards / ShardsPerCluster), or one per CPU; never more than shards.
func (c Config) clusterCount(shards int) int {
	switch {
	case c.Clusters > 0:
		return c.Clusters
	case c.ShardsPerCluster > 0:
		return (shards + c.ShardsPerCluster - 1) / c.ShardsPerCluster
	}
	return min(goruntime.NumCPU(), shards)
}

// plan splits shards first..last into n contiguous ranges, the first ones
// one longer when they do not divide evenly.
func plan(first, last, n int) [][]int {
	total := last - first + 1
	out := make([][]int, 0, n)
	next := first
	for i := range n {
		size := total / n
		if i < total%n {
			size++
		}
		ids := make([]int, size)
		for j := range ids {
			ids[j] = next + j
		}
		next += size
		out = append(out, ids)
	}
	return out
}
