package services

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/internal/errwrap"
	"github.com/gofleet/fleet/internal/restart"
)

// Lock order (a lock on the left may be held while taking one on its
// right):
//
//	service.op → Manager.mu, service.mu   (the last two are leaves, each taken alone)
//
// service.op is a semaphore held for a whole operation on one service;
// no operation holds the op of two services at once.

// Defaults for the zero fields of ManagerConfig.
const (
	defaultMaxRestarts     = 5
	defaultRestartWindow   = 10 * time.Minute
	defaultRestartBackoff  = time.Second
	maxRestartBackoff      = time.Minute
	restartJitter          = 0.25 // up to a quarter of the back-off added at random
	defaultShutdownTimeout = 10 * time.Second
)

// ManagerConfig configures a Manager. Zero fields take the defaults given.
type ManagerConfig struct {
	// Specs are the services Start starts, in this order.
	Specs []Spec
	// StartTimeout bounds each Start call (eris-fleet's serviceTimeout);
	// one that does not return in time is a starting error. 0: no bound.
	StartTimeout time.Duration
	// StartTogether starts every service at once
	// (startServicesTogether); otherwise one after the other, each once
	// the previous one is ready.
	StartTogether bool
	// MaxRestarts is how many times a service that fails to start is
	// restarted within RestartWindow (default 10 min) before it is
	// reported failed (default 5; -1: never give up). The count starts
	// again once the service is ready. The wait before a restart doubles
	// from RestartBackoff (default 1 s) up to a minute, plus up to a quarter
	// of it at random so that services failing together spread out.
	MaxRestarts    int
	RestartWindow  time.Duration
	RestartBackoff time.Duration
	// ShutdownTimeout bounds each Stop hook (default 10 s).
	ShutdownTimeout time.Duration
	// Logger receives the lifecycle events (default: discarded).
	Logger *slog.Logger
	// OnEvent, if set, is called for every lifecycle event, on the
	// goroutine that caused it, possibly from several at once: it must
	// not block.
	OnEvent func(Event)
}

// State is where a service is in its life.
type State string

// The states of a service.
const (
	StateStarting   State = "starting"   // its first instance is starting
	StateReady      State = "ready"      // an instance serves its commands
	StateRestarting State = "restarting" // a new instance is starting, after a starting error or for a restart
	StateFailed     State = "failed"     // given up on; Restart tries again
	StateStopped    State = "stopped"    // not started yet, or stopped by Close
)

// Info describes a service at one moment. It crosses the bus as it is
// (the fleet's workers command), so every field survives the Codec.
type Info struct {
	Name  string `json:"name"`
	State State  `json:"state"`
	// StartedAt is when the instance now serving became ready; zero when
	// none does. Uptime is the time since.
	StartedAt time.Time     `json:"started_at,omitzero"`
	Uptime    time.Duration `json:"uptime_ns"`
	// Restarts counts the restarts in the service's life: after starting
	// errors, and by Restart and SoftRestart.
	Restarts int `json:"restarts"`
	// MailboxDepth is how many commands wait in the service's mailbox,
	// not counting those being handled; -1 while nothing is registered
	// at its address (stopped, or between two instances).
	MailboxDepth int `json:"mailbox_depth"`
	// Err is the message of the last starting error, until an instance
	// is ready; empty otherwise. The events carry the error itself.
	Err string `json:"error,omitempty"`
}

// Manager runs services on a bus: it starts them, restarts those that
// fail to start, and restarts, adds and removes them on request. Create
// one with [NewManager]; all its methods are safe for concurrent use.
type Manager struct {
	bus *bus.Bus
	cfg ManagerConfig
	log *slog.Logger

	mu       sync.Mutex // guards the fields below
	services map[string]*service
	order    []*service // in creation order
	initial  []*service // the services of cfg.Specs, for Start
	started  bool
	closed   bool
	ops      map[uint64]context.CancelCauseFunc // the running operations, cancelled by Close
	nextOp   uint64
	runners  map[*runner]struct{} // the goroutines running a Start or Stop
}

// service is one managed service.
type service struct {
	spec Spec
	addr bus.Address
	op   chan struct{} // a semaphore held by the operation changing the instance

	// Guarded by op:
	ep      *bus.Endpoint // the endpoint at addr: the ready instance's or a placeholder; nil when addr is not registered
	cur     *instance     // the ready instance, or nil
	removed bool          // Shutdown took it out of the Manager

	mu        sync.Mutex // guards the fields below
	state     State
	startedAt time.Time
	restarts  int
	err       error
}

// instance is one started Service, with its endpoint.
type instance struct {
	svc Service
	ep  *bus.Endpoint
}

// runner is a goroutine running a user's Start or Stop.
type runner struct{ done chan struct{} }

// NewManager returns a Manager for the services of cfg, on b. It checks
// cfg and starts nothing: call [Manager.Start].
func NewManager(b *bus.Bus, cfg ManagerConfig) (*Manager, error) {
	if b == nil {
		return nil, errors.New("services: bus is nil: pass the fleet's *bus.Bus")
	}
	switch {
	case cfg.StartTimeout < 0:
		return nil, fmt.Errorf("services: StartTimeout (%v) < 0: use 0 for no bound or a positive duration", cfg.StartTimeout)
	case cfg.RestartWindow < 0, cfg.RestartBackoff < 0, cfg.ShutdownTimeout < 0:
		return nil, fmt.Errorf("services: RestartWindow (%v), RestartBackoff (%v) and ShutdownTimeout (%v) must not be negative: use 0 for the defaults",
			cfg.RestartWindow, cfg.RestartBackoff, cfg.ShutdownTimeout)
	case cfg.MaxRestarts < -1:
		return nil, fmt.Errorf("services: MaxRestarts (%d) < -1: use -1 to never give up, 0 for the default (%d), or a positive count", cfg.MaxRestarts, defaultMaxRestarts)
	}
	if cfg.MaxRestarts == 0 {
		cfg.MaxRestarts = defaultMaxRestarts
	}
	if cfg.RestartWindow == 0 {
		cfg.RestartWindow = defaultRestartWindow
	}
	if cfg.RestartBackoff == 0 {
		cfg.RestartBackoff = defaultRestartBackoff
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = defaultShutdownTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Manager{
		bus:      b,
		log:      cfg.Logger.With("component", "services"),
		services: map[string]*service{},
		ops:      map[uint64]context.CancelCauseFunc{},
		runners:  map[*runner]struct{}{},
	}
	specs := slices.Clone(cfg.Specs)
	cfg.Specs = nil
	m.cfg = cfg
	for i, sp := range specs {
		sp, err := checkSpec(sp)
		if err != nil {
			return nil, fmt.Errorf("services: Specs[%d]: %w", i, err)
		}
		if _, dup := m.services[sp.Name]; dup {
			return nil, fmt.Errorf("services: duplicate service name %q: names must be unique", sp.Name)
		}
		s := newService(sp)
		m.services[sp.Name] = s
		m.order = append(m.order, s)
		m.initial = append(m.initial, s)
	}
	return m, nil
}

// checkSpec validates sp and fills its defaults.
func checkSpec(sp Spec) (Spec, error) {
	switch {
	case sp.Name == "":
		return sp, errors.New("Name is empty: give every service a name")
	case bus.Service(sp.Name).IsGroup():
		return sp, fmt.Errorf("service name %q is reserved for the group of all services: choose another name", sp.Name)
	case sp.New == nil:
		return sp, fmt.Errorf("service %q: New is nil: set it to a function returning the service", sp.Name)
	case sp.Concurrency < 0:
		return sp, fmt.Errorf("service %q: Concurrency (%d) < 0: use 0 for the default (1) or a positive number", sp.Name, sp.Concurrency)
	}
	if sp.Concurrency == 0 {
		sp.Concurrency = 1
	}
	return sp, nil
}

func newService(sp Spec) *service {
	return &service{spec: sp, addr: bus.Service(sp.Name), op: make(chan struct{}, 1), state: StateStopped}
}

// Start starts the services of ManagerConfig.Specs, one after the other
// or all at once (StartTogether), and returns when every one is ready, or
// with the error of the first one that failed for good (after its
// restarts), which names it. In the fleet it runs before any cluster
// starts, as in eris-fleet. With StartTogether the others stop trying when
// one fails; one after the other, the services after it are not started.
// The services that are ready stay so: call Close.
//
// Start panics if called twice, a programmer error.
func (m *Manager) Start(ctx context.Context) error {
	ctx, done, err := m.begin(ctx)
	if err != nil {
		return err
	}
	defer done()
	m.mu.Lock()
	if m.started {
		m.mu.Unlock()
		panic("services: Manager.Start called twice")
	}
	m.started = true
	list := slices.Clone(m.initial)
	m.mu.Unlock()

	if !m.cfg.StartTogether {
		for _, s := range list {
			if err := m.startService(ctx, s); err != nil {
				return err
			}
		}
		return nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		wg       sync.WaitGroup
		once     sync.Once
		firstErr error
	)
	for _, s := range list {
		wg.Go(func() {
			if err := m.startService(ctx, s); err != nil {
				once.Do(func() {
					firstErr = err
					cancel(fmt.Errorf("services: %q failed to start", s.spec.Name))
				})
			}
		})
	}
	wg.Wait()
	return firstErr
}

// Create adds a service and starts it, returning when it is ready or
// failed for good (eris-fleet's createService). Its name must not be in
// use. A service that failed stays listed, as failed: Restart or Shutdown
// it.
func (m *Manager) Create(ctx context.Context, sp Spec) error {
	sp, err := checkSpec(sp)
	if err != nil {
		return fmt.Errorf("services: create: %w", err)
	}
	ctx, done, err := m.begin(ctx)
	if err != nil {
		return err
	}
	defer done()
	m.mu.Lock()
	if _, dup := m.services[sp.Name]; dup {
		m.mu.Unlock()
		return fmt.Errorf("services: duplicate service name %q: names must be unique", sp.Name)
	}
	s := newService(sp)
	m.services[sp.Name] = s
	m.order = append(m.order, s)
	m.mu.Unlock()
	return m.startService(ctx, s)
}

// SoftRestart replaces a ready service's instance without losing a
// command: a new instance starts on standby while the old one serves;
// once it is ready it takes over the service's address and mailbox at
// once, then the old instance finishes the commands it was handling and
// its Stop hook runs. If the new instance fails to start, the old one
// keeps serving and the error is returned: SoftRestart makes one attempt.
// After the switch, an error says what did not stop cleanly in the old
// instance; the new one serves.
func (m *Manager) SoftRestart(ctx context.Context, name string) error {
	ctx, done, err := m.begin(ctx)
	if err != nil {
		return err
	}
	defer done()
	s, err := m.lock(ctx, name)
	if err != nil {
		return err
	}
	defer s.unlock()
	if s.cur == nil {
		return fmt.Errorf("services: soft restart %q: %w (%s): use Restart", name, ErrNotReady, s.getState())
	}
	s.setState(StateRestarting)
	m.emit(Restarted{Service: name, Attempt: 1})
	inst, err := m.launch(ctx, s)
	if err != nil {
		s.setState(StateReady)
		m.emit(StartingError{Service: name, Attempt: 1, Err: err})
		return fmt.Errorf("services: soft restart %q: the old instance keeps serving: %w", name, err)
	}
	old, prev, err := m.swap(s, inst)
	if err != nil {
		s.setState(StateReady)
		return errors.Join(fmt.Errorf("services: soft restart %q: %w", name, err), m.discard(ctx, inst))
	}
	s.mu.Lock()
	s.restarts++
	s.mu.Unlock()
	m.emit(Ready{Service: name, Attempt: 1})
	if err := m.retire(ctx, old, prev); err != nil {
		return fmt.Errorf("services: soft restart %q: the new instance serves, the old one did not stop cleanly: %w", name, err)
	}
	return nil
}

// Restart stops a service and starts it again (a hard restart): its
// address stops accepting commands, the commands already queued are
// handled, the old instance's Stop hook runs, then new instances are
// started as by Start, with restarts after starting errors. Calls made in
// between fail with bus.ErrUnknownAddress. It also starts a failed
// service, or one not started yet.
func (m *Manager) Restart(ctx context.Context, name string) error {
	ctx, done, err := m.begin(ctx)
	if err != nil {
		return err
	}
	defer done()
	s, err := m.lock(ctx, name)
	if err != nil {
		return err
	}
	defer s.unlock()
	s.mu.Lock()
	s.state, s.startedAt = StateRestarting, time.Time{}
	s.restarts++
	s.mu.Unlock()
	m.emit(Restarted{Service: name, Attempt: 1})
	stopErr := m.halt(ctx, s)
	if stopErr != nil {
		stopErr = fmt.Errorf("services: restart %q: the old instance did not stop cleanly: %w", name, stopErr)
	}
	return errors.Join(stopErr, m.start(ctx, s, StateRestarting))
}

// Shutdown stops a service and removes it from the Manager (eris-fleet's
// shutdownService): its address stops accepting commands, the commands
// already queued are handled, then its Stop hook runs. The error says
// what did not stop cleanly; the service is removed either way.
func (m *Manager) Shutdown(ctx context.Context, name string) error {
	ctx, done, err := m.begin(ctx)
	if err != nil {
		return err
	}
	defer done()
	s, err := m.lock(ctx, name)
	if err != nil {
		return err
	}
	defer s.unlock()
	err = m.stop(ctx, s, "shutdown")
	s.removed = true
	m.mu.Lock()
	delete(m.services, name)
	m.order = slices.DeleteFunc(m.order, func(x *service) bool { return x == s })
	m.mu.Unlock()
	return err
}

// Close stops every service, in parallel, as Shutdown does, and cancels
// the starts and restarts in progress, which return errors wrapping
// ErrClosed. It returns when every service has stopped, or when ctx ends,
// with an error naming what did not stop: a drain that did not finish, a
// Stop hook that failed or outlived ShutdownTimeout, a Start or Stop call
// that ignores its context and still runs (Close waits for those at most
// ShutdownTimeout more; they are left running). Afterwards the services
// are listed as stopped and the other methods return ErrClosed. Calling
// Close again waits for the calls still running, as long. Close does not
// close the bus.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return m.waitRunners(ctx)
	}
	m.closed = true
	for _, cancel := range m.ops {
		cancel(ErrClosed)
	}
	list := slices.Clone(m.order)
	m.mu.Unlock()

	errs := make([]error, len(list)+1)
	var wg sync.WaitGroup
	for i, s := range list {
		wg.Go(func() { errs[i] = m.closeService(ctx, s) })
	}
	wg.Wait()
	errs[len(list)] = m.waitRunners(ctx)
	return errors.Join(errs...)
}

func (m *Manager) closeService(ctx context.Context, s *service) error {
	name := s.spec.Name
	select {
	case s.op <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("services: close %q: still busy with another operation: %w", name, ctx.Err())
	}
	defer s.unlock()
	if s.removed {
		return nil
	}
	return m.stop(ctx, s, "close")
}

// stop halts a locked service, marks it stopped and reports the
// shutdown; verb names the operation in the error.
func (m *Manager) stop(ctx context.Context, s *service, verb string) error {
	running := s.ep != nil || s.cur != nil
	err := m.halt(ctx, s)
	s.setState(StateStopped)
	if running {
		m.emit(Stopped{Service: s.spec.Name, Err: err})
	}
	if err != nil {
		return fmt.Errorf("services: %s %q: %w", verb, s.spec.Name, err)
	}
	return nil
}

// waitRunners waits for the goroutines running a Start or Stop, until ctx
// ends or ShutdownTimeout passes: those left are calls that outlived
// their own bound. After Close no operation starts new ones.
func (m *Manager) waitRunners(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.ShutdownTimeout)
	defer cancel()
	for {
		m.mu.Lock()
		var r *runner
		for r = range m.runners {
			break
		}
		n := len(m.runners)
		m.mu.Unlock()
		if r == nil {
			return nil
		}
		select {
		case <-r.done:
		case <-ctx.Done():
			return fmt.Errorf("services: close: %d Start or Stop call(s) still running, past their bounds: %w", n, ctx.Err())
		}
	}
}

// Services returns the state of every service, in creation order. The
// caller owns the slice.
func (m *Manager) Services() []Info {
	m.mu.Lock()
	list := slices.Clone(m.order)
	m.mu.Unlock()
	now := time.Now()
	out := make([]Info, 0, len(list))
	for _, s := range list {
		s.mu.Lock()
		in := Info{Name: s.spec.Name, State: s.state, StartedAt: s.startedAt, Restarts: s.restarts, MailboxDepth: -1}
		if s.err != nil {
			in.Err = s.err.Error()
		}
		s.mu.Unlock()
		if n, ok := m.bus.Queued(s.addr); ok {
			in.MailboxDepth = n
		}
		if !in.StartedAt.IsZero() {
			in.Uptime = now.Sub(in.StartedAt)
		}
		out = append(out, in)
	}
	return out
}

// begin registers an operation that Close cancels; done ends it.
func (m *Manager) begin(ctx context.Context) (context.Context, func(), error) {
	ctx, cancel := context.WithCancelCause(ctx)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		cancel(nil)
		return nil, nil, ErrClosed
	}
	id := m.nextOp
	m.nextOp++
	m.ops[id] = cancel
	return ctx, func() {
		m.mu.Lock()
		delete(m.ops, id)
		m.mu.Unlock()
		cancel(nil)
	}, nil
}

// lock finds the service called name and takes its op, until ctx ends.
func (m *Manager) lock(ctx context.Context, name string) (*service, error) {
	m.mu.Lock()
	s, ok := m.services[name]
	m.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownService, name)
	}
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	if s.removed {
		s.unlock()
		return nil, fmt.Errorf("%w: %q", ErrUnknownService, name)
	}
	return s, nil
}

// lock takes s's op, until ctx ends. An operation cancelled meanwhile
// (by Close) does not get it.
func (s *service) lock(ctx context.Context) error {
	select {
	case s.op <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("services: %q: %w", s.spec.Name, context.Cause(ctx))
	}
	if ctx.Err() != nil {
		s.unlock()
		return fmt.Errorf("services: %q: %w", s.spec.Name, context.Cause(ctx))
	}
	return nil
}

func (s *service) unlock() { <-s.op }

func (s *service) setState(st State) {
	s.mu.Lock()
	s.state = st
	if st != StateReady && st != StateRestarting {
		s.startedAt = time.Time{}
	}
	s.mu.Unlock()
}

func (s *service) getState() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// startService starts s as Start and Create do.
func (m *Manager) startService(ctx context.Context, s *service) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.unlock()
	if s.removed { // Shutdown came first
		return fmt.Errorf("%w: %q", ErrUnknownService, s.spec.Name)
	}
	return m.start(ctx, s, StateStarting)
}

// start brings s up: it registers a placeholder endpoint at s's address if
// nothing is there (calls fail with bus.ErrUnknownCommand until an
// instance is ready), then starts instances until one is ready, waiting
// with back-off after each starting error, at most MaxRestarts times per
// RestartWindow. The caller holds s.op.
func (m *Manager) start(ctx context.Context, s *service, state State) error {
	name := s.spec.Name
	if s.ep == nil {
		ep, err := m.bus.Register(s.addr, bus.Concurrency(s.spec.Concurrency))
		if err != nil {
			err = fmt.Errorf("services: start %q: %w", name, err)
			m.fail(s, 1, err)
			return err
		}
		s.ep = ep
	}
	budget := m.budget()
	for attempt := 1; ; attempt++ {
		s.setState(state)
		inst, err := m.launch(ctx, s)
		if err == nil {
			var old *bus.Endpoint
			old, _, err = m.swap(s, inst)
			if err == nil {
				_ = old.Close(ctx) // the placeholder: no handler ever ran on it
				m.emit(Ready{Service: name, Attempt: attempt})
				return nil
			}
			err = errors.Join(err, m.discard(ctx, inst))
		}
		m.emit(StartingError{Service: name, Attempt: attempt, Err: err})
		if ctx.Err() != nil {
			return m.abort(ctx, s, err)
		}
		backoff, ok := budget.Fail(time.Now())
		if !ok {
			err = errwrap.Wrap(fmt.Sprintf("services: %q failed after %d attempts (MaxRestarts %d per %v)", name, attempt, m.cfg.MaxRestarts, m.cfg.RestartWindow),
				"services", err, ErrFailed)
			m.fail(s, attempt, err)
			return err
		}
		state = StateRestarting
		s.mu.Lock()
		s.state = state
		s.restarts++
		s.err = err
		s.mu.Unlock()
		m.emit(Restarted{Service: name, Attempt: attempt + 1, Backoff: backoff, Err: err})
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return m.abort(ctx, s, err)
		}
	}
}

// budget is a new restart budget for one start: the same rule as the
// runtime's cluster supervisors.
func (m *Manager) budget() *restart.Budget {
	return &restart.Budget{Max: m.cfg.MaxRestarts, Window: m.cfg.RestartWindow, Base: m.cfg.RestartBackoff,
		Cap: maxRestartBackoff, Jitter: restartJitter}
}

// fail gives up on s. The caller holds s.op.
func (m *Manager) fail(s *service, attempt int, err error) {
	m.unregister(s)
	s.mu.Lock()
	s.state, s.startedAt, s.err = StateFailed, time.Time{}, err
	s.mu.Unlock()
	m.emit(Failed{Service: s.spec.Name, Attempt: attempt, Err: err})
}

// abort stops starting s because ctx ended: the caller gave up or the
// Manager is closing. The caller holds s.op.
func (m *Manager) abort(ctx context.Context, s *service, last error) error {
	m.unregister(s)
	err := fmt.Errorf("services: start %q: %w (last error: %w)", s.spec.Name, context.Cause(ctx), last)
	s.mu.Lock()
	s.state, s.startedAt, s.err = StateStopped, time.Time{}, err
	s.mu.Unlock()
	return err
}

// unregister closes s's placeholder endpoint. The caller holds s.op.
func (m *Manager) unregister(s *service) {
	if s.ep != nil && s.cur == nil {
		_ = s.ep.Close(context.Background()) // nothing is queued: the placeholder handles no command
		s.ep = nil
	}
}

// launch starts a new instance of s on a standby endpoint and returns it
// once its Start returned nil. A Start that outlives StartTimeout or ctx
// is left running in its goroutine, which stops the instance if it
// becomes ready after all. The caller holds s.op.
func (m *Manager) launch(ctx context.Context, s *service) (*instance, error) {
	name := s.spec.Name
	ep, err := m.bus.Standby(s.addr)
	if err != nil {
		return nil, fmt.Errorf("services: start %q: %w", name, err)
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if d := m.cfg.StartTimeout; d > 0 {
		var cancelTimeout context.CancelFunc
		sctx, cancelTimeout = context.WithTimeoutCause(sctx, d, fmt.Errorf("%w: not ready within %v (StartTimeout)", ErrStartTimeout, d))
		defer cancelTimeout()
	}
	sc := &Context{name: name, log: m.log.With("service", name), bus: m.bus, ep: ep}
	var svc Service
	err = m.bounded(sctx, func() (err error) {
		defer recoverPanic(&err)
		svc = s.spec.New()
		if svc == nil {
			return errors.New("Spec.New returned nil")
		}
		return svc.Start(sctx, sc)
	}, func(err error) {
		// Start returned after launch gave up on it (launch has
		// discarded the endpoint): stop the instance if it is ready.
		if err == nil {
			if err := m.stopHook(context.Background(), svc); err != nil {
				m.log.Warn("late instance did not stop cleanly", "service", name, "err", err)
			}
		}
	})
	if err != nil {
		_ = ep.Close(context.Background()) // discard the standby endpoint
		return nil, errwrap.Wrap(fmt.Sprintf("services: start %q", name), "services", err)
	}
	return &instance{svc: svc, ep: ep}, nil
}

// swap puts inst in place of s's current endpoint and returns that
// endpoint and the instance it served (nil for a placeholder). The caller
// holds s.op.
func (m *Manager) swap(s *service, inst *instance) (*bus.Endpoint, *instance, error) {
	old, err := m.bus.Replace(inst.ep)
	if err != nil {
		return nil, nil, err
	}
	prev := s.cur
	s.ep, s.cur = inst.ep, inst
	s.mu.Lock()
	s.state, s.startedAt, s.err = StateReady, time.Now(), nil
	s.mu.Unlock()
	return old, prev, nil
}

// retire waits for a replaced endpoint's running handlers, then runs the
// Stop hook of the instance it served.
func (m *Manager) retire(ctx context.Context, old *bus.Endpoint, prev *instance) error {
	err := old.Close(ctx)
	if prev != nil {
		err = errors.Join(err, m.stopHook(ctx, prev.svc))
	}
	return err
}

// discard drops a ready instance that never served.
func (m *Manager) discard(ctx context.Context, inst *instance) error {
	_ = inst.ep.Close(ctx)
	return m.stopHook(ctx, inst.svc)
}

// halt takes s out of service: its address stops accepting commands, the
// ones queued are handled, then its instance's Stop hook runs. The caller
// holds s.op.
func (m *Manager) halt(ctx context.Context, s *service) error {
	var errs []error
	if s.ep != nil {
		if err := s.ep.Close(ctx); err != nil {
			errs = append(errs, err)
		}
		s.ep = nil
	}
	if s.cur != nil {
		errs = append(errs, m.stopHook(ctx, s.cur.svc))
		s.cur = nil
	}
	return errors.Join(errs...)
}

// stopHook calls svc's Stop, if it has one, bounded by ShutdownTimeout and
// ctx. A Stop that outlives them is left running in its goroutine.
func (m *Manager) stopHook(ctx context.Context, svc Service) error {
	st, ok := svc.(Stopper)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.ShutdownTimeout)
	defer cancel()
	err := m.bounded(ctx, func() (err error) {
		defer recoverPanic(&err)
		return st.Stop(ctx)
	}, nil)
	if err != nil {
		//lint:ignore ST1005 the message starts with the name of the Service method that failed
		return fmt.Errorf("Stop: %w", err)
	}
	return nil
}

// bounded runs fn in a goroutine the Manager tracks and waits for it until
// ctx ends. If ctx ends first, it returns ctx's cause and leaves fn
// running; late, if not nil, then gets fn's result in that goroutine.
func (m *Manager) bounded(ctx context.Context, fn func() error, late func(error)) error {
	r := &runner{done: make(chan struct{})}
	res := make(chan error)
	abandon := make(chan struct{})
	m.mu.Lock()
	m.runners[r] = struct{}{}
	m.mu.Unlock()
	go func() {
		defer func() {
			m.mu.Lock()
			delete(m.runners, r)
			m.mu.Unlock()
			close(r.done)
		}()
		err := fn()
		select {
		case res <- err:
		case <-abandon:
			if late != nil {
				late(err)
			}
		}
	}()
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		close(abandon)
		return context.Cause(ctx)
	}
}

// recoverPanic turns a panic into a *PanicError in *err; defer it.
func recoverPanic(err *error) {
	if p := recover(); p != nil {
		*err = &PanicError{Value: p, Stack: debug.Stack()}
	}
}
