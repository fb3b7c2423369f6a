package services_test

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/services"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// wait bounds every blocking step of a test; it is never a synchronisation.
const wait = 5 * time.Second

// newBus returns a Bus that is closed when the test ends; it logs nothing.
func newBus(t testing.TB, opts bus.Options) *bus.Bus {
	t.Helper()
	opts.Logger = slog.New(slog.DiscardHandler)
	b := bus.New(opts)
	t.Cleanup(b.Close)
	return b
}

// recorder keeps the events of a Manager and lets a test wait for one.
type recorder struct {
	mu     sync.Mutex // guards events
	events []services.Event
	ch     chan services.Event
}

func (r *recorder) record(ev services.Event) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
	select {
	case r.ch <- ev:
	default: // nobody waits on that many events
	}
}

// of returns the events about service name, in order.
func (r *recorder) of(name string) []services.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []services.Event
	for _, ev := range r.events {
		if eventService(ev) == name {
			out = append(out, ev)
		}
	}
	return out
}

// eventService is the service an event is about.
func eventService(ev services.Event) string {
	switch ev := ev.(type) {
	case services.Ready:
		return ev.Service
	case services.StartingError:
		return ev.Service
	case services.Restarted:
		return ev.Service
	case services.Failed:
		return ev.Service
	case services.Stopped:
		return ev.Service
	}
	return ""
}

// kinds returns the kinds of the events about service name, in order.
func (r *recorder) kinds(name string) []services.EventKind {
	var out []services.EventKind
	for _, ev := range r.of(name) {
		out = append(out, ev.Kind())
	}
	return out
}

// newManager returns a Manager on b that records its events and is closed
// when the test ends, before b (cleanups run last-in first-out). Its
// back-off is 1 ms unless cfg says otherwise.
func newManager(t testing.TB, b *bus.Bus, cfg services.ManagerConfig) (*services.Manager, *recorder) {
	t.Helper()
	rec := &recorder{ch: make(chan services.Event, 1024)}
	cfg.OnEvent = rec.record
	if cfg.RestartBackoff == 0 {
		cfg.RestartBackoff = time.Millisecond
	}
	m, err := services.NewManager(b, cfg)
	if err != nil {
		t.Fatalf("NewManager: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		if err := m.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return m, rec
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	t.Cleanup(cancel)
	return ctx
}

// info returns the Info of service name.
func info(t testing.TB, m *services.Manager, name string) services.Info {
	t.Helper()
	for _, in := range m.Services() {
		if in.Name == name {
			return in
		}
	}
	t.Fatalf("Services() has no %q", name)
	return services.Info{}
}

// counter is a service instance that answers "id" with its instance
// number, and counts what it handled.
type counter struct {
	id      int
	handled atomic.Int64
	total   *atomic.Int64 // shared by every instance of a service

	startErr error             // returned by Start
	started  chan<- int        // gets id when Start is called, if set
	stopped  chan<- stopRecord // gets a record when Stop runs, if set
	onStop   func(c *counter)  // runs in Stop, if set
	slow     <-chan struct{}   // "slow" blocks until it is closed
	slowIn   chan<- int        // gets id when "slow" starts
	slowDone atomic.Bool       // "slow" has returned
	b        *bus.Bus          // for Stop to call the service
}

type stopRecord struct {
	id       int
	handled  int64 // what this instance had handled
	servedBy int   // the instance answering "id" while this one stops, or -1
	slowDone bool
}

func (c *counter) Start(ctx context.Context, sc *services.Context) error {
	if c.started != nil {
		c.started <- c.id
	}
	if c.startErr != nil {
		return c.startErr
	}
	bus.Handle(sc.Endpoint(), "id", func(ctx context.Context, _ struct{}) (int, error) {
		c.handled.Add(1)
		if c.total != nil {
			c.total.Add(1)
		}
		return c.id, nil
	})
	bus.Handle(sc.Endpoint(), "slow", func(ctx context.Context, _ struct{}) (int, error) {
		c.slowIn <- c.id
		<-c.slow
		c.slowDone.Store(true)
		return c.id, nil
	})
	return nil
}

func (c *counter) Stop(ctx context.Context) error {
	rec := stopRecord{id: c.id, handled: c.handled.Load(), servedBy: -1, slowDone: c.slowDone.Load()}
	if c.b != nil {
		if id, err := bus.Request[struct{}, int](ctx, c.b, bus.Service("counter"), "id", struct{}{}); err == nil {
			rec.servedBy = id
		}
	}
	if c.onStop != nil {
		c.onStop(c)
	}
	if c.stopped != nil {
		c.stopped <- rec
	}
	return nil
}

// instances builds numbered counters with configure and keeps them.
type instances struct {
	mu   sync.Mutex // guards list
	list []*counter
}

func (in *instances) new(configure func(c *counter)) func() services.Service {
	return func() services.Service {
		in.mu.Lock()
		defer in.mu.Unlock()
		c := &counter{id: len(in.list) + 1}
		configure(c)
		in.list = append(in.list, c)
		return c
	}
}

func (in *instances) len() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.list)
}

func (in *instances) get(id int) *counter {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.list[id-1]
}

func requestID(ctx context.Context, b *bus.Bus, name string) (int, error) {
	return bus.Request[struct{}, int](ctx, b, bus.Service(name), "id", struct{}{})
}

// stoppedErr is a Stopped event's error, or nil for another event.
func stoppedErr(ev services.Event) error {
	if st, ok := ev.(services.Stopped); ok {
		return st.Err
	}
	return nil
}
