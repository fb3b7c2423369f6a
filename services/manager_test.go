package services_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/services"
)

func TestNewManagerValidates(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	ok := func() services.Service {
		return services.Func(func(context.Context, *services.Context) error { return nil })
	}
	tests := []struct {
		name string
		cfg  services.ManagerConfig
		want string
	}{
		{"duplicate", services.ManagerConfig{Specs: []services.Spec{{Name: "a", New: ok}, {Name: "a", New: ok}}},
			`services: duplicate service name "a": names must be unique`},
		{"empty name", services.ManagerConfig{Specs: []services.Spec{{New: ok}}}, "Specs[0]: Name is empty"},
		{"group name", services.ManagerConfig{Specs: []services.Spec{{Name: "*", New: ok}}}, "reserved"},
		{"nil New", services.ManagerConfig{Specs: []services.Spec{{Name: "a"}}}, `service "a": New is nil`},
		{"negative concurrency", services.ManagerConfig{Specs: []services.Spec{{Name: "a", New: ok, Concurrency: -1}}}, "Concurrency (-1) < 0"},
		{"negative timeout", services.ManagerConfig{StartTimeout: -time.Second}, "StartTimeout (-1s) < 0"},
		{"negative backoff", services.ManagerConfig{RestartBackoff: -1}, "must not be negative"},
		{"max restarts", services.ManagerConfig{MaxRestarts: -2}, "MaxRestarts (-2) < -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := services.NewManager(b, tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewManager error = %v, want one containing %q", err, tt.want)
			}
		})
	}
	if _, err := services.NewManager(nil, services.ManagerConfig{}); err == nil {
		t.Error("NewManager(nil bus) succeeded")
	}
}

func TestStartOneAfterTheOther(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	var (
		m       *services.Manager
		mu      sync.Mutex // guards order
		order   []string
		problem = make(chan string, 10)
	)
	spec := func(name, before string) services.Spec {
		return services.Spec{Name: name, New: func() services.Service {
			return services.Func(func(ctx context.Context, sc *services.Context) error {
				if sc.Name() != name || sc.Bus() != b.Client() || sc.Logger() == nil || sc.Endpoint().Address() != bus.Service(name) {
					problem <- fmt.Sprintf("%s: wrong Context", name)
				}
				if before != "" {
					if st := info(t, m, before).State; st != services.StateReady {
						problem <- fmt.Sprintf("%s started while %s was %s", name, before, st)
					}
				}
				mu.Lock()
				order = append(order, name)
				mu.Unlock()
				return nil
			})
		}}
	}
	m, _ = newManager(t, b, services.ManagerConfig{Specs: []services.Spec{spec("a", ""), spec("b", "a"), spec("c", "b")}})
	if err := m.Start(testContext(t)); err != nil {
		t.Fatal(err)
	}
	close(problem)
	for p := range problem {
		t.Error(p)
	}
	if want := []string{"a", "b", "c"}; !slices.Equal(order, want) {
		t.Errorf("start order = %v, want %v", order, want)
	}
	for _, in := range m.Services() {
		if in.State != services.StateReady || in.StartedAt.IsZero() || in.MailboxDepth != 0 || in.Err != "" {
			t.Errorf("%+v, want ready with StartedAt, an empty mailbox and no error", in)
		}
	}
}

func TestStartTogether(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	// Each Start waits until every Start has begun: one after the other,
	// the first would wait for ever (here: until the test's context ends).
	const n = 3
	var arrived atomic.Int32
	all := make(chan struct{})
	var specs []services.Spec
	for i := range n {
		specs = append(specs, services.Spec{Name: fmt.Sprint("s", i), New: func() services.Service {
			return services.Func(func(ctx context.Context, sc *services.Context) error {
				if arrived.Add(1) == n {
					close(all)
				}
				select {
				case <-all:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			})
		}})
	}
	m, _ := newManager(t, b, services.ManagerConfig{Specs: specs, StartTogether: true, MaxRestarts: -1})
	if err := m.Start(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if got := arrived.Load(); got != n {
		t.Errorf("%d Start calls, want %d (one each, no restart)", got, n)
	}
}

func TestStartingErrorIsRestarted(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	boom := errors.New("boom")
	var in instances
	spec := services.Spec{Name: "counter", New: in.new(func(c *counter) {
		if c.id <= 2 {
			c.startErr = boom
		}
	})}
	m, rec := newManager(t, b, services.ManagerConfig{Specs: []services.Spec{spec}})
	ctx := testContext(t)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	want := []services.EventKind{
		services.EventStartingError, services.EventRestarted,
		services.EventStartingError, services.EventRestarted,
		services.EventReady,
	}
	if got := rec.kinds("counter"); !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	for _, ev := range rec.of("counter") {
		if se, ok := ev.(services.StartingError); ok && !errors.Is(se.Err, boom) {
			t.Errorf("%s: err = %v, want boom", se.Kind(), se.Err)
		}
	}
	if in := info(t, m, "counter"); in.State != services.StateReady || in.Restarts != 2 || in.Err != "" {
		t.Errorf("%+v, want ready after 2 restarts", in)
	}
	if id, err := requestID(ctx, b, "counter"); err != nil || id != 3 {
		t.Errorf("id = %d, %v; want 3 (the third instance)", id, err)
	}
}

func TestFailedAfterMaxRestarts(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	boom := errors.New("boom")
	var broken atomic.Bool
	broken.Store(true)
	var in instances
	spec := services.Spec{Name: "counter", New: in.new(func(c *counter) {
		if broken.Load() {
			c.startErr = boom
		}
	})}
	m, rec := newManager(t, b, services.ManagerConfig{Specs: []services.Spec{spec}, MaxRestarts: 3})
	ctx := testContext(t)
	err := m.Start(ctx)
	if !errors.Is(err, services.ErrFailed) || !errors.Is(err, boom) || !strings.Contains(err.Error(), `"counter"`) {
		t.Fatalf("Start = %v, want ErrFailed naming counter and wrapping boom", err)
	}
	var backoffs []time.Duration
	for _, ev := range rec.of("counter") {
		if re, ok := ev.(services.Restarted); ok {
			backoffs = append(backoffs, re.Backoff)
		}
	}
	// Each back-off doubles, plus up to a quarter of jitter.
	want := []time.Duration{time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond}
	if len(backoffs) != len(want) {
		t.Errorf("back-offs = %v, want %v plus jitter", backoffs, want)
	}
	for i := range min(len(backoffs), len(want)) {
		if backoffs[i] < want[i] || backoffs[i] > want[i]+want[i]/4 {
			t.Errorf("back-off %d = %v, want %v plus up to a quarter", i, backoffs[i], want[i])
		}
	}
	evs := rec.of("counter")
	if last, ok := evs[len(evs)-1].(services.Failed); !ok || last.Attempt != 4 || !errors.Is(last.Err, boom) {
		t.Errorf("last event = %v, want service_failed at attempt 4", evs[len(evs)-1])
	}
	if in := info(t, m, "counter"); in.State != services.StateFailed || in.Restarts != 3 || !strings.Contains(in.Err, "boom") {
		t.Errorf("%+v, want failed after 3 restarts", in)
	}
	if _, err := requestID(ctx, b, "counter"); !errors.Is(err, bus.ErrUnknownAddress) {
		t.Errorf("request to a failed service: %v, want ErrUnknownAddress", err)
	}
	if err := m.SoftRestart(ctx, "counter"); !errors.Is(err, services.ErrNotReady) {
		t.Errorf("SoftRestart(failed) = %v, want ErrNotReady", err)
	}

	// Restart tries again.
	broken.Store(false)
	if err := m.Restart(ctx, "counter"); err != nil {
		t.Fatal(err)
	}
	if id, err := requestID(ctx, b, "counter"); err != nil || id != 5 {
		t.Errorf("id = %d, %v; want 5", id, err)
	}
}

func TestStartPanicIsRestarted(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	var calls atomic.Int32
	spec := services.Spec{Name: "p", New: func() services.Service {
		return services.Func(func(ctx context.Context, sc *services.Context) error {
			if calls.Add(1) == 1 {
				panic("boom")
			}
			return nil
		})
	}}
	m, rec := newManager(t, b, services.ManagerConfig{Specs: []services.Spec{spec}})
	if err := m.Start(testContext(t)); err != nil {
		t.Fatal(err)
	}
	evs := rec.of("p")
	if len(evs) != 3 || evs[0].Kind() != services.EventStartingError || evs[2].Kind() != services.EventReady {
		t.Fatalf("events = %v, want starting error, restarted, ready", rec.kinds("p"))
	}
	se, _ := evs[0].(services.StartingError)
	pe, ok := errors.AsType[*services.PanicError](se.Err)
	if !ok || pe.Value != "boom" || !strings.Contains(string(pe.Stack), "manager_test.go") {
		t.Errorf("starting error = %v, want a *PanicError with value boom and its stack", se.Err)
	}
}

func TestStartTimeout(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	release := make(chan struct{})
	stopped := make(chan stopRecord, 16)
	var (
		in   instances
		once sync.Once
	)
	// The first instance ignores its context and becomes ready late.
	spec := services.Spec{Name: "counter", New: func() services.Service {
		c := in.new(func(c *counter) { c.stopped = stopped })().(*counter)
		var svc services.Service = c
		once.Do(func() { svc = stuck{c, release} })
		return svc
	}}
	m, rec := newManager(t, b, services.ManagerConfig{StartTimeout: 20 * time.Millisecond})
	ctx := testContext(t)
	if err := m.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	evs := rec.of("counter")
	if se, ok := evs[0].(services.StartingError); !ok || !errors.Is(se.Err, services.ErrStartTimeout) {
		t.Errorf("first event = %v, want a starting error wrapping ErrStartTimeout", evs[0])
	}
	// Instance 2 serves (or a later one, if a loaded machine made Start
	// outlive its 20 ms again).
	serving := in.len()
	if id, err := requestID(ctx, b, "counter"); err != nil || id != serving || id < 2 {
		t.Errorf("id = %d, %v; want %d", id, err, serving)
	}
	// The late instance becomes ready after all: it is stopped, unused.
	close(release)
	for done := false; !done; {
		select {
		case r := <-stopped:
			if r.id == serving || r.handled != 0 {
				t.Fatalf("stopped %+v, want instance 1, which handled nothing", r)
			}
			done = r.id == 1
		case <-time.After(wait):
			t.Fatal("the late instance was not stopped")
		}
	}
	if id, err := requestID(ctx, b, "counter"); err != nil || id != serving {
		t.Errorf("id = %d, %v; want %d", id, err, serving)
	}
}

// stuck is a counter whose Start ignores its context until released.
type stuck struct {
	*counter
	release <-chan struct{}
}

func (s stuck) Start(ctx context.Context, sc *services.Context) error {
	<-s.release
	return s.counter.Start(ctx, sc)
}

func TestSoftRestartLosesNothing(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	var total atomic.Int64
	stopped := make(chan stopRecord, 4)
	var in instances
	spec := services.Spec{Name: "counter", New: in.new(func(c *counter) {
		c.total, c.stopped, c.b = &total, stopped, b
	})}
	m, _ := newManager(t, b, services.ManagerConfig{Specs: []services.Spec{spec}})
	ctx := testContext(t)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}

	const requesters = 8
	var (
		wg           sync.WaitGroup
		sent, failed atomic.Int64
		stop         = make(chan struct{})
		warm         = make(chan struct{}, requesters) // a requester has made 50 calls
		sawNew       = make(chan struct{}, requesters) // a requester got an answer from instance 2
		firstErr     = make(chan error, 1)
	)
	for range requesters {
		wg.Go(func() {
			var n, last int
			for {
				select {
				case <-stop:
					return
				default:
				}
				id, err := requestID(ctx, b, "counter")
				sent.Add(1)
				if err != nil {
					failed.Add(1)
					select {
					case firstErr <- err:
					default:
					}
					continue
				}
				if id < last {
					select {
					case firstErr <- fmt.Errorf("answered by instance %d after instance %d", id, last):
					default:
					}
				}
				if n++; n == 50 {
					warm <- struct{}{}
				}
				if id == 2 && last != 2 {
					sawNew <- struct{}{}
				}
				last = id
			}
		})
	}
	for range requesters {
		<-warm
	}
	if err := m.SoftRestart(ctx, "counter"); err != nil {
		t.Fatal(err)
	}
	// The old instance's Stop hook has run when SoftRestart returns, after
	// the switch: instance 2 already answered its own call.
	select {
	case r := <-stopped:
		if r.id != 1 || r.servedBy != 2 {
			t.Errorf("stop %+v, want instance 1 stopped while instance 2 serves", r)
		}
		if got := in.get(1).handled.Load(); got != r.handled {
			t.Errorf("instance 1 handled %d calls after its Stop hook (%d before)", got-r.handled, r.handled)
		}
	default:
		t.Fatal("the old instance's Stop hook has not run")
	}
	for range requesters {
		<-sawNew
	}
	close(stop)
	wg.Wait()

	select {
	case err := <-firstErr:
		t.Errorf("%d of %d calls failed; first: %v", failed.Load(), sent.Load(), err)
	default:
	}
	// Every call was handled exactly once; +1 for the Stop hook's call.
	if got, want := total.Load(), sent.Load()+1; got != want {
		t.Errorf("handled %d calls, want %d", got, want)
	}
	if in.get(1).handled.Load() == 0 || in.get(2).handled.Load() == 0 {
		t.Error("the calls did not reach both instances")
	}
	if info := info(t, m, "counter"); info.State != services.StateReady || info.Restarts != 1 {
		t.Errorf("%+v, want ready after 1 restart", info)
	}
}

func TestSoftRestartFailureKeepsOldInstance(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	boom := errors.New("boom")
	stopped := make(chan stopRecord, 4)
	var in instances
	spec := services.Spec{Name: "counter", New: in.new(func(c *counter) {
		c.stopped = stopped
		if c.id == 2 {
			c.startErr = boom
		}
	})}
	m, rec := newManager(t, b, services.ManagerConfig{Specs: []services.Spec{spec}})
	ctx := testContext(t)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.SoftRestart(ctx, "counter"); !errors.Is(err, boom) {
		t.Fatalf("SoftRestart = %v, want boom", err)
	}
	select {
	case r := <-stopped:
		t.Fatalf("instance %d stopped", r.id)
	default:
	}
	if id, err := requestID(ctx, b, "counter"); err != nil || id != 1 {
		t.Errorf("id = %d, %v; want 1, the old instance", id, err)
	}
	if info := info(t, m, "counter"); info.State != services.StateReady || info.Restarts != 0 {
		t.Errorf("%+v, want ready, no restart", info)
	}
	if got := rec.kinds("counter"); !slices.Equal(got[1:], []services.EventKind{services.EventRestarted, services.EventStartingError}) {
		t.Errorf("events = %v, want ready, restarted, starting error", got)
	}

	// The next attempt succeeds.
	if err := m.SoftRestart(ctx, "counter"); err != nil {
		t.Fatal(err)
	}
	if id, err := requestID(ctx, b, "counter"); err != nil || id != 3 {
		t.Errorf("id = %d, %v; want 3", id, err)
	}
	if r := <-stopped; r.id != 1 {
		t.Errorf("stopped instance %d, want 1", r.id)
	}
	if err := m.SoftRestart(ctx, "nope"); !errors.Is(err, services.ErrUnknownService) {
		t.Errorf("SoftRestart(nope) = %v, want ErrUnknownService", err)
	}
}

func TestRestartDrainsThenStarts(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	stopped := make(chan stopRecord, 4)
	slow := make(chan struct{})
	slowIn := make(chan int, 1)
	var in instances
	spec := services.Spec{Name: "counter", New: in.new(func(c *counter) {
		c.stopped, c.slow, c.slowIn = stopped, slow, slowIn
	})}
	m, rec := newManager(t, b, services.ManagerConfig{Specs: []services.Spec{spec}})
	ctx := testContext(t)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	slowRes := make(chan error, 1)
	go func() {
		id, err := bus.Request[struct{}, int](ctx, b, bus.Service("counter"), "slow", struct{}{})
		if err == nil && id != 1 {
			err = fmt.Errorf("slow answered by instance %d", id)
		}
		slowRes <- err
	}()
	<-slowIn
	restarted := make(chan error, 1)
	go func() { restarted <- m.Restart(ctx, "counter") }()
	close(slow)
	if err := <-slowRes; err != nil {
		t.Errorf("the call in flight: %v", err)
	}
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	if r := <-stopped; r.id != 1 || !r.slowDone {
		t.Errorf("stop %+v, want instance 1 stopped after its call returned", r)
	}
	if id, err := requestID(ctx, b, "counter"); err != nil || id != 2 {
		t.Errorf("id = %d, %v; want 2", id, err)
	}
	if info := info(t, m, "counter"); info.State != services.StateReady || info.Restarts != 1 {
		t.Errorf("%+v, want ready after 1 restart", info)
	}
	if got, want := rec.kinds("counter"), []services.EventKind{services.EventReady, services.EventRestarted, services.EventReady}; !slices.Equal(got, want) {
		t.Errorf("events = %v, want %v", got, want)
	}
}

func TestCreateAndShutdown(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	stopped := make(chan stopRecord, 4)
	var in instances
	spec := services.Spec{Name: "counter", New: in.new(func(c *counter) { c.stopped = stopped })}
	m, rec := newManager(t, b, services.ManagerConfig{})
	ctx := testContext(t)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if id, err := requestID(ctx, b, "counter"); err != nil || id != 1 {
		t.Errorf("id = %d, %v; want 1", id, err)
	}
	if err := m.Create(ctx, spec); err == nil || !strings.Contains(err.Error(), `duplicate service name "counter"`) {
		t.Errorf("Create(duplicate) = %v, want a duplicate name error", err)
	}
	if err := m.Create(ctx, services.Spec{Name: "x"}); err == nil || !strings.Contains(err.Error(), "New is nil") {
		t.Errorf("Create(nil New) = %v", err)
	}

	if err := m.Shutdown(ctx, "counter"); err != nil {
		t.Fatal(err)
	}
	if r := <-stopped; r.id != 1 {
		t.Errorf("stopped instance %d, want 1", r.id)
	}
	if _, err := requestID(ctx, b, "counter"); !errors.Is(err, bus.ErrUnknownAddress) {
		t.Errorf("request after Shutdown: %v, want ErrUnknownAddress", err)
	}
	if got := m.Services(); len(got) != 0 {
		t.Errorf("Services() = %+v, want none", got)
	}
	if got := rec.kinds("counter"); !slices.Equal(got, []services.EventKind{services.EventReady, services.EventShutdown}) {
		t.Errorf("events = %v", got)
	}
	if err := m.Shutdown(ctx, "counter"); !errors.Is(err, services.ErrUnknownService) {
		t.Errorf("Shutdown again = %v, want ErrUnknownService", err)
	}
	// The name is free again.
	if err := m.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if id, err := requestID(ctx, b, "counter"); err != nil || id != 2 {
		t.Errorf("id = %d, %v; want 2", id, err)
	}
}

func TestCloseStopsEverythingInParallel(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	// Each Stop hook waits until every one has begun: one after the
	// other, the first would wait until ShutdownTimeout.
	const n = 3
	var arrived atomic.Int32
	all := make(chan struct{})
	stopped := make(chan stopRecord, n)
	var specs []services.Spec
	for i := range n {
		var in instances
		specs = append(specs, services.Spec{Name: fmt.Sprint("s", i), New: in.new(func(c *counter) {
			c.stopped = stopped
			c.onStop = func(*counter) {
				if arrived.Add(1) == n {
					close(all)
				}
				<-all
			}
		})})
	}
	m, rec := newManager(t, b, services.ManagerConfig{Specs: specs, ShutdownTimeout: wait})
	ctx := testContext(t)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if len(stopped) != n {
		t.Errorf("%d Stop hooks ran, want %d", len(stopped), n)
	}
	for _, in := range m.Services() {
		if in.State != services.StateStopped {
			t.Errorf("%+v, want stopped", in)
		}
		if got := rec.kinds(in.Name); !slices.Equal(got, []services.EventKind{services.EventReady, services.EventShutdown}) {
			t.Errorf("%s events = %v", in.Name, got)
		}
		if _, err := requestID(ctx, b, in.Name); !errors.Is(err, bus.ErrUnknownAddress) {
			t.Errorf("request after Close: %v, want ErrUnknownAddress", err)
		}
	}
	for name, err := range map[string]error{
		"Start":       m.Start(ctx),
		"Create":      m.Create(ctx, specs[0]),
		"Restart":     m.Restart(ctx, "s0"),
		"SoftRestart": m.SoftRestart(ctx, "s0"),
		"Shutdown":    m.Shutdown(ctx, "s0"),
	} {
		if !errors.Is(err, services.ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", name, err)
		}
	}
	if err := m.Close(ctx); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestCloseCancelsStart(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	entered := make(chan struct{})
	spec := services.Spec{Name: "slow", New: func() services.Service {
		return services.Func(func(ctx context.Context, sc *services.Context) error {
			close(entered)
			<-ctx.Done()
			return ctx.Err()
		})
	}}
	m, _ := newManager(t, b, services.ManagerConfig{Specs: []services.Spec{spec}})
	ctx := testContext(t)
	started := make(chan error, 1)
	go func() { started <- m.Start(ctx) }()
	<-entered
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-started; !errors.Is(err, services.ErrClosed) {
		t.Errorf("Start = %v, want ErrClosed", err)
	}
	if in := info(t, m, "slow"); in.State != services.StateStopped {
		t.Errorf("%+v, want stopped", in)
	}
}

func TestCloseReportsStuckStart(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	entered := make(chan struct{})
	release := make(chan struct{})
	spec := services.Spec{Name: "stuck", New: func() services.Service {
		return services.Func(func(ctx context.Context, sc *services.Context) error {
			close(entered)
			<-release // ignores ctx
			return nil
		})
	}}
	m, _ := newManager(t, b, services.ManagerConfig{Specs: []services.Spec{spec}})
	ctx := testContext(t)
	started := make(chan error, 1)
	go func() { started <- m.Start(ctx) }()
	<-entered
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if err := m.Close(short); err == nil || !strings.Contains(err.Error(), "still running") {
		t.Errorf("Close = %v, want an error about the Start still running", err)
	}
	if err := <-started; !errors.Is(err, services.ErrClosed) {
		t.Errorf("Start = %v, want ErrClosed", err)
	}
	close(release)
	// Close again waits for the late Start.
	if err := m.Close(ctx); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestStartTwicePanics(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	m, _ := newManager(t, b, services.ManagerConfig{})
	ctx := testContext(t)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if recover() == nil {
			t.Error("second Start did not panic")
		}
	}()
	_ = m.Start(ctx)
}

func TestCommandsWaitForReady(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	entered := make(chan struct{})
	release := make(chan struct{})
	spec := services.Spec{Name: "half", New: func() services.Service {
		return services.Func(func(ctx context.Context, sc *services.Context) error {
			bus.Handle(sc.Endpoint(), "id", func(context.Context, struct{}) (int, error) { return 1, nil })
			close(entered)
			<-release
			return nil
		})
	}}
	m, _ := newManager(t, b, services.ManagerConfig{Specs: []services.Spec{spec}})
	ctx := testContext(t)
	started := make(chan error, 1)
	go func() { started <- m.Start(ctx) }()
	<-entered
	// The handler is registered but Start has not returned: the call
	// fails at once instead of reaching a half-started instance.
	if _, err := requestID(ctx, b, "half"); !errors.Is(err, bus.ErrUnknownCommand) {
		t.Errorf("call before ready: %v, want ErrUnknownCommand", err)
	}
	if in := info(t, m, "half"); in.State != services.StateStarting {
		t.Errorf("%+v, want starting", in)
	}
	close(release)
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	if id, err := requestID(ctx, b, "half"); err != nil || id != 1 {
		t.Errorf("id = %d, %v; want 1", id, err)
	}
}

func TestStartTogetherStopsOthersOnFailure(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	boom := errors.New("boom")
	bad := services.Spec{Name: "bad", New: func() services.Service {
		return services.Func(func(context.Context, *services.Context) error { return boom })
	}}
	waiting := services.Spec{Name: "waiting", New: func() services.Service {
		return services.Func(func(ctx context.Context, sc *services.Context) error {
			<-ctx.Done() // ready only when told: never
			return ctx.Err()
		})
	}}
	m, _ := newManager(t, b, services.ManagerConfig{Specs: []services.Spec{waiting, bad}, StartTogether: true, MaxRestarts: 1})
	err := m.Start(testContext(t))
	if !errors.Is(err, services.ErrFailed) || !errors.Is(err, boom) || !strings.Contains(err.Error(), `"bad"`) {
		t.Fatalf("Start = %v, want bad's failure", err)
	}
	if in := info(t, m, "bad"); in.State != services.StateFailed {
		t.Errorf("%+v, want failed", in)
	}
	// waiting was stopped while starting, or not started at all.
	if in := info(t, m, "waiting"); in.State != services.StateStopped || in.Err != "" && !strings.Contains(in.Err, `"bad" failed to start`) {
		t.Errorf("%+v, want stopped because bad failed", in)
	}
}

func TestStopHookErrors(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	boom := errors.New("boom")
	m, rec := newManager(t, b, services.ManagerConfig{Specs: []services.Spec{
		stopSpec("failing", func(context.Context) error { return boom }),
		stopSpec("panicking", func(context.Context) error { panic("boom") }),
	}})
	ctx := testContext(t)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Shutdown(ctx, "failing"); !errors.Is(err, boom) || !strings.Contains(err.Error(), `shutdown "failing": Stop: boom`) {
		t.Errorf("Shutdown = %v, want its Stop error", err)
	}
	if evs := rec.of("failing"); len(evs) == 0 || !errors.Is(stoppedErr(evs[len(evs)-1]), boom) {
		t.Errorf("shutdown events = %v, want the last with its Stop error", evs)
	}
	err := m.Close(ctx)
	if pe, ok := errors.AsType[*services.PanicError](err); !ok || !strings.Contains(err.Error(), `close "panicking"`) || len(pe.Stack) == 0 {
		t.Errorf("Close = %v, want the panic of panicking's Stop", err)
	}
}

func TestStopHookPastShutdownTimeout(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	release := make(chan struct{})
	m, _ := newManager(t, b, services.ManagerConfig{ShutdownTimeout: 10 * time.Millisecond, Specs: []services.Spec{
		stopSpec("stuck", func(context.Context) error { <-release; return nil }), // ignores ctx
	}})
	ctx := testContext(t)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	err := m.Close(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), `close "stuck": Stop`) || !strings.Contains(err.Error(), "still running") {
		t.Errorf("Close = %v, want stuck's Stop past ShutdownTimeout, still running", err)
	}
	close(release)
	if err := m.Close(ctx); err != nil { // waits for the stuck Stop
		t.Errorf("second Close = %v", err)
	}
}

func stopSpec(name string, stop func(ctx context.Context) error) services.Spec {
	return services.Spec{Name: name, New: func() services.Service { return stopFunc(stop) }}
}

// stopFunc is a service whose Stop hook is the function.
type stopFunc func(ctx context.Context) error

func (stopFunc) Start(context.Context, *services.Context) error { return nil }
func (f stopFunc) Stop(ctx context.Context) error               { return f(ctx) }

// Info counts the commands waiting in a service's mailbox, and crosses a
// strict bus whole, its starting error included.
func TestInfoMailboxDepthAndCodec(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{Strict: true})
	started, release := make(chan struct{}, 1), make(chan struct{})
	busy := services.Spec{Name: "busy", New: func() services.Service {
		return services.Func(func(_ context.Context, sc *services.Context) error {
			bus.Handle(sc.Endpoint(), "block", func(ctx context.Context, _ int) (int, error) {
				select {
				case started <- struct{}{}:
				default:
				}
				select {
				case <-release:
				case <-ctx.Done():
				}
				return 0, nil
			})
			return nil
		})
	}}
	boom := errors.New("boom")
	bad := services.Spec{Name: "bad", New: func() services.Service {
		return services.Func(func(context.Context, *services.Context) error { return boom })
	}}
	m, _ := newManager(t, b, services.ManagerConfig{Specs: []services.Spec{busy, bad}, MaxRestarts: 1})
	if err := m.Start(testContext(t)); !errors.Is(err, boom) {
		t.Fatalf("Start = %v, want bad's error", err)
	}
	defer close(release)
	ctx := testContext(t)
	for i := range 4 {
		if err := bus.Send(ctx, b, bus.Service("busy"), "block", i); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			<-started // one handled, three waiting
		}
	}
	if in := info(t, m, "busy"); in.MailboxDepth != 3 {
		t.Errorf("busy: MailboxDepth %d, want 3 (one of four handled)", in.MailboxDepth)
	}
	if in := info(t, m, "bad"); in.MailboxDepth != -1 {
		t.Errorf("bad: MailboxDepth %d, want -1 (nothing registered)", in.MailboxDepth)
	}

	// The list crosses a strict bus while a service is failing.
	ep, err := b.Register(bus.Service("lister"))
	if err != nil {
		t.Fatal(err)
	}
	bus.Handle(ep, "list", func(context.Context, struct{}) ([]services.Info, error) { return m.Services(), nil })
	got, err := bus.Request[struct{}, []services.Info](ctx, b, bus.Service("lister"), "list", struct{}{})
	if err != nil {
		t.Fatalf("list over a strict bus: %v", err)
	}
	byName := map[string]services.Info{}
	for _, in := range got {
		byName[in.Name] = in
	}
	if in := byName["bad"]; in.State != services.StateFailed || !strings.Contains(in.Err, "boom") || in.MailboxDepth != -1 {
		t.Errorf("bad over the bus: %+v, want failed with boom", in)
	}
	if in := byName["busy"]; in.State != services.StateReady || in.StartedAt.IsZero() || in.MailboxDepth != 3 || in.Err != "" {
		t.Errorf("busy over the bus: %+v, want ready with 3 waiting", in)
	}
}
