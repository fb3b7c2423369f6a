package services

import (
	"context"
	"log/slog"

	"github.com/gofleet/fleet/bus"
)

// Service is the user's code for one instance of a service: eris-fleet's
// ServiceWorker.
//
// Start registers the instance's command handlers on sc.Endpoint (with
// [bus.Handle]) and prepares whatever they need. Returning nil says the
// instance is ready (eris-fleet's serviceReady): only then do its handlers
// receive commands. Returning an error, or panicking, is a starting error
// (serviceStartingError): the instance is dropped and the Manager starts a
// new one after a back-off.
//
// ctx is for Start only: it ends when Start returns, when
// [ManagerConfig.StartTimeout] passes, or when the Manager is closed. Work
// that outlives Start needs its own context, ended by a [Stopper]'s Stop.
type Service interface {
	Start(ctx context.Context, sc *Context) error
}

// Stopper is a Service with a shutdown hook. The Manager calls Stop once
// the instance's endpoint no longer receives commands and its running
// handlers have returned, bounded by [ManagerConfig.ShutdownTimeout]. Stop
// is called only for an instance whose Start returned nil.
type Stopper interface {
	Stop(ctx context.Context) error
}

// Func adapts a function to Service, for services without a Stop hook.
type Func func(ctx context.Context, sc *Context) error

// Start calls f.
func (f Func) Start(ctx context.Context, sc *Context) error { return f(ctx, sc) }

// Spec describes a service.
type Spec struct {
	// Name is the service's name, unique in its Manager; it is reachable
	// at bus.Service(Name). Required.
	Name string
	// New returns the instance to start. It is called for every start
	// and restart; an instance is started at most once, unless New
	// returns the same value again (as [Store.Spec] does, to keep its
	// data across restarts). Required.
	New func() Service
	// Concurrency is how many commands the service handles at once
	// (default 1: one at a time, in order, so handlers need no lock).
	Concurrency int
}

// Context is what a service instance gets from the Manager: its name, a
// logger, the bus, and the endpoint its handlers go on. It is valid for
// the instance's whole life.
type Context struct {
	name string
	log  *slog.Logger
	bus  *bus.Bus
	ep   *bus.Endpoint
}

// Name returns the service's name.
func (c *Context) Name() string { return c.name }

// Logger returns the Manager's logger with a "service" attribute.
func (c *Context) Logger() *slog.Logger { return c.log }

// Bus calls the bus, to reach other services and clusters; it cannot
// close the bus or register endpoints (see [bus.Bus.Client]).
func (c *Context) Bus() bus.Client { return c.bus.Client() }

// Endpoint returns the instance's endpoint: register its commands on it
// with [bus.Handle] during Start. It receives commands once the instance
// is ready.
func (c *Context) Endpoint() bus.Handlers { return c.ep.Handlers() }
