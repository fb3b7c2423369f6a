package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/sharding"
	"github.com/disgoorg/snowflake/v2"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/services"
)

// The IPC surface. Every operation is a command on the bus, so a service
// or a cluster can drive the fleet, and the same calls work when the bus
// spans processes. The typed helpers below wrap them.
//
// Admiral commands (to bus.Admiral):
const (
	CmdFetchGuild         = "fetch_guild"   // FetchRequest -> *discord.Guild
	CmdFetchChannel       = "fetch_channel" // FetchRequest -> json.RawMessage (null when unknown)
	CmdFetchUser          = "fetch_user"    // FetchRequest -> *discord.User
	CmdFetchMember        = "fetch_member"  // FetchRequest -> *discord.Member
	CmdWorkers            = "workers"       // struct{} -> Workers
	CmdStats              = "stats"         // struct{} -> Stats
	CmdRestartCluster     = "restart_cluster"
	CmdRestartAllClusters = "restart_all_clusters"
	CmdRestartService     = "restart_service"
	CmdRestartAllServices = "restart_all_services"
	CmdShutdownService    = "shutdown_service"
	CmdShutdownCluster    = "shutdown_cluster"
	CmdTotalShutdown      = "total_shutdown"
	CmdReshard            = "reshard"   // ReshardOptions -> Operation (started, not finished)
	CmdOperation          = "operation" // OperationQuery -> Operation
)

// OperationQuery asks for an operation by ID; with Wait, the answer waits
// up to that long (at most 5 s, and half the request's time left) for the
// operation to end.
type OperationQuery struct {
	ID   string        `json:"id"`
	Wait time.Duration `json:"wait,omitempty"`
}

// FetchRequest names an object to fetch from the clusters' caches.
type FetchRequest struct {
	ID      snowflake.ID `json:"id"`
	GuildID snowflake.ID `json:"guild_id,omitempty"` // for members
}

// RestartRequest names a cluster or service to restart; Hard identifies
// anew (clusters) or stops before starting (services) instead of a soft
// hand-over.
type RestartRequest struct {
	Cluster int    `json:"cluster,omitempty"`
	Service string `json:"service,omitempty"`
	Hard    bool   `json:"hard,omitempty"`
}

// Workers lists the fleet's clusters and services.
type Workers struct {
	Clusters []ClusterInfo   `json:"clusters"`
	Services []services.Info `json:"services"`
}

// ClusterInfo describes a cluster.
type ClusterInfo struct {
	ID     int    `json:"id"`
	Shards []int  `json:"shards"`
	State  string `json:"state"`
}

// CommandHandler is an optional interface of a Bot: its cluster's
// commands (eris-fleet's handleCommand), registered on the cluster's bus
// endpoint with bus.Handle. Each instance registers its own; a soft
// restart moves the address to the new instance without losing a command.
type CommandHandler interface {
	Commands(ep *bus.Endpoint)
}

type none struct{}

// FetchGuild asks the cluster that owns a guild for it; nil when no
// cluster has it.
func FetchGuild(ctx context.Context, b bus.Client, id snowflake.ID) (*discord.Guild, error) {
	return bus.Request[FetchRequest, *discord.Guild](ctx, b, bus.Admiral, CmdFetchGuild, FetchRequest{ID: id})
}

// FetchMember asks the cluster that owns a guild for one of its members.
func FetchMember(ctx context.Context, b bus.Client, guildID, userID snowflake.ID) (*discord.Member, error) {
	return bus.Request[FetchRequest, *discord.Member](ctx, b, bus.Admiral, CmdFetchMember, FetchRequest{ID: userID, GuildID: guildID})
}

// FetchUser asks every cluster for a user; nil when none knows it.
func FetchUser(ctx context.Context, b bus.Client, id snowflake.ID) (*discord.User, error) {
	return bus.Request[FetchRequest, *discord.User](ctx, b, bus.Admiral, CmdFetchUser, FetchRequest{ID: id})
}

// FetchChannel asks every cluster for a guild channel; nil when none
// knows it.
func FetchChannel(ctx context.Context, b bus.Client, id snowflake.ID) (discord.Channel, error) {
	raw, err := bus.Request[FetchRequest, json.RawMessage](ctx, b, bus.Admiral, CmdFetchChannel, FetchRequest{ID: id})
	if err != nil || len(raw) == 0 || string(raw) == "null" {
		return nil, err
	}
	var ch discord.UnmarshalChannel
	if err := json.Unmarshal(raw, &ch); err != nil {
		return nil, err
	}
	return ch.Channel, nil
}

// GetStats asks the admiral for a Stats snapshot.
func GetStats(ctx context.Context, b bus.Client) (Stats, error) {
	return bus.Request[none, Stats](ctx, b, bus.Admiral, CmdStats, none{})
}

// GetWorkers lists the clusters and services.
func GetWorkers(ctx context.Context, b bus.Client) (Workers, error) {
	return bus.Request[none, Workers](ctx, b, bus.Admiral, CmdWorkers, none{})
}

// RestartCluster soft-restarts a cluster (or restarts it, with hard). It
// answers once the cluster serves again, which for a hard restart is when
// every shard has identified: give ctx a deadline for that (the bus's
// default is RequestTimeout); a caller that stops waiting leaves the
// restart going on.
func RestartCluster(ctx context.Context, b bus.Client, cluster int, hard bool) error {
	_, err := bus.Request[RestartRequest, none](ctx, b, bus.Admiral, CmdRestartCluster, RestartRequest{Cluster: cluster, Hard: hard})
	return err
}

// RestartAllClusters restarts every cluster, one at a time, and returns
// when they all are. The restarts run on the runtime's own context: ctx
// bounds only the wait, never the work, however long a request on b may
// take.
func RestartAllClusters(ctx context.Context, b bus.Client, hard bool) error {
	op, err := StartRestartAllClusters(ctx, b, hard)
	if err != nil {
		return err
	}
	_, err = WaitForOperation(ctx, b, op.ID)
	return err
}

// StartRestartAllClusters starts a rolling restart of every cluster and
// returns the operation at once.
func StartRestartAllClusters(ctx context.Context, b bus.Client, hard bool) (Operation, error) {
	return bus.Request[RestartRequest, Operation](ctx, b, bus.Admiral, CmdRestartAllClusters, RestartRequest{Hard: hard})
}

// RestartService soft-restarts a service (or restarts it, with hard).
func RestartService(ctx context.Context, b bus.Client, name string, hard bool) error {
	_, err := bus.Request[RestartRequest, none](ctx, b, bus.Admiral, CmdRestartService, RestartRequest{Service: name, Hard: hard})
	return err
}

// RestartAllServices restarts every service, one at a time.
func RestartAllServices(ctx context.Context, b bus.Client, hard bool) error {
	_, err := bus.Request[RestartRequest, none](ctx, b, bus.Admiral, CmdRestartAllServices, RestartRequest{Hard: hard})
	return err
}

// ShutdownCluster stops a cluster for good.
func ShutdownCluster(ctx context.Context, b bus.Client, cluster int) error {
	_, err := bus.Request[RestartRequest, none](ctx, b, bus.Admiral, CmdShutdownCluster, RestartRequest{Cluster: cluster})
	return err
}

// ShutdownService stops a service for good.
func ShutdownService(ctx context.Context, b bus.Client, name string) error {
	_, err := bus.Request[RestartRequest, none](ctx, b, bus.Admiral, CmdShutdownService, RestartRequest{Service: name})
	return err
}

// TotalShutdown asks the runtime to stop everything; it returns once the
// shutdown has begun.
func TotalShutdown(ctx context.Context, b bus.Client) error {
	_, err := bus.Request[none, none](ctx, b, bus.Admiral, CmdTotalShutdown, none{})
	return err
}

// RequestReshard reshards the fleet and returns when it is done. The
// reshard runs on the runtime's own context: ctx bounds only the wait
// (several short requests on b), never the work, so a reshard that takes
// longer than the bus's request timeout completes; a ctx that ends
// returns ctx's error and leaves the reshard running (see
// StartReshardRequest to poll it).
func RequestReshard(ctx context.Context, b bus.Client, opts ReshardOptions) error {
	op, err := StartReshardRequest(ctx, b, opts)
	if err != nil {
		return err
	}
	_, err = WaitForOperation(ctx, b, op.ID)
	return err
}

// StartReshardRequest starts a reshard and returns the operation at once.
func StartReshardRequest(ctx context.Context, b bus.Client, opts ReshardOptions) (Operation, error) {
	return bus.Request[ReshardOptions, Operation](ctx, b, bus.Admiral, CmdReshard, opts)
}

// GetOperation asks for an operation's state.
func GetOperation(ctx context.Context, b bus.Client, id string) (Operation, error) {
	return bus.Request[OperationQuery, Operation](ctx, b, bus.Admiral, CmdOperation, OperationQuery{ID: id})
}

// WaitForOperation waits, with one short request after another, until an
// operation has ended or ctx ends. It returns the operation and, if it
// failed, an error saying why. A query that times out (a busy bus) is
// asked again; the operation goes on either way.
func WaitForOperation(ctx context.Context, b bus.Client, id string) (Operation, error) {
	for {
		op, err := bus.Request[OperationQuery, Operation](ctx, b, bus.Admiral, CmdOperation, OperationQuery{ID: id, Wait: operationBusWait})
		switch {
		case err != nil && errors.Is(err, bus.ErrTimeout) && ctx.Err() == nil:
			continue
		case err != nil:
			return op, err
		case op.State == OperationFailed:
			return op, fmt.Errorf("runtime: operation %s failed: %s", op.ID, op.Err)
		case op.State == OperationDone:
			return op, nil
		}
		if err := ctx.Err(); err != nil {
			return op, err
		}
	}
}

// admiral registers the runtime's own commands.
func (r *Runtime) admiral() error {
	ep, err := r.bus.Register(bus.Admiral, bus.Concurrency(16))
	if err != nil {
		return err
	}
	bus.Handle(ep, CmdFetchGuild, func(ctx context.Context, q FetchRequest) (*discord.Guild, error) {
		return routed[*discord.Guild](ctx, r, q.ID, CmdFetchGuild, q)
	})
	bus.Handle(ep, CmdFetchMember, func(ctx context.Context, q FetchRequest) (*discord.Member, error) {
		return routed[*discord.Member](ctx, r, q.GuildID, CmdFetchMember, q)
	})
	bus.Handle(ep, CmdFetchUser, func(ctx context.Context, q FetchRequest) (*discord.User, error) {
		return fanOut[*discord.User](ctx, r, CmdFetchUser, q, func(u *discord.User) bool { return u != nil })
	})
	bus.Handle(ep, CmdFetchChannel, func(ctx context.Context, q FetchRequest) (json.RawMessage, error) {
		return fanOut[json.RawMessage](ctx, r, CmdFetchChannel, q, func(c json.RawMessage) bool { return len(c) > 0 && string(c) != "null" })
	})
	bus.Handle(ep, CmdWorkers, func(context.Context, none) (Workers, error) { return r.Workers(), nil })
	bus.Handle(ep, CmdStats, func(context.Context, none) (Stats, error) { return r.Stats(), nil })
	bus.Handle(ep, CmdRestartCluster, func(ctx context.Context, q RestartRequest) (none, error) {
		if q.Hard {
			return none{}, r.Restart(ctx, q.Cluster)
		}
		return none{}, r.SoftRestart(ctx, q.Cluster)
	})
	bus.Handle(ep, CmdRestartAllClusters, func(_ context.Context, q RestartRequest) (Operation, error) {
		return r.StartRestartAll(q.Hard)
	})
	bus.Handle(ep, CmdRestartService, func(ctx context.Context, q RestartRequest) (none, error) {
		return none{}, r.RestartService(ctx, q.Service, q.Hard)
	})
	bus.Handle(ep, CmdRestartAllServices, func(ctx context.Context, q RestartRequest) (none, error) {
		for _, s := range r.services.Services() {
			if err := r.RestartService(ctx, s.Name, q.Hard); err != nil {
				return none{}, err
			}
		}
		return none{}, nil
	})
	bus.Handle(ep, CmdShutdownCluster, func(ctx context.Context, q RestartRequest) (none, error) {
		return none{}, r.ShutdownCluster(ctx, q.Cluster)
	})
	bus.Handle(ep, CmdShutdownService, func(ctx context.Context, q RestartRequest) (none, error) {
		return none{}, r.services.Shutdown(ctx, q.Service)
	})
	bus.Handle(ep, CmdTotalShutdown, func(context.Context, none) (none, error) {
		r.beginShutdown() // Run then stops the bus: answer first, never wait here
		return none{}, nil
	})
	bus.Handle(ep, CmdReshard, func(_ context.Context, q ReshardOptions) (Operation, error) {
		return r.StartReshard(q)
	})
	bus.Handle(ep, CmdOperation, func(ctx context.Context, q OperationQuery) (Operation, error) {
		op, ok := r.Operation(q.ID)
		if !ok {
			return Operation{}, fmt.Errorf("%w %q", ErrUnknownOperation, q.ID)
		}
		wait := min(q.Wait, maxOperationWaitOverBus)
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, time.Until(dl)/2)
		}
		if op.State != OperationRunning || wait <= 0 {
			return op, nil
		}
		wctx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		op, _ = r.WaitOperation(wctx, q.ID)
		return op, nil
	})
	return nil
}

// RestartService soft-restarts a service, or with hard stops it before
// starting a new instance.
func (r *Runtime) RestartService(ctx context.Context, name string, hard bool) error {
	if hard {
		return r.services.Restart(ctx, name)
	}
	return r.services.SoftRestart(ctx, name)
}

// Services is the runtime's service manager: create, restart and shut
// down services at run time.
func (r *Runtime) Services() *services.Manager { return r.services }

// Bus is the runtime's IPC bus.
func (r *Runtime) Bus() *bus.Bus { return r.bus }

// Workers lists the clusters and services.
func (r *Runtime) Workers() Workers {
	var w Workers
	r.mu.Lock()
	clusters := append([]*cluster(nil), r.clusters...)
	r.mu.Unlock()
	for _, c := range clusters {
		c.mu.Lock()
		info := ClusterInfo{ID: c.id, Shards: append([]int(nil), c.shards...), State: "starting"}
		switch {
		case c.parked != "":
			info.State = c.parked
		case c.group != nil:
			info.State = c.group.State().String()
		}
		c.mu.Unlock()
		w.Clusters = append(w.Clusters, info)
	}
	w.Services = r.services.Services()
	return w
}

// owner returns the cluster that runs the shard owning a guild.
func (r *Runtime) owner(guildID snowflake.ID) (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.env == nil {
		return 0, false
	}
	shard := sharding.ShardIDByGuild(guildID, r.env.total)
	for _, c := range r.clusters {
		for _, s := range c.shards {
			if s == shard {
				return c.id, true
			}
		}
	}
	return 0, false
}

// routed asks the cluster owning a guild; the zero value when this
// runtime does not run it.
func routed[T any](ctx context.Context, r *Runtime, guildID snowflake.ID, cmd string, q FetchRequest) (T, error) {
	var zero T
	id, ok := r.owner(guildID)
	if !ok {
		return zero, nil
	}
	return bus.Request[FetchRequest, T](ctx, r.bus, bus.Cluster(id), cmd, q)
}

// fanOut asks every cluster and returns the first answer found.
func fanOut[T any](ctx context.Context, r *Runtime, cmd string, q FetchRequest, found func(T) bool) (T, error) {
	var zero T
	replies, err := bus.Gather[FetchRequest, T](ctx, r.bus, bus.AllClusters, cmd, q)
	if err != nil {
		return zero, err
	}
	var errs []error
	for _, rep := range replies {
		if rep.Err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", rep.From, rep.Err))
			continue
		}
		if found(rep.Value) {
			return rep.Value, nil
		}
	}
	return zero, errors.Join(errs...)
}

// clusterEndpoint gives an instance its endpoint at the cluster's address:
// the first instance registers it, later ones take it over with Standby
// and Replace, so no command is lost across a soft restart. It returns a
// func that puts the endpoint in place.
func (r *Runtime) clusterEndpoint(c *cluster, inst *instance) (activate func() error, err error) {
	addr := bus.Cluster(c.id)
	ep, err := r.bus.Standby(addr)
	fresh := errors.Is(err, bus.ErrUnknownAddress)
	if fresh {
		ep, err = r.bus.Register(addr, bus.Concurrency(4))
	}
	if err != nil {
		return nil, err
	}
	g := inst.g
	caches := g.Client().Caches()
	bus.Handle(ep, CmdFetchGuild, func(_ context.Context, q FetchRequest) (*discord.Guild, error) {
		if gd, ok := caches.Guild(q.ID); ok {
			return &gd, nil
		}
		return nil, nil
	})
	bus.Handle(ep, CmdFetchMember, func(_ context.Context, q FetchRequest) (*discord.Member, error) {
		if m, ok := caches.Member(q.GuildID, q.ID); ok {
			return &m, nil
		}
		return nil, nil
	})
	bus.Handle(ep, CmdFetchUser, func(_ context.Context, q FetchRequest) (*discord.User, error) {
		var found *discord.User
		caches.GuildsForEach(func(gd discord.Guild) {
			if found == nil {
				if m, ok := caches.Member(gd.ID, q.ID); ok {
					found = &m.User
				}
			}
		})
		return found, nil
	})
	bus.Handle(ep, CmdFetchChannel, func(_ context.Context, q FetchRequest) (json.RawMessage, error) {
		ch, ok := caches.Channel(q.ID)
		if !ok {
			return nil, nil
		}
		return json.Marshal(ch)
	})
	if h, ok := inst.bot.(CommandHandler); ok {
		h.Commands(ep)
	}
	inst.ep = ep
	if fresh {
		return func() error { return nil }, nil
	}
	return func() error {
		old, err := r.bus.Replace(ep)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.ShutdownTimeout)
		defer cancel()
		return old.Close(ctx)
	}, nil
}
