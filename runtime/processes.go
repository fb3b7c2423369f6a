package runtime

import (
	"context"
	"log/slog"
	"net/url"
	"slices"
	"time"

	"github.com/disgoorg/disgo/gateway"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/restproxy"
	"github.com/gofleet/fleet/shardgroup"
)

// Processes runs each cluster of a fleet in a child process of the same
// executable (process mode), so that a crash, a panic outside the
// listeners' guard or a memory leak costs one cluster only. Set
// Config.Processes to natsfleet.Processes(...); nothing else in the
// program changes. The same program then runs as the parent and as every
// child: Run in the parent plans the fleet, runs the services and
// supervises one child per cluster; Run in a child serves its cluster
// only. With Processes nil, everything runs in this process as before.
//
// The children share the parent's bus, identify queue and session store
// (the implementation's, across the processes); Config.SessionStore, if
// set, seeds that store at start and receives the fleet's sessions when it
// stops, and Config.Bus must be nil.
//
// Reshard starts the new plan's clusters as new children that identify
// at the new shard count and deliver nothing (their caches fill) while
// the old children serve; once every new shard is ready, the new
// children deliver, then the old ones deliver what the gateway had sent
// them until then (ChildProcess.Sync), nothing more, and stop (their
// sessions end), and the store keeps the new count's sessions only. None
// is lost; an event both generations receive between the new children's
// first delivery and the old ones' last is delivered twice, where the
// cut-over in one process delivers each once.
//
// The runtime calls an implementation in this order; it starts nothing
// before Start.
type Processes interface {
	// Transport returns the transport of the parent's bus. New calls it
	// once, when Config.Bus is nil; it must start nothing: until Start,
	// the transport carries messages within this process.
	Transport() bus.Transport
	// Child is the first thing Run does. In a process that the parent
	// started as a child, it serves that child's cluster with cfg (the
	// program's Config) as a member of the parent's fleet, calls ready
	// once every shard of the cluster is ready, and returns true and the
	// result of the member's Run when ctx ends or the parent stops it. In
	// any other process it returns false at once.
	Child(ctx context.Context, cfg Config, ready func()) (isChild bool, err error)
	// Start is called by Run in the parent once the fleet is planned,
	// before the services and the clusters start. Run closes the pool it
	// returns once every child has stopped.
	Start(ctx context.Context, f ProcessFleet) (ProcessPool, error)
}

// ProcessFleet is what the parent's Run planned, for Processes.Start.
type ProcessFleet struct {
	Token            Token
	Shards           int // the fleet's shard count
	MaxConcurrency   int
	IdentifyInterval time.Duration
	GatewayURL       string
	// RESTURL is Config.RESTURL (empty: Discord's); RESTLimiter is the
	// fleet's limiter (nil with Config.NoSharedRESTLimiter), which the
	// children's REST calls go through.
	RESTURL     string
	RESTLimiter *restproxy.Limiter
	// SessionStore is Config.SessionStore: the children keep the fleet's
	// sessions in a store of the implementation's, which starts with
	// these and gives them back when the fleet stops.
	SessionStore SessionStore
	// ShutdownTimeout is Config.ShutdownTimeout: how long a child has to
	// stop before it is killed is derived from it.
	ShutdownTimeout time.Duration
	Logger          *slog.Logger

	// Clusters is the fleet's plan: the clusters Spawn will be asked for,
	// and their shards.
	Clusters []ClusterPlan
	// Intents, Presence and Compression are those the clusters' shards
	// identify and connect with (Config.Intents, StartingStatus and
	// Compression), for a pool that opens sessions on the children's
	// behalf.
	Intents     gateway.Intents
	Presence    *gateway.MessageDataPresenceUpdate
	Compression shardgroup.Compression
	// Pacer paces the connections of the shards a pool identifies itself
	// (Config.ConnectAhead; nil: they connect at once).
	Pacer *shardgroup.Pacer
	// Resumable reports whether a session of SessionStore would be
	// resumed by a child (the checks Run makes on stored sessions).
	Resumable func(shardgroup.Session) bool
	// Report receives the lifecycle events of what the pool does itself,
	// outside the children (the ShardIdentify of a session it opens). It
	// must not block.
	Report func(Event)
}

// ProcessPool starts the children of a fleet.
type ProcessPool interface {
	// Spawn starts the child process of one cluster and returns once the
	// child is set up: its Bot's Setup has returned, and it is waiting for
	// its sessions (ResumeHandOver) or its shards are connecting. It fails
	// if the child exits first or ctx ends (the child is then killed).
	Spawn(ctx context.Context, spec ChildSpec) (ChildProcess, error)
	// Resharded tells the pool that the fleet now runs shards shards:
	// the sessions stored for any other shard count are removed (they
	// are never resumed). It is called once the old children of a
	// reshard have stopped.
	Resharded(ctx context.Context, shards int) error
	// Close kills what is left of the children, waits for them and stops
	// what Start started.
	Close(ctx context.Context) error
}

// ResumeMode says which sessions a child's shards resume.
type ResumeMode int

const (
	// ResumeStored resumes the sessions checkpointed in the fleet's
	// session store that are fresh enough (a start, a crash).
	ResumeStored ResumeMode = iota
	// ResumeNone identifies every shard (a hard restart).
	ResumeNone
	// ResumeHandOver waits for ChildProcess.Resume (a soft restart).
	ResumeHandOver
)

// ChildSpec is one child to start.
type ChildSpec struct {
	Cluster    int   // the cluster's fleet-wide ID
	Shards     []int // its shard IDs
	ShardCount int   // the fleet's shard count (0: ProcessFleet.Shards)
	Resume     ResumeMode
	// Standby starts a reshard's new child: its shards identify, but it
	// delivers no event, serves no bus address and saves no session
	// until ChildProcess.Deliver.
	Standby bool
	// Report receives the child's lifecycle events (ShardIdentify,
	// ShardReady, ShardResumed, ShardDisconnected, ShardClosed,
	// ShardZombie, ListenerPanic, ClusterReady, Fatal) in the order the
	// child emitted them. It must not block.
	Report func(Event)
}

// ChildProcess is one running child, as the parent's supervisor sees it.
type ChildProcess interface {
	// Pid is the child's process ID.
	Pid() int
	// Exited is closed when the process has exited; Err then says how.
	Exited() <-chan struct{}
	Err() error
	// HandOver asks the child to close its shards resumably and returns
	// their exact sessions (the last event each delivered); the child's
	// Bot stops with them and the process exits.
	HandOver(ctx context.Context) (map[int]shardgroup.Session, error)
	// Resume gives a child started with ResumeHandOver the sessions its
	// shards resume (nil: those in the session store).
	Resume(ctx context.Context, sessions map[int]shardgroup.Session) error
	// Sync returns once the child's shards have handed their listeners
	// the events the gateway had sent them when the call began (see
	// Runtime.Sync). With last, the child delivers no event after that
	// (it is about to stop, and another serves its guilds).
	Sync(ctx context.Context, last bool) error
	// Deliver makes a child started with ChildSpec.Standby deliver its
	// events from now on, take its cluster's bus address over and save
	// its sessions.
	Deliver(ctx context.Context) error
	// Stop stops the child: its Bot's Shutdown hook, then its shards,
	// closed resumably with their sessions saved if keep, else ending
	// their sessions. It kills the process if it has not exited when ctx
	// ends, and returns once it has exited.
	Stop(ctx context.Context, keep bool) error
}

// processFleet is what Processes.Start gets: the planned fleet.
func (r *Runtime) processFleet(total, mc int, gatewayURL string, clusters []ClusterPlan) ProcessFleet {
	plan := make([]ClusterPlan, len(clusters))
	for i, cp := range clusters {
		plan[i] = ClusterPlan{ID: cp.ID, Shards: slices.Clone(cp.Shards)}
	}
	gw, gwErr := url.Parse(gatewayURL)
	return ProcessFleet{Token: r.cfg.Token, Shards: total, MaxConcurrency: mc,
		IdentifyInterval: r.cfg.IdentifyInterval, GatewayURL: gatewayURL, RESTURL: r.cfg.RESTURL,
		RESTLimiter: r.cfg.RESTLimiter, SessionStore: r.cfg.SessionStore, ShutdownTimeout: r.cfg.ShutdownTimeout,
		Logger: r.cfg.Logger, Clusters: plan, Intents: r.cfg.Intents, Presence: r.cfg.StartingStatus,
		Compression: r.cfg.Compression,
		Resumable: func(s shardgroup.Session) bool {
			return gwErr == nil && checkSession(s, time.Now(), total, gw, r.cfg.SessionMaxAge) == ""
		},
		Report: func(e Event) {
			if e, ok := e.(ShardIdentify); ok {
				r.startup.identified(e.Shard)
			}
			r.events.emit(e)
		},
	}
}
