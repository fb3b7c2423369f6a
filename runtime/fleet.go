package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/snowflake/v2"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/services"
)

// Fleet is the fleet's operations under one set of names, whoever calls
// them: *Runtime performs them itself, *Client asks a Runtime over the
// bus (from a service, a cluster, or later another process), and the
// admin API of package metrics serves them over HTTP under the same
// names. Code written against Fleet runs either way:
//
//	var f runtime.Fleet = rt              // in the program that owns the runtime
//	f = runtime.NewClient(sc.Bus())       // in a service or a cluster
//	err := f.SoftRestart(ctx, 2)
//
// The cluster operations run one at a time; each waits for the one under
// way only until its ctx ends. The long ones (a reshard, a rolling
// restart) exist twice: the plain form returns when they end, the Start
// form returns an Operation at once, to poll with Operation or wait for
// with WaitOperation; either way they run on the runtime's own context,
// so a caller that gives up leaves them running.
//
// Methods may be added to Fleet: embed it to build a fake.
type Fleet interface {
	// SoftRestart replaces a cluster's instance without downtime: its
	// sessions are handed over (no IDENTIFY, no lost event).
	SoftRestart(ctx context.Context, cluster int) error
	// Restart stops a cluster and starts it again: its shards identify anew.
	Restart(ctx context.Context, cluster int) error
	// ShutdownCluster stops a cluster for good; the others go on.
	ShutdownCluster(ctx context.Context, cluster int) error
	// SoftRestartAll and RestartAll restart every cluster, one at a time.
	SoftRestartAll(ctx context.Context) error
	RestartAll(ctx context.Context) error
	// Reshard moves the fleet to a new shard count (see Runtime.Reshard).
	// Resharding to the current count and cluster count changes nothing.
	Reshard(ctx context.Context, opts ReshardOptions) error
	// Shutdown stops the whole fleet. A Runtime's returns when Run has
	// returned; a Client's once the stop has begun, since its caller may
	// be part of what stops.
	Shutdown(ctx context.Context) error

	// SoftRestartService replaces a service's instance without losing a
	// command; the old one serves until the new one is ready.
	SoftRestartService(ctx context.Context, name string) error
	// RestartService stops a service and starts it again; it also starts
	// a failed service.
	RestartService(ctx context.Context, name string) error
	// ShutdownService stops a service for good.
	ShutdownService(ctx context.Context, name string) error
	// SoftRestartAllServices and RestartAllServices restart every
	// service, one at a time.
	//
	// An operation on a service waits for the commands it is handling:
	// called from one of that service's own handlers, it waits for
	// itself until ctx ends. Send the service a command that starts it
	// after the handler returns instead.
	SoftRestartAllServices(ctx context.Context) error
	RestartAllServices(ctx context.Context) error

	// StartReshard, StartSoftRestartAll and StartRestartAll start the
	// long operations and return them at once.
	StartReshard(ctx context.Context, opts ReshardOptions) (Operation, error)
	StartSoftRestartAll(ctx context.Context) (Operation, error)
	StartRestartAll(ctx context.Context) (Operation, error)
	// Operation returns a long operation's state; WaitOperation waits
	// until it has ended, or ctx ends. Both return an error wrapping
	// ErrUnknownOperation for an ID they do not know.
	Operation(ctx context.Context, id string) (Operation, error)
	WaitOperation(ctx context.Context, id string) (Operation, error)

	// FetchGuild asks the cluster that owns a guild for it; FetchMember
	// for one of its members. FetchUser and FetchChannel ask every
	// cluster. Each returns nil when no cluster has the object cached.
	FetchGuild(ctx context.Context, id snowflake.ID) (*discord.Guild, error)
	FetchMember(ctx context.Context, guildID, userID snowflake.ID) (*discord.Member, error)
	FetchUser(ctx context.Context, id snowflake.ID) (*discord.User, error)
	FetchChannel(ctx context.Context, id snowflake.ID) (discord.Channel, error)
}

var (
	_ Fleet = (*Runtime)(nil)
	_ Fleet = (*Client)(nil)
)

// The admiral's commands: the wire form of Fleet. Each command's payload
// and reply are given beside it.
const (
	cmdSoftRestart            = "soft_restart"              // clusterRequest -> none
	cmdRestart                = "restart"                   // clusterRequest -> none
	cmdShutdownCluster        = "shutdown_cluster"          // clusterRequest -> none
	cmdStartSoftRestartAll    = "soft_restart_all"          // none -> Operation (started)
	cmdStartRestartAll        = "restart_all"               // none -> Operation (started)
	cmdStartReshard           = "reshard"                   // ReshardOptions -> Operation (started)
	cmdShutdown               = "shutdown"                  // none -> none (the stop has begun)
	cmdSoftRestartService     = "soft_restart_service"      // serviceRequest -> none
	cmdRestartService         = "restart_service"           // serviceRequest -> none
	cmdShutdownService        = "shutdown_service"          // serviceRequest -> none
	cmdSoftRestartAllServices = "soft_restart_all_services" // none -> none
	cmdRestartAllServices     = "restart_all_services"      // none -> none
	cmdOperation              = "operation"                 // operationQuery -> Operation
	cmdStats                  = "stats"                     // none -> Stats
	cmdWorkers                = "workers"                   // none -> Workers
	cmdFetchGuild             = "fetch_guild"               // fetchRequest -> *discord.Guild (also a cluster command)
	cmdFetchMember            = "fetch_member"              // fetchRequest -> *discord.Member (also a cluster command)
	cmdFetchUser              = "fetch_user"                // fetchRequest -> *discord.User (also a cluster command)
	cmdFetchChannel           = "fetch_channel"             // fetchRequest -> json.RawMessage, null when unknown (also a cluster command)
)

type none struct{}

type clusterRequest struct {
	Cluster int `json:"cluster"`
}

type serviceRequest struct {
	Service string `json:"service"`
}

type fetchRequest struct {
	ID      snowflake.ID `json:"id"`
	GuildID snowflake.ID `json:"guild_id,omitempty"` // for members
}

// operationQuery asks for an operation by ID; with Wait, the answer waits
// up to that long (at most maxOperationWaitOverBus, and half the request's
// time left) for the operation to end.
type operationQuery struct {
	ID   string        `json:"id"`
	Wait time.Duration `json:"wait_ns,omitempty"`
}

// Client performs the fleet's operations over a bus, by asking the
// Runtime that serves it (at bus.Admiral): from a service, from a
// cluster's code, or from anything else that shares the runtime's bus.
// Its methods are Fleet's, plus Stats and Workers, which take a ctx and
// return an error where the Runtime's read in place.
//
// Errors keep their meaning on any bus: a handler's error that names one
// of the runtime's or the services' sentinel errors (ErrUnknownCluster,
// ErrNotRunning, services.ErrUnknownService ...) matches it with
// errors.Is, even in strict mode or across processes, where only its
// message travels. The zero Client is not usable: call NewClient.
type Client struct {
	b bus.Client
}

// NewClient returns a Client that asks the runtime serving b. It panics
// if b is nil, a programmer error.
func NewClient(b bus.Client) *Client {
	if b == nil {
		panic("runtime: NewClient with a nil bus: pass the fleet's bus (Runtime.Bus, services.Context.Bus)")
	}
	return &Client{b: b}
}

// SoftRestart soft-restarts a cluster (see Runtime.SoftRestart).
func (c *Client) SoftRestart(ctx context.Context, cluster int) error {
	return c.cluster(ctx, cmdSoftRestart, cluster)
}

// Restart restarts a cluster (see Runtime.Restart). It answers once the
// cluster serves again, when every shard has identified: give ctx a
// deadline for that (the bus's default is Config.RequestTimeout); a
// caller that stops waiting leaves the restart going on.
func (c *Client) Restart(ctx context.Context, cluster int) error {
	return c.cluster(ctx, cmdRestart, cluster)
}

// ShutdownCluster stops a cluster for good (see Runtime.ShutdownCluster).
func (c *Client) ShutdownCluster(ctx context.Context, cluster int) error {
	return c.cluster(ctx, cmdShutdownCluster, cluster)
}

// SoftRestartAll soft-restarts every cluster, one at a time, and returns
// when they all are. The restarts run on the runtime's own context: ctx
// bounds only the wait (several short requests), never the work.
func (c *Client) SoftRestartAll(ctx context.Context) error {
	op, err := c.StartSoftRestartAll(ctx)
	return c.finish(ctx, op, err)
}

// RestartAll restarts every cluster, one at a time, as SoftRestartAll.
func (c *Client) RestartAll(ctx context.Context) error {
	op, err := c.StartRestartAll(ctx)
	return c.finish(ctx, op, err)
}

// Reshard reshards the fleet and returns when it is done. The reshard
// runs on the runtime's own context: ctx bounds only the wait (several
// short requests), never the work, so a reshard that takes longer than
// the bus's request timeout completes; a ctx that ends returns ctx's
// error and leaves the reshard running (see StartReshard to poll it).
func (c *Client) Reshard(ctx context.Context, opts ReshardOptions) error {
	op, err := c.StartReshard(ctx, opts)
	return c.finish(ctx, op, err)
}

// Shutdown asks the runtime to stop the whole fleet; it returns once the
// stop has begun.
func (c *Client) Shutdown(ctx context.Context) error {
	return c.fleet(ctx, cmdShutdown)
}

// SoftRestartService soft-restarts a service (see Runtime.SoftRestartService).
func (c *Client) SoftRestartService(ctx context.Context, name string) error {
	return c.service(ctx, cmdSoftRestartService, name)
}

// RestartService restarts a service (see Runtime.RestartService).
func (c *Client) RestartService(ctx context.Context, name string) error {
	return c.service(ctx, cmdRestartService, name)
}

// ShutdownService stops a service for good (see Runtime.ShutdownService).
func (c *Client) ShutdownService(ctx context.Context, name string) error {
	return c.service(ctx, cmdShutdownService, name)
}

// SoftRestartAllServices soft-restarts every service, one at a time.
func (c *Client) SoftRestartAllServices(ctx context.Context) error {
	return c.fleet(ctx, cmdSoftRestartAllServices)
}

// RestartAllServices restarts every service, one at a time.
func (c *Client) RestartAllServices(ctx context.Context) error {
	return c.fleet(ctx, cmdRestartAllServices)
}

// StartReshard starts a reshard and returns the operation at once.
func (c *Client) StartReshard(ctx context.Context, opts ReshardOptions) (Operation, error) {
	return request[ReshardOptions, Operation](ctx, c.b, cmdStartReshard, opts)
}

// StartSoftRestartAll starts a rolling soft restart and returns the
// operation at once.
func (c *Client) StartSoftRestartAll(ctx context.Context) (Operation, error) {
	return request[none, Operation](ctx, c.b, cmdStartSoftRestartAll, none{})
}

// StartRestartAll starts a rolling restart and returns the operation at
// once.
func (c *Client) StartRestartAll(ctx context.Context) (Operation, error) {
	return request[none, Operation](ctx, c.b, cmdStartRestartAll, none{})
}

// Operation returns an operation's state.
func (c *Client) Operation(ctx context.Context, id string) (Operation, error) {
	return request[operationQuery, Operation](ctx, c.b, cmdOperation, operationQuery{ID: id})
}

// WaitOperation waits, with one short request after another, until an
// operation has ended or ctx ends. It returns the operation and, if it
// failed, an error saying why. A query that times out (a busy bus) is
// asked again; the operation goes on either way.
func (c *Client) WaitOperation(ctx context.Context, id string) (Operation, error) {
	for {
		op, err := request[operationQuery, Operation](ctx, c.b, cmdOperation, operationQuery{ID: id, Wait: operationBusWait})
		switch {
		case err != nil && errors.Is(err, bus.ErrTimeout) && ctx.Err() == nil:
			continue
		case err != nil:
			return op, err
		case op.State == OperationFailed:
			return op, operationError(op)
		case op.State == OperationDone:
			return op, nil
		}
		if err := ctx.Err(); err != nil {
			return op, err
		}
	}
}

// FetchGuild asks the cluster that owns a guild for it; nil when no
// cluster has it.
func (c *Client) FetchGuild(ctx context.Context, id snowflake.ID) (*discord.Guild, error) {
	return request[fetchRequest, *discord.Guild](ctx, c.b, cmdFetchGuild, fetchRequest{ID: id})
}

// FetchMember asks the cluster that owns a guild for one of its members.
func (c *Client) FetchMember(ctx context.Context, guildID, userID snowflake.ID) (*discord.Member, error) {
	return request[fetchRequest, *discord.Member](ctx, c.b, cmdFetchMember, fetchRequest{ID: userID, GuildID: guildID})
}

// FetchUser asks every cluster for a user; nil when none knows it.
func (c *Client) FetchUser(ctx context.Context, id snowflake.ID) (*discord.User, error) {
	return request[fetchRequest, *discord.User](ctx, c.b, cmdFetchUser, fetchRequest{ID: id})
}

// FetchChannel asks every cluster for a guild channel; nil when none
// knows it.
func (c *Client) FetchChannel(ctx context.Context, id snowflake.ID) (discord.Channel, error) {
	raw, err := request[fetchRequest, json.RawMessage](ctx, c.b, cmdFetchChannel, fetchRequest{ID: id})
	if err != nil {
		return nil, err
	}
	return decodeChannel(raw)
}

// Stats asks the runtime for a Stats snapshot.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	return request[none, Stats](ctx, c.b, cmdStats, none{})
}

// Workers lists the fleet's clusters and services.
func (c *Client) Workers(ctx context.Context) (Workers, error) {
	return request[none, Workers](ctx, c.b, cmdWorkers, none{})
}

func (c *Client) cluster(ctx context.Context, cmd string, id int) error {
	_, err := request[clusterRequest, none](ctx, c.b, cmd, clusterRequest{Cluster: id})
	return err
}

func (c *Client) service(ctx context.Context, cmd, name string) error {
	_, err := request[serviceRequest, none](ctx, c.b, cmd, serviceRequest{Service: name})
	return err
}

func (c *Client) fleet(ctx context.Context, cmd string) error {
	_, err := request[none, none](ctx, c.b, cmd, none{})
	return err
}

// finish waits for an operation just started, or returns the error that
// kept it from starting.
func (c *Client) finish(ctx context.Context, op Operation, err error) error {
	if err != nil {
		return err
	}
	_, err = c.WaitOperation(ctx, op.ID)
	return err
}

// request asks the admiral, and gives the error back its sentinels.
func request[Req, Resp any](ctx context.Context, b bus.Client, cmd string, req Req) (Resp, error) {
	resp, err := bus.Request[Req, Resp](ctx, b, bus.Admiral, cmd, req)
	return resp, withSentinels(err)
}

// sentinels are the errors a Client recognises in a remote error's
// message: each error wrapping one of them has its message in its own.
var sentinels = []error{
	ErrUnknownCluster, ErrNotRunning, ErrReshardInProgress, ErrUnknownOperation, ErrCannotReshard, ErrFatal,
	services.ErrUnknownService, services.ErrClosed, services.ErrFailed, services.ErrStartTimeout, services.ErrNotReady,
}

// wireError returns err with the text of each sentinel it matches that
// its message leaves out, in parentheses: only the message crosses a
// strict bus or a process boundary, and a Client finds the sentinels in
// it (withSentinels). Close to the process, the result unwraps to err.
func wireError(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	var missing []string
	for _, s := range sentinels {
		if errors.Is(err, s) && !strings.Contains(msg, s.Error()) {
			missing = append(missing, s.Error())
		}
	}
	if len(missing) == 0 {
		return err
	}
	return &namedError{msg: msg + " (" + strings.Join(missing, "; ") + ")", err: err}
}

// namedError is an error whose message also names its sentinels.
type namedError struct {
	msg string
	err error
}

func (e *namedError) Error() string { return e.msg }

func (e *namedError) Unwrap() error { return e.err }

// withSentinels returns err, a bus.RemoteError's, matching (errors.Is)
// every sentinel its message names as well, since only the message
// crosses a strict bus or a process boundary.
func withSentinels(err error) error {
	var re *bus.RemoteError
	if err == nil || !errors.As(err, &re) {
		return err
	}
	return withSentinelsOf(err, re.Message)
}

// withSentinelsOf returns err, matching as well every sentinel that msg
// names and err does not match yet.
func withSentinelsOf(err error, msg string) error {
	var also []error
	for _, s := range sentinels {
		if !errors.Is(err, s) && strings.Contains(msg, s.Error()) {
			also = append(also, s)
		}
	}
	if len(also) == 0 {
		return err
	}
	return &remoteError{err: err, also: also}
}

// remoteError is a remote error with the sentinels its message names.
type remoteError struct {
	err  error
	also []error
}

func (e *remoteError) Error() string { return e.err.Error() }

func (e *remoteError) Unwrap() []error { return append([]error{e.err}, e.also...) }

// operationError is the error of a failed operation, as WaitOperation
// returns it on the far side of a bus.
func operationError(op Operation) error {
	return withSentinelsOf(fmt.Errorf("runtime: operation %s failed: %s", op.ID, op.Err), op.Err)
}

// decodeChannel decodes a channel a cluster sent as JSON; nil for null.
func decodeChannel(raw json.RawMessage) (discord.Channel, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var ch discord.UnmarshalChannel
	if err := json.Unmarshal(raw, &ch); err != nil {
		return nil, err
	}
	return ch.Channel, nil
}
