package bus

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Lock order (a lock on the left may be held while taking the one on its
// right; no other lock is taken while one is held):
//
//	Bus.mu → the Transport's lock   (Register, unregister)
//	route.ctl, route.mu, Endpoint.mu, subSet.mu: leaves, each taken alone

// Defaults for the zero fields of Options.
const (
	// DefaultTimeout is eris-fleet's fetchTimeout.
	DefaultTimeout     = 10 * time.Second
	DefaultMailboxSize = 256
)

// Options configure a Bus. The zero value means the defaults.
type Options struct {
	// DefaultTimeout bounds a call whose context has no deadline
	// (default 10 s, eris-fleet's fetchTimeout). It also bounds how long
	// Send and Publish wait for room in a full mailbox.
	DefaultTimeout time.Duration
	// MailboxSize is the default number of messages an endpoint queues
	// before senders block (default 256). See [Mailbox].
	MailboxSize int
	// Strict round-trips every payload and every reply through the Codec,
	// as a process boundary would, so that code which works in one
	// process also works across processes: values that cannot be encoded
	// fail, receivers get copies, and handler errors keep only their
	// message (see [RemoteError]).
	Strict bool
	// Codec encodes values in strict mode and for transports that leave
	// the process (default [JSON]).
	Codec Codec
	// Transport carries the messages (default: in memory).
	Transport Transport
	// Logger receives handler panics and the errors of commands that have
	// no caller to return them to (default slog.Default()).
	Logger *slog.Logger
	// Observe, if set, is told of every Request when it returns: the
	// command, how long it took and its error (for metrics). It runs on
	// the caller's goroutine and must not block.
	Observe func(command string, d time.Duration, err error)
}

// Bus routes typed commands and events between the endpoints registered on
// it. All its methods and the package's functions are safe for concurrent
// use. Create one with [New]; the zero Bus is not usable.
type Bus struct {
	timeout   time.Duration
	mailbox   int
	strict    bool
	codec     Codec
	transport Transport
	log       *slog.Logger
	observe   func(command string, d time.Duration, err error)

	closed atomic.Bool
	mu     sync.Mutex         // guards routes and closing with closed
	routes map[Address]*route // the endpoints registered here
	subs   subSet             // bus-wide subscriptions (Subscribe)
	wg     sync.WaitGroup     // every worker goroutine of every endpoint
}

// New returns a Bus. It starts no goroutine: endpoints do, when registered.
// New panics if a field of opts is negative, which is a programmer error.
func New(opts Options) *Bus {
	if opts.DefaultTimeout < 0 {
		panic(fmt.Sprintf("bus: Options.DefaultTimeout (%v) < 0: use 0 for the default (%v) or a positive duration", opts.DefaultTimeout, DefaultTimeout))
	}
	if opts.MailboxSize < 0 {
		panic(fmt.Sprintf("bus: Options.MailboxSize (%d) < 0: use 0 for the default (%d) or a positive size", opts.MailboxSize, DefaultMailboxSize))
	}
	b := &Bus{
		timeout:   opts.DefaultTimeout,
		mailbox:   opts.MailboxSize,
		strict:    opts.Strict,
		codec:     opts.Codec,
		transport: opts.Transport,
		log:       opts.Logger,
		observe:   opts.Observe,
		routes:    map[Address]*route{},
	}
	if b.timeout == 0 {
		b.timeout = DefaultTimeout
	}
	if b.mailbox == 0 {
		b.mailbox = DefaultMailboxSize
	}
	if b.codec == nil {
		b.codec = JSON{}
	}
	if b.transport == nil {
		b.transport = newMemTransport()
	}
	if b.log == nil {
		b.log = slog.Default()
	}
	b.log = b.log.With("component", "bus")
	return b
}

// Close closes every endpoint: they stop accepting messages, the messages
// still queued are answered with ErrClosed, the contexts given to Send and
// event handlers are cancelled, and Close returns once every handler that
// was running has returned. Calls made after Close fail with ErrClosed.
// Close does not close a Transport given in Options.
func (b *Bus) Close() {
	b.mu.Lock()
	b.closed.Store(true)
	routes := slices.Collect(maps.Values(b.routes))
	b.mu.Unlock()
	for _, r := range routes {
		r.stop(true)
	}
	b.wg.Wait()
}

// Register creates the endpoint of addr and makes it reachable at once; it
// starts the endpoint's workers, which the Bus owns until the endpoint or
// the Bus is closed. Add its commands with [Handle] and its subscriptions
// with [Endpoint.Subscribe]: a call for a command not yet handled fails
// with ErrUnknownCommand. addr must be concrete and free.
func (b *Bus) Register(addr Address, opts ...Option) (*Endpoint, error) {
	cfg := endpointConfig{concurrency: 1, mailbox: b.mailbox}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, fmt.Errorf("bus: register %s: %w", addr, err)
		}
	}
	if err := addr.valid(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed.Load() {
		return nil, fmt.Errorf("%w: register %s", ErrClosed, addr)
	}
	if _, ok := b.routes[addr]; ok {
		return nil, fmt.Errorf("%w: %s", ErrAddressInUse, addr)
	}
	r := newRoute(b, addr, cfg)
	ep := newEndpoint(r)
	ep.state = stateCurrent
	r.current.Store(ep)
	if err := b.transport.Bind(addr, r); err != nil {
		r.cancel()
		return nil, err
	}
	b.routes[addr] = r
	r.start(cfg.concurrency)
	return ep, nil
}

// Queued returns how many messages wait in the mailbox of addr, not
// counting those being handled; ok is false when nothing is registered at
// addr on this Bus. It counts what this process queues: an endpoint in
// another process, behind a Transport, is not seen.
func (b *Bus) Queued(addr Address) (n int, ok bool) {
	b.mu.Lock()
	r, ok := b.routes[addr]
	b.mu.Unlock()
	if !ok {
		return 0, false
	}
	return len(r.mailbox), true
}

// Standby creates a second endpoint for the registered address addr that
// is not reachable yet: the current one keeps serving. Give it its
// handlers and subscriptions, then put it in place with [Bus.Replace]. It
// shares the address's mailbox and workers, so it takes the concurrency
// and mailbox size given to Register.
func (b *Bus) Standby(addr Address) (*Endpoint, error) {
	b.mu.Lock()
	r, ok := b.routes[addr]
	closed := b.closed.Load()
	b.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("%w: standby %s", ErrClosed, addr)
	}
	if !ok {
		return nil, fmt.Errorf("%w: standby %s: register it first", ErrUnknownAddress, addr)
	}
	r.ctl.Lock()
	defer r.ctl.Unlock()
	if r.closing {
		return nil, fmt.Errorf("%w: standby %s", ErrClosed, addr)
	}
	return newEndpoint(r), nil
}

// Replace makes next, an endpoint from [Bus.Standby], the endpoint of its
// address, atomically, and returns the one it replaces. No message is lost
// or answered twice: the address keeps its mailbox and workers, every
// message a worker takes after Replace is handled by next, and the old
// endpoint only finishes the handlers it is running. With Concurrency 1 the
// two never run at the same time. Close the old endpoint to wait for those
// handlers; then shut down whatever it served.
//
// next has only its own handlers and subscriptions: give it every command
// and event the old one had. A message accepted before Replace for a
// command that next does not handle is answered with ErrUnknownCommand.
func (b *Bus) Replace(next *Endpoint) (old *Endpoint, err error) {
	r := next.route
	if r.bus != b {
		return nil, fmt.Errorf("bus: replace %s: the endpoint belongs to another Bus", r.addr)
	}
	r.ctl.Lock()
	defer r.ctl.Unlock()
	if r.closing {
		return nil, fmt.Errorf("%w: replace %s", ErrClosed, r.addr)
	}
	if next.state != stateStandby {
		return nil, fmt.Errorf("bus: replace %s: the endpoint is %s, not on standby: get one from Standby", r.addr, next.state)
	}
	old = r.current.Load()
	next.state = stateCurrent
	r.current.Store(next)
	old.state = stateRetired
	old.retire()
	return old, nil
}

// unregister removes r from the routing tables.
func (b *Bus) unregister(r *route) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.routes[r.addr] == r {
		delete(b.routes, r.addr)
	}
	b.transport.Unbind(r.addr, r)
}

// endpointConfig is what the Options of Register set.
type endpointConfig struct {
	concurrency int
	mailbox     int
}

// Option configures an endpoint in [Bus.Register].
type Option func(*endpointConfig) error

// Concurrency sets how many messages the endpoint handles at once (default
// 1: one at a time, in order, as a service expects).
func Concurrency(n int) Option {
	return func(c *endpointConfig) error {
		if n < 1 {
			return fmt.Errorf("Concurrency(%d): use 1 or more", n)
		}
		c.concurrency = n
		return nil
	}
}

// Mailbox sets how many messages the endpoint queues before senders block
// (default Options.MailboxSize).
func Mailbox(n int) Option {
	return func(c *endpointConfig) error {
		if n < 1 {
			return fmt.Errorf("Mailbox(%d): use 1 or more", n)
		}
		c.mailbox = n
		return nil
	}
}
