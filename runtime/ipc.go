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

// The IPC surface: the runtime serves Fleet's operations as commands at
// bus.Admiral (see fleet.go for their wire names), so that a Client on
// the bus can drive the fleet, and the same calls work when the bus spans
// processes.

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
	Commands(h bus.Handlers)
}

// admiral registers the runtime's own commands: Fleet's, over the bus.
func (r *Runtime) admiral() error {
	ep, err := r.bus.Register(bus.Admiral, bus.Concurrency(16))
	if err != nil {
		return err
	}
	cluster := func(cmd string, do func(context.Context, int) error) {
		handle(ep, cmd, func(ctx context.Context, q clusterRequest) (none, error) { return none{}, do(ctx, q.Cluster) })
	}
	service := func(cmd string, do func(context.Context, string) error) {
		handle(ep, cmd, func(ctx context.Context, q serviceRequest) (none, error) { return none{}, do(ctx, q.Service) })
	}
	fleet := func(cmd string, do func(context.Context) error) {
		handle(ep, cmd, func(ctx context.Context, _ none) (none, error) { return none{}, do(ctx) })
	}
	start := func(cmd string, do func(context.Context) (Operation, error)) {
		handle(ep, cmd, func(ctx context.Context, _ none) (Operation, error) { return do(ctx) })
	}
	cluster(cmdSoftRestart, r.SoftRestart)
	cluster(cmdRestart, r.Restart)
	cluster(cmdShutdownCluster, r.ShutdownCluster)
	start(cmdStartSoftRestartAll, r.StartSoftRestartAll)
	start(cmdStartRestartAll, r.StartRestartAll)
	handle(ep, cmdStartReshard, r.StartReshard)
	fleet(cmdShutdown, func(context.Context) error {
		r.beginShutdown() // Run then stops the bus: answer first, never wait here
		return nil
	})
	service(cmdSoftRestartService, r.SoftRestartService)
	service(cmdRestartService, r.RestartService)
	service(cmdShutdownService, r.ShutdownService)
	fleet(cmdSoftRestartAllServices, r.SoftRestartAllServices)
	fleet(cmdRestartAllServices, r.RestartAllServices)
	handle(ep, cmdOperation, func(ctx context.Context, q operationQuery) (Operation, error) {
		op, err := r.Operation(ctx, q.ID)
		if err != nil {
			return op, err
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
	handle(ep, cmdStats, func(context.Context, none) (Stats, error) { return r.Stats(), nil })
	handle(ep, cmdWorkers, func(context.Context, none) (Workers, error) { return r.Workers(), nil })
	handle(ep, cmdFetchGuild, func(ctx context.Context, q fetchRequest) (*discord.Guild, error) {
		return r.FetchGuild(ctx, q.ID)
	})
	handle(ep, cmdFetchMember, func(ctx context.Context, q fetchRequest) (*discord.Member, error) {
		return r.FetchMember(ctx, q.GuildID, q.ID)
	})
	handle(ep, cmdFetchUser, func(ctx context.Context, q fetchRequest) (*discord.User, error) {
		return r.FetchUser(ctx, q.ID)
	})
	handle(ep, cmdFetchChannel, func(ctx context.Context, q fetchRequest) (json.RawMessage, error) {
		return r.fetchChannel(ctx, q.ID)
	})
	return nil
}

// handle registers an admiral command whose errors name, in their
// message, every sentinel they match (see wireError).
func handle[Req, Resp any](ep *bus.Endpoint, cmd string, fn func(context.Context, Req) (Resp, error)) {
	bus.Handle(ep, cmd, func(ctx context.Context, q Req) (Resp, error) {
		v, err := fn(ctx, q)
		return v, wireError(err)
	})
}

// SoftRestartService replaces a service's instance without losing a
// command: a new instance starts beside the old one, takes the service's
// address and mailbox once ready, then the old one finishes what it was
// handling and stops. If the new instance fails to start, the old one
// keeps serving and the error is returned. It returns ErrNotRunning
// before Run, and an error wrapping services.ErrUnknownService for a name
// the fleet does not run.
func (r *Runtime) SoftRestartService(ctx context.Context, name string) error {
	if err := r.checkRunning(ctx); err != nil {
		return err
	}
	return r.services.SoftRestart(ctx, name)
}

// RestartService stops a service and starts it again, with restarts
// after starting errors as at start-up; commands sent in between fail
// with bus.ErrUnknownAddress. It also starts a failed service.
func (r *Runtime) RestartService(ctx context.Context, name string) error {
	if err := r.checkRunning(ctx); err != nil {
		return err
	}
	return r.services.Restart(ctx, name)
}

// ShutdownService stops a service for good (eris-fleet's
// shutdownService): the commands already queued are handled, its Stop
// hook runs and it leaves the fleet.
func (r *Runtime) ShutdownService(ctx context.Context, name string) error {
	if err := r.checkRunning(ctx); err != nil {
		return err
	}
	return r.services.Shutdown(ctx, name)
}

// SoftRestartAllServices soft-restarts every service, one at a time, and
// stops at the first error.
func (r *Runtime) SoftRestartAllServices(ctx context.Context) error {
	return r.eachService(ctx, r.SoftRestartService)
}

// RestartAllServices restarts every service, one at a time, and stops
// at the first error.
func (r *Runtime) RestartAllServices(ctx context.Context) error {
	return r.eachService(ctx, r.RestartService)
}

func (r *Runtime) eachService(ctx context.Context, do func(context.Context, string) error) error {
	if err := r.checkRunning(ctx); err != nil {
		return err
	}
	for _, s := range r.services.Services() {
		if err := do(ctx, s.Name); err != nil {
			return err
		}
	}
	return nil
}

// CreateService adds a service to the running fleet and returns once it
// is ready (eris-fleet's createService), or with its error after its
// restarts. Its name must be new.
func (r *Runtime) CreateService(ctx context.Context, sp services.Spec) error {
	if err := r.checkRunning(ctx); err != nil {
		return err
	}
	return r.services.Create(ctx, sp)
}

// Services returns the state of every service, in creation order. The
// caller owns the slice.
func (r *Runtime) Services() []services.Info { return r.services.Services() }

// FetchGuild asks the cluster that owns a guild for it (routed by the
// shard formula); nil when no cluster has it.
func (r *Runtime) FetchGuild(ctx context.Context, id snowflake.ID) (*discord.Guild, error) {
	return routed[*discord.Guild](ctx, r, id, cmdFetchGuild, fetchRequest{ID: id})
}

// FetchMember asks the cluster that owns a guild for one of its members;
// nil when it does not have it.
func (r *Runtime) FetchMember(ctx context.Context, guildID, userID snowflake.ID) (*discord.Member, error) {
	return routed[*discord.Member](ctx, r, guildID, cmdFetchMember, fetchRequest{ID: userID, GuildID: guildID})
}

// FetchUser asks every cluster for a user; nil when none knows it.
func (r *Runtime) FetchUser(ctx context.Context, id snowflake.ID) (*discord.User, error) {
	return fanOut[*discord.User](ctx, r, cmdFetchUser, fetchRequest{ID: id}, func(u *discord.User) bool { return u != nil })
}

// FetchChannel asks every cluster for a guild channel; nil when none
// knows it.
func (r *Runtime) FetchChannel(ctx context.Context, id snowflake.ID) (discord.Channel, error) {
	raw, err := r.fetchChannel(ctx, id)
	if err != nil {
		return nil, err
	}
	return decodeChannel(raw)
}

func (r *Runtime) fetchChannel(ctx context.Context, id snowflake.ID) (json.RawMessage, error) {
	return fanOut[json.RawMessage](ctx, r, cmdFetchChannel, fetchRequest{ID: id}, func(c json.RawMessage) bool { return len(c) > 0 && string(c) != "null" })
}

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
// runtime does not run it. A cluster that does not answer (failed, shut
// down) is named in the error.
func routed[T any](ctx context.Context, r *Runtime, guildID snowflake.ID, cmd string, q fetchRequest) (T, error) {
	var zero T
	id, ok := r.owner(guildID)
	if !ok {
		return zero, nil
	}
	v, err := bus.Request[fetchRequest, T](ctx, r.bus, bus.Cluster(id), cmd, q)
	if errors.Is(err, bus.ErrUnknownAddress) {
		return zero, fmt.Errorf("runtime: cluster %d, which runs guild %d, does not serve (see its state in Workers): %w", id, guildID, err)
	}
	return v, err
}

// fanOut asks every cluster and returns the first answer found.
func fanOut[T any](ctx context.Context, r *Runtime, cmd string, q fetchRequest, found func(T) bool) (T, error) {
	var zero T
	replies, err := bus.Gather[fetchRequest, T](ctx, r.bus, bus.AllClusters, cmd, q)
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
	bus.Handle(ep, cmdFetchGuild, func(_ context.Context, q fetchRequest) (*discord.Guild, error) {
		if gd, ok := caches.Guild(q.ID); ok {
			return &gd, nil
		}
		return nil, nil
	})
	bus.Handle(ep, cmdFetchMember, func(_ context.Context, q fetchRequest) (*discord.Member, error) {
		if m, ok := caches.Member(q.GuildID, q.ID); ok {
			return &m, nil
		}
		return nil, nil
	})
	bus.Handle(ep, cmdFetchUser, func(_ context.Context, q fetchRequest) (*discord.User, error) {
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
	bus.Handle(ep, cmdFetchChannel, func(_ context.Context, q fetchRequest) (json.RawMessage, error) {
		ch, ok := caches.Channel(q.ID)
		if !ok {
			return nil, nil
		}
		return json.Marshal(ch)
	})
	if h, ok := inst.bot.(CommandHandler); ok {
		h.Commands(ep.Handlers())
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
