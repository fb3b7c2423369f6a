package bus

import "context"

// Handlers is where handlers go: [Handle] accepts any Handlers. An
// *Endpoint is one; [Endpoint.Handlers] returns one that can register
// handlers and subscribe but cannot close the endpoint, and cannot be
// turned back into the *Endpoint. The runtime and the services manager
// hand that one to user code, so a cluster's or a service's code cannot
// stop its own address.
//
// Only this package implements Handlers.
type Handlers interface {
	// Address is the endpoint's address.
	Address() Address
	// Subscribe is [Endpoint.Subscribe].
	Subscribe(event string, fn func(ctx context.Context, ev Event)) (unsubscribe func())
	endpoint() *Endpoint
}

// endpoint makes *Endpoint a Handlers.
func (e *Endpoint) endpoint() *Endpoint { return e }

// Handlers returns e for registering handlers only (see [Handlers]).
func (e *Endpoint) Handlers() Handlers { return handlers{e} }

// handlers is a Handlers without the Endpoint's Close.
type handlers struct{ e *Endpoint }

func (h handlers) Address() Address { return h.e.Address() }

func (h handlers) Subscribe(event string, fn func(ctx context.Context, ev Event)) (unsubscribe func()) {
	return h.e.Subscribe(event, fn)
}

func (h handlers) endpoint() *Endpoint { return h.e }
