package bus

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// Endpoint is the owner of an address: its command handlers and its
// subscriptions. It is created by [Bus.Register], or by [Bus.Standby] to
// take over a registered address with [Bus.Replace].
type Endpoint struct {
	route *route

	mu       sync.Mutex                         // guards writes to handlers
	handlers atomic.Pointer[map[string]handler] // copy-on-write, read without a lock
	subs     subSet

	// active counts the workers handling a message with this endpoint;
	// once retired, drained is closed when it reaches zero.
	active    atomic.Int64
	retired   atomic.Bool
	drainOnce sync.Once
	drained   chan struct{}

	state epState // guarded by route.ctl
}

type epState uint8

const (
	stateStandby epState = iota
	stateCurrent
	stateRetired
	stateClosed
)

func (s epState) String() string {
	return [...]string{"on standby", "current", "replaced", "closed"}[s]
}

// handler is a typed handler bound to its types by Handle.
type handler func(ctx context.Context, e *Endpoint, m Message) (any, error)

func newEndpoint(r *route) *Endpoint {
	e := &Endpoint{route: r, drained: make(chan struct{})}
	e.handlers.Store(&map[string]handler{})
	return e
}

// Address returns the endpoint's address.
func (e *Endpoint) Address() Address { return e.route.addr }

// Close takes the endpoint out of service and waits, until ctx ends, for
// what it accepted to be handled.
//
// For the current endpoint of an address, Close unregisters the address:
// it stops accepting messages (senders blocked on a full mailbox get
// ErrClosed), handles every message already queued, waits for the
// handlers, and stops the workers. If ctx ends first, the messages still
// queued are answered with ErrClosed, the context of Send and event
// handlers is cancelled, and Close returns an error wrapping ctx.Err();
// the Bus still owns the workers and Bus.Close waits for them.
//
// For an endpoint replaced by [Bus.Replace], Close waits for the handlers
// it was still running. For one on standby it only discards it. Close can
// be called more than once.
func (e *Endpoint) Close(ctx context.Context) error {
	r := e.route
	r.ctl.Lock()
	state := e.state
	if state == stateStandby {
		e.state = stateClosed
	}
	r.ctl.Unlock()
	switch state {
	case stateCurrent:
		r.stop(false)
		return r.wait(ctx)
	case stateRetired:
		select {
		case <-e.drained:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("bus: close replaced endpoint of %s: %d handler(s) still running: %w", r.addr, e.active.Load(), ctx.Err())
		}
	default:
		return nil
	}
}

// Handle makes fn the handler of command on e. A [Request] or [Send] of
// command to e's address calls fn in one of e's workers; for a Request,
// fn's result or error is the caller's. fn gets the caller's context for a
// Request, with its deadline (or the DefaultTimeout), and a context that
// ends when the endpoint is forced to stop for a Send.
//
// An error fn returns reaches the caller as a [*RemoteError], except that
// fn returning its context's error once that context has ended gives the
// caller the same timeout or cancellation error as if it had stopped
// waiting itself. A panic in fn is recovered: the caller gets an error
// wrapping [ErrHandlerPanic] with the panic value, the stack is logged,
// and the endpoint keeps serving. A request whose caller has already gone
// when its turn comes is dropped without calling fn.
//
// Handle panics if on is nil, command is empty, fn is nil, or command
// already has a handler on the endpoint: these are programmer errors.
func Handle[Req, Resp any](on Handlers, command string, fn func(ctx context.Context, req Req) (Resp, error)) {
	if on == nil {
		panic("bus: Handle: nil Handlers")
	}
	e := on.endpoint()
	if command == "" || fn == nil {
		panic("bus: Handle: empty command or nil handler")
	}
	h := func(ctx context.Context, e *Endpoint, m Message) (any, error) {
		b := e.route.bus
		var req Req
		switch {
		case m.Encoded:
			v, err := decode[Req](b.codec, m.Payload)
			if err != nil {
				return nil, fmt.Errorf("%w: %s %s: cannot decode payload into %s: %w", ErrStrict, e.route.addr, m.Name, reflect.TypeFor[Req](), err)
			}
			req = v
		case m.Payload != nil:
			v, ok := m.Payload.(Req)
			if !ok {
				return nil, fmt.Errorf("%w: %s %s: payload is %T, handler wants %s", ErrType, e.route.addr, m.Name, m.Payload, reflect.TypeFor[Req]())
			}
			req = v
		}
		resp, err := fn(ctx, req)
		if err != nil {
			if cerr := ctx.Err(); cerr != nil && errors.Is(err, cerr) {
				// The handler gave up because the caller's time ran out.
				return nil, ctxError(ctx, e.route.addr, m.Name)
			}
			return nil, newRemoteError(e.route.addr, m.Name, err, b.strict)
		}
		if b.strict {
			return roundTrip(b.codec, resp, "reply")
		}
		return resp, nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	old := *e.handlers.Load()
	if _, ok := old[command]; ok {
		panic(fmt.Sprintf("bus: Handle: command %q already has a handler at %s", command, e.route.addr))
	}
	m := make(map[string]handler, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	m[command] = h
	e.handlers.Store(&m)
}

// Subscribe calls fn for every event named event published to e's address
// or to a group that contains it (see [Publish]). fn runs in e's workers,
// like a command handler (one message at a time with Concurrency 1), with
// a context that ends when the endpoint is forced to stop. A panic in fn is
// recovered and logged. Calling unsubscribe removes exactly this
// subscription; calling it again does nothing.
func (e *Endpoint) Subscribe(event string, fn func(ctx context.Context, ev Event)) (unsubscribe func()) {
	return e.subs.add(event, fn)
}

// dispatch handles one message with e.
func (e *Endpoint) dispatch(env *envelope) {
	m := &env.m
	r := e.route
	switch m.Kind {
	case KindRequest:
		if env.ctx.Err() != nil {
			// The caller has gone; its reply slot has room for this.
			m.Reply <- Response{Err: ctxError(env.ctx, r.addr, m.Name)}
			return
		}
		h, ok := (*e.handlers.Load())[m.Name]
		if !ok {
			m.Reply <- Response{Err: fmt.Errorf("%w: %q at %s", ErrUnknownCommand, m.Name, r.addr)}
			return
		}
		v, err := e.call(env.ctx, h, m)
		m.Reply <- Response{Value: v, Err: err}
	case KindSend:
		h, ok := (*e.handlers.Load())[m.Name]
		if !ok {
			r.bus.log.Warn("send dropped: unknown command", "address", r.addr, "command", m.Name)
			return
		}
		if _, err := e.call(r.ctx, h, m); err != nil {
			r.bus.log.Warn("send failed", "address", r.addr, "command", m.Name, "err", err)
		}
	case KindEvent:
		ev := Event{Name: m.Name, Payload: m.Payload}
		for _, s := range e.subs.get(m.Name) {
			s.call(r.ctx, r.bus, r.addr, ev)
		}
	}
}

// call runs h, turning a panic into an error wrapping ErrHandlerPanic.
func (e *Endpoint) call(ctx context.Context, h handler, m *Message) (v any, err error) {
	defer func() {
		if p := recover(); p != nil {
			r := e.route
			r.bus.log.Error("handler panicked", "address", r.addr, "command", m.Name, "panic", p, "stack", string(debug.Stack()))
			v, err = nil, newRemoteError(r.addr, m.Name, fmt.Errorf("%w: %v", ErrHandlerPanic, p), r.bus.strict)
		}
	}()
	return h(ctx, e, *m)
}

// retire marks a replaced endpoint; drained closes once no worker uses it.
func (e *Endpoint) retire() {
	e.retired.Store(true)
	if e.active.Load() == 0 {
		e.drainOnce.Do(e.closeDrained)
	}
}

func (e *Endpoint) leave() {
	if e.active.Add(-1) == 0 && e.retired.Load() {
		e.drainOnce.Do(e.closeDrained)
	}
}

func (e *Endpoint) closeDrained() { close(e.drained) }

// envelope is a message in a mailbox, with the caller's context.
type envelope struct {
	ctx context.Context
	m   Message
}

// route is the mailbox and the workers of one address, which outlive the
// endpoints that [Bus.Replace] swaps in and out. It is the Receiver bound
// to the Transport.
type route struct {
	bus     *Bus
	addr    Address
	mailbox chan envelope
	current atomic.Pointer[Endpoint]

	// ctx is given to Send and event handlers; cancel ends it when the
	// endpoint is forced to stop.
	ctx    context.Context
	cancel context.CancelFunc

	ctl     sync.Mutex // guards closing and the state of the route's endpoints; serialises Replace and Close
	closing bool

	mu       sync.RWMutex  // senders hold it shared while enqueuing; stop holds it to close the mailbox
	closed   bool          // guarded by mu
	stopping chan struct{} // closed when stop begins: wakes senders blocked on a full mailbox
	discard  atomic.Bool   // answer queued messages with ErrClosed instead of handling them
	live     atomic.Int32  // running workers
	done     chan struct{} // closed when the last worker has returned
}

func newRoute(b *Bus, addr Address, cfg endpointConfig) *route {
	r := &route{
		bus:      b,
		addr:     addr,
		mailbox:  make(chan envelope, cfg.mailbox),
		stopping: make(chan struct{}),
		done:     make(chan struct{}),
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	return r
}

// start starts n workers, owned by the Bus's WaitGroup.
func (r *route) start(n int) {
	r.live.Store(int32(n))
	r.bus.wg.Add(n)
	for range n {
		go r.work()
	}
}

func (r *route) work() {
	defer r.bus.wg.Done()
	defer func() {
		if r.live.Add(-1) == 0 {
			r.cancel()
			close(r.done)
		}
	}()
	for env := range r.mailbox {
		if r.discard.Load() {
			if env.m.Kind == KindRequest {
				env.m.Reply <- Response{Err: fmt.Errorf("%w: %s %s", ErrClosed, r.addr, env.m.Name)}
			}
			continue
		}
		e := r.enter()
		e.dispatch(&env)
		e.leave()
		if env.m.Kind == KindRequest {
			// Let the caller just woken run here at once rather than
			// wait for another P to steal it: under load this balances
			// callers over the Ps and doubles throughput.
			runtime.Gosched()
		}
	}
}

// enter returns the current endpoint, counted as active. A worker that
// counted itself on an endpoint that Replace has just retired backs out
// and takes the new one, so that once a retired endpoint's count reaches
// zero no worker will use it again.
func (r *route) enter() *Endpoint {
	for {
		e := r.current.Load()
		e.active.Add(1)
		if r.current.Load() == e {
			return e
		}
		e.leave()
	}
}

// Receive enqueues m; it implements Receiver.
func (r *route) Receive(ctx context.Context, m Message) error {
	e := r.current.Load()
	switch m.Kind {
	case KindEvent:
		if !e.subs.has(m.Name) {
			return nil // nobody listens here
		}
	case KindRequest, KindSend:
		if m.Kind == KindRequest && m.Reply == nil {
			return fmt.Errorf("bus: %s %s: request without a Reply channel", r.addr, m.Name)
		}
		if _, ok := (*e.handlers.Load())[m.Name]; !ok {
			return fmt.Errorf("%w: %q at %s", ErrUnknownCommand, m.Name, r.addr)
		}
	default:
		return fmt.Errorf("bus: %s %s: message of unknown kind %d", r.addr, m.Name, m.Kind)
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return fmt.Errorf("%w: %s", ErrClosed, r.addr)
	}
	env := envelope{ctx: ctx, m: m}
	select {
	case r.mailbox <- env:
		return nil
	default:
		return r.enqueueSlow(ctx, env)
	}
}

// enqueueSlow waits for room in a full mailbox, until ctx ends, the route
// stops, or, if ctx has no deadline, the Bus's DefaultTimeout passes.
func (r *route) enqueueSlow(ctx context.Context, env envelope) error {
	var timeout <-chan time.Time
	if _, ok := ctx.Deadline(); !ok {
		t := time.NewTimer(r.bus.timeout)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case r.mailbox <- env:
		return nil
	case <-ctx.Done():
		return ctxError(ctx, r.addr, env.m.Name)
	case <-timeout:
		return fmt.Errorf("%w: %s %s: mailbox full for %v: %w", ErrTimeout, r.addr, env.m.Name, r.bus.timeout, context.DeadlineExceeded)
	case <-r.stopping:
		return fmt.Errorf("%w: %s", ErrClosed, r.addr)
	}
}

// stop unregisters the route and closes its mailbox, once; with force the
// queued messages are refused and the handlers' context is cancelled.
func (r *route) stop(force bool) {
	r.ctl.Lock()
	first := !r.closing
	r.closing = true
	r.ctl.Unlock()
	if first {
		r.bus.unregister(r)
		close(r.stopping)
		r.mu.Lock() // waits for senders to leave
		r.closed = true
		close(r.mailbox)
		r.mu.Unlock()
	}
	if force {
		r.discard.Store(true)
		r.cancel()
	}
}

// wait waits for the workers to return, until ctx ends; then it forces them.
func (r *route) wait(ctx context.Context) error {
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		r.stop(true)
		return fmt.Errorf("bus: close %s: %d handler(s) still running: %w", r.addr, r.current.Load().active.Load(), ctx.Err())
	}
}

// subSet is a copy-on-write set of subscriptions by event name. The zero
// value is empty and ready.
type subSet struct {
	mu sync.Mutex                                 // guards writes to m
	m  atomic.Pointer[map[string][]*subscription] // read without a lock
}

type subscription struct {
	fn func(ctx context.Context, ev Event)
}

func (s *subSet) get(event string) []*subscription {
	if m := s.m.Load(); m != nil {
		return (*m)[event]
	}
	return nil
}

func (s *subSet) has(event string) bool { return len(s.get(event)) > 0 }

func (s *subSet) add(event string, fn func(context.Context, Event)) (unsubscribe func()) {
	if fn == nil {
		panic("bus: Subscribe: nil func")
	}
	sub := &subscription{fn: fn}
	s.update(event, func(subs []*subscription) []*subscription {
		return append(subs[:len(subs):len(subs)], sub)
	})
	var once sync.Once
	return func() {
		once.Do(func() {
			s.update(event, func(subs []*subscription) []*subscription {
				out := make([]*subscription, 0, len(subs))
				for _, x := range subs {
					if x != sub {
						out = append(out, x)
					}
				}
				return out
			})
		})
	}
}

// update replaces the subscriptions to event with what f returns.
func (s *subSet) update(event string, f func([]*subscription) []*subscription) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var old map[string][]*subscription
	if p := s.m.Load(); p != nil {
		old = *p
	}
	m := make(map[string][]*subscription, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	if subs := f(old[event]); len(subs) > 0 {
		m[event] = subs
	} else {
		delete(m, event)
	}
	s.m.Store(&m)
}

// call runs the subscriber, recovering and logging a panic.
func (s *subscription) call(ctx context.Context, b *Bus, at Address, ev Event) {
	defer func() {
		if p := recover(); p != nil {
			b.log.Error("subscriber panicked", "address", at, "event", ev.Name, "panic", p, "stack", string(debug.Stack()))
		}
	}()
	s.fn(ctx, ev)
}
