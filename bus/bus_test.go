package bus_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gofleet/fleet/bus"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newBus returns a Bus that is closed when the test ends; it logs nothing.
func newBus(t testing.TB, opts bus.Options) *bus.Bus {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	b := bus.New(opts)
	t.Cleanup(b.Close)
	return b
}

func register(t testing.TB, b *bus.Bus, addr bus.Address, opts ...bus.Option) *bus.Endpoint {
	t.Helper()
	ep, err := b.Register(addr, opts...)
	if err != nil {
		t.Fatalf("Register(%s): %v", addr, err)
	}
	return ep
}

func echo(ctx context.Context, s string) (string, error) { return s, nil }

// blocker is a handler that signals when it starts and returns when
// released or when its context ends.
type blocker struct {
	started chan string
	release chan struct{}
}

func newBlocker() *blocker {
	return &blocker{started: make(chan string, 100), release: make(chan struct{})}
}

func (bl *blocker) handle(ctx context.Context, s string) (string, error) {
	bl.started <- s
	select {
	case <-bl.release:
		return s, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func TestAddress(t *testing.T) {
	t.Parallel()
	tests := []struct {
		addr      bus.Address
		want      string
		group     bool
		clusterID int
		isCluster bool
		service   string
	}{
		{bus.Admiral, "admiral", false, 0, false, ""},
		{bus.Cluster(0), "cluster/0", false, 0, true, ""},
		{bus.Cluster(12), "cluster/12", false, 12, true, ""},
		{bus.Service("store"), "service/store", false, 0, false, "store"},
		{bus.AllClusters, "cluster/*", true, 0, false, ""},
		{bus.AllServices, "service/*", true, 0, false, ""},
		{bus.Everyone, "*", true, 0, false, ""},
		{bus.Address("cluster/01"), "cluster/01", false, 0, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.addr.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
			if got := tt.addr.IsGroup(); got != tt.group {
				t.Errorf("IsGroup() = %v, want %v", got, tt.group)
			}
			id, ok := tt.addr.ClusterID()
			if id != tt.clusterID || ok != tt.isCluster {
				t.Errorf("ClusterID() = %d, %v, want %d, %v", id, ok, tt.clusterID, tt.isCluster)
			}
			name, _ := tt.addr.ServiceName()
			if name != tt.service {
				t.Errorf("ServiceName() = %q, want %q", name, tt.service)
			}
		})
	}

	contains := []struct {
		group, addr bus.Address
		want        bool
	}{
		{bus.Everyone, bus.Admiral, true},
		{bus.Everyone, bus.Cluster(3), true},
		{bus.Everyone, bus.AllClusters, false},
		{bus.AllClusters, bus.Cluster(3), true},
		{bus.AllClusters, bus.Service("x"), false},
		{bus.AllServices, bus.Service("x"), true},
		{bus.AllServices, bus.Admiral, false},
		{bus.Cluster(1), bus.Cluster(1), true},
		{bus.Cluster(1), bus.Cluster(2), false},
	}
	for _, c := range contains {
		if got := c.group.Contains(c.addr); got != c.want {
			t.Errorf("%s.Contains(%s) = %v, want %v", c.group, c.addr, got, c.want)
		}
	}
}

func TestRegisterErrors(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	register(t, b, bus.Cluster(0))
	tests := []struct {
		name string
		addr bus.Address
		opts []bus.Option
		want string
		is   error
	}{
		{"in use", bus.Cluster(0), nil, "bus: address in use: cluster/0", bus.ErrAddressInUse},
		{"group", bus.AllClusters, nil, "is a group", nil},
		{"not an address", "foo", nil, "is not an address", nil},
		{"empty service", bus.Service(""), nil, "is not an address", nil},
		{"negative cluster", bus.Cluster(-1), nil, "is not an address", nil},
		{"concurrency", bus.Cluster(1), []bus.Option{bus.Concurrency(0)}, "Concurrency(0): use 1 or more", nil},
		{"mailbox", bus.Cluster(1), []bus.Option{bus.Mailbox(-1)}, "Mailbox(-1): use 1 or more", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := b.Register(tt.addr, tt.opts...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Register(%q) = %v, want an error containing %q", tt.addr, err, tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.is)
			}
		})
	}
}

func TestNewPanicsOnNegativeOptions(t *testing.T) {
	t.Parallel()
	defer func() {
		if p := recover(); p == nil || !strings.Contains(fmt.Sprint(p), "DefaultTimeout") {
			t.Errorf("recover() = %v, want a panic naming DefaultTimeout", p)
		}
	}()
	bus.New(bus.Options{DefaultTimeout: -1})
}

func TestRequest(t *testing.T) {
	t.Parallel()
	for _, strict := range []bool{false, true} {
		t.Run(fmt.Sprintf("strict=%v", strict), func(t *testing.T) {
			t.Parallel()
			b := newBus(t, bus.Options{Strict: strict})
			ep := register(t, b, bus.Service("math"))
			bus.Handle(ep, "double", func(ctx context.Context, n int) (int, error) { return 2 * n, nil })
			bus.Handle(ep, "ptr", func(ctx context.Context, p *point) (*point, error) {
				return &point{X: p.X + 1, Y: p.Y + 1}, nil
			})
			got, err := bus.Request[int, int](context.Background(), b, bus.Service("math"), "double", 21)
			if err != nil || got != 42 {
				t.Errorf("Request(double, 21) = %v, %v, want 42, nil", got, err)
			}
			p, err := bus.Request[*point, *point](context.Background(), b, bus.Service("math"), "ptr", &point{1, 2})
			if err != nil || *p != (point{2, 3}) {
				t.Errorf("Request(ptr) = %v, %v, want {2 3}, nil", p, err)
			}
		})
	}
}

type point struct{ X, Y int }

func TestRequestTypeMismatch(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	ep := register(t, b, bus.Admiral)
	bus.Handle(ep, "echo", echo)
	_, err := bus.Request[int, string](context.Background(), b, bus.Admiral, "echo", 1)
	if !errors.Is(err, bus.ErrType) || !strings.Contains(err.Error(), "payload is int, handler wants string") {
		t.Errorf("payload mismatch: err = %v, want ErrType naming int and string", err)
	}
	_, err = bus.Request[string, int](context.Background(), b, bus.Admiral, "echo", "x")
	if !errors.Is(err, bus.ErrType) || !strings.Contains(err.Error(), "reply is string, caller wants int") {
		t.Errorf("reply mismatch: err = %v, want ErrType naming string and int", err)
	}
}

func TestRequestContextDeadline(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{DefaultTimeout: time.Hour})
	ep := register(t, b, bus.Service("slow"))
	bl := newBlocker()
	bus.Handle(ep, "wait", bl.handle)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := bus.Request[string, string](ctx, b, bus.Service("slow"), "wait", "x")
	if !errors.Is(err, bus.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrTimeout and context.DeadlineExceeded", err)
	}
	if !strings.Contains(err.Error(), "service/slow wait") {
		t.Errorf("err = %q, want it to name the address and command", err)
	}

	// A cancelled context is not a timeout.
	ctx, cancel = context.WithCancel(context.Background())
	go func() {
		<-bl.started // the first request's handler
		<-bl.started // this one's
		cancel()
	}()
	_, err = bus.Request[string, string](ctx, b, bus.Service("slow"), "wait", "y")
	if !errors.Is(err, context.Canceled) || errors.Is(err, bus.ErrTimeout) {
		t.Errorf("err = %v, want context.Canceled and not ErrTimeout", err)
	}
}

func TestRequestDefaultTimeout(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{DefaultTimeout: 20 * time.Millisecond})
	ep := register(t, b, bus.Service("slow"))
	deadline := make(chan bool, 1)
	bus.Handle(ep, "wait", func(ctx context.Context, _ struct{}) (struct{}, error) {
		_, ok := ctx.Deadline()
		deadline <- ok
		<-ctx.Done()
		return struct{}{}, ctx.Err()
	})
	start := time.Now()
	_, err := bus.Request[struct{}, struct{}](context.Background(), b, bus.Service("slow"), "wait", struct{}{})
	if !errors.Is(err, bus.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrTimeout and context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Request returned after %v, want about the 20ms DefaultTimeout", d)
	}
	if !<-deadline {
		t.Error("the handler's context has no deadline, want the DefaultTimeout")
	}
}

func TestUnknownAddress(t *testing.T) {
	t.Parallel()
	// An hour-long DefaultTimeout: the test would hang if the error were not immediate.
	b := newBus(t, bus.Options{DefaultTimeout: time.Hour})
	_, err := bus.Request[string, string](context.Background(), b, bus.Cluster(7), "echo", "x")
	if !errors.Is(err, bus.ErrUnknownAddress) || !strings.Contains(err.Error(), "cluster/7") {
		t.Errorf("Request: err = %v, want ErrUnknownAddress naming cluster/7", err)
	}
	if err := bus.Send(context.Background(), b, bus.Cluster(7), "echo", "x"); !errors.Is(err, bus.ErrUnknownAddress) {
		t.Errorf("Send: err = %v, want ErrUnknownAddress", err)
	}
	if err := bus.Publish(context.Background(), b, bus.Cluster(7), "ev", nil); !errors.Is(err, bus.ErrUnknownAddress) {
		t.Errorf("Publish: err = %v, want ErrUnknownAddress", err)
	}
	_, err = bus.Request[string, string](context.Background(), b, bus.AllClusters, "echo", "x")
	if !errors.Is(err, bus.ErrUnknownAddress) || !strings.Contains(err.Error(), "use Gather") {
		t.Errorf("Request to a group: err = %v, want ErrUnknownAddress suggesting Gather", err)
	}
}

func TestUnknownCommandBeforeEnqueue(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{DefaultTimeout: time.Hour})
	ep := register(t, b, bus.Service("s"), bus.Mailbox(1))
	bl := newBlocker()
	bus.Handle(ep, "wait", bl.handle)
	defer close(bl.release)
	// Make the mailbox full: one message being handled, one queued.
	if err := bus.Send(context.Background(), b, bus.Service("s"), "wait", "1"); err != nil {
		t.Fatal(err)
	}
	<-bl.started
	if err := bus.Send(context.Background(), b, bus.Service("s"), "wait", "2"); err != nil {
		t.Fatal(err)
	}
	// The unknown command is refused without waiting for room.
	_, err := bus.Request[string, string](context.Background(), b, bus.Service("s"), "nope", "x")
	if !errors.Is(err, bus.ErrUnknownCommand) || !strings.Contains(err.Error(), `"nope" at service/s`) {
		t.Errorf("Request: err = %v, want ErrUnknownCommand naming the command and address", err)
	}
	if err := bus.Send(context.Background(), b, bus.Service("s"), "nope", "x"); !errors.Is(err, bus.ErrUnknownCommand) {
		t.Errorf("Send: err = %v, want ErrUnknownCommand", err)
	}
}

var errNotFound = errors.New("not found")

func TestHandlerError(t *testing.T) {
	t.Parallel()
	for _, strict := range []bool{false, true} {
		t.Run(fmt.Sprintf("strict=%v", strict), func(t *testing.T) {
			t.Parallel()
			b := newBus(t, bus.Options{Strict: strict})
			ep := register(t, b, bus.Service("store"))
			bus.Handle(ep, "get", func(ctx context.Context, key string) (string, error) {
				return "", fmt.Errorf("key %q: %w", key, errNotFound)
			})
			_, err := bus.Request[string, string](context.Background(), b, bus.Service("store"), "get", "k")
			const want = `bus: service/store get: key "k": not found`
			if err == nil || err.Error() != want {
				t.Fatalf("err = %v, want %q", err, want)
			}
			var re *bus.RemoteError
			if !errors.As(err, &re) || re.Address != bus.Service("store") || re.Command != "get" || re.Message != `key "k": not found` {
				t.Errorf("errors.As(*RemoteError) = %+v, want its address, command and message", re)
			}
			// The handler's own sentinel survives in memory only.
			if got := errors.Is(err, errNotFound); got != !strict {
				t.Errorf("errors.Is(err, errNotFound) = %v, want %v", got, !strict)
			}
		})
	}
}

func TestHandlerPanic(t *testing.T) {
	t.Parallel()
	for _, strict := range []bool{false, true} {
		t.Run(fmt.Sprintf("strict=%v", strict), func(t *testing.T) {
			t.Parallel()
			b := newBus(t, bus.Options{Strict: strict})
			ep := register(t, b, bus.Cluster(0))
			bus.Handle(ep, "boom", func(ctx context.Context, _ int) (int, error) { panic("kaboom") })
			bus.Handle(ep, "echo", echo)
			_, err := bus.Request[int, int](context.Background(), b, bus.Cluster(0), "boom", 1)
			if !errors.Is(err, bus.ErrHandlerPanic) || !strings.Contains(err.Error(), "kaboom") {
				t.Fatalf("err = %v, want ErrHandlerPanic with the panic value", err)
			}
			var re *bus.RemoteError
			if !errors.As(err, &re) {
				t.Errorf("err = %T, want a *RemoteError", err)
			}
			// The endpoint keeps serving.
			got, err := bus.Request[string, string](context.Background(), b, bus.Cluster(0), "echo", "still here")
			if err != nil || got != "still here" {
				t.Errorf("after a panic: Request = %q, %v, want the echo", got, err)
			}
		})
	}
}

func TestPanicIsLogged(t *testing.T) {
	t.Parallel()
	var buf syncBuffer
	b := newBus(t, bus.Options{Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	ep := register(t, b, bus.Cluster(0))
	bus.Handle(ep, "boom", func(ctx context.Context, _ int) (int, error) { panic("kaboom") })
	_, _ = bus.Request[int, int](context.Background(), b, bus.Cluster(0), "boom", 1)
	out := buf.String()
	for _, want := range []string{"handler panicked", "address=cluster/0", "command=boom", "panic=kaboom", "stack="} {
		if !strings.Contains(out, want) {
			t.Errorf("log %q does not contain %q", out, want)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex // guards b
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestSend(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	ep := register(t, b, bus.Service("log"))
	got := make(chan string, 1)
	bus.Handle(ep, "write", func(ctx context.Context, s string) (struct{}, error) {
		got <- s
		return struct{}{}, nil
	})
	if err := bus.Send(context.Background(), b, bus.Service("log"), "write", "hello"); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "hello" {
		t.Errorf("handler got %q, want hello", s)
	}
}

func TestMailboxFullBlocksUntilRoomOrContextEnds(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{DefaultTimeout: time.Hour})
	addr := bus.Service("busy")
	ep := register(t, b, addr, bus.Mailbox(1))
	bl := newBlocker()
	bus.Handle(ep, "wait", bl.handle)

	// One message in the handler, one in the mailbox: it is full.
	if err := bus.Send(context.Background(), b, addr, "wait", "1"); err != nil {
		t.Fatal(err)
	}
	<-bl.started
	if err := bus.Send(context.Background(), b, addr, "wait", "2"); err != nil {
		t.Fatal(err)
	}
	// Queued counts the waiting message, not the one being handled.
	if n, ok := b.Queued(addr); n != 1 || !ok {
		t.Errorf("Queued = %d, %t; want 1, true", n, ok)
	}
	if n, ok := b.Queued(bus.Service("nobody")); n != 0 || ok {
		t.Errorf("Queued of an unknown address = %d, %t; want 0, false", n, ok)
	}

	// A sender whose context is cancelled gives up with the context's error.
	ctx, cancel := context.WithCancel(context.Background())
	cancelled := make(chan error, 1)
	go func() { cancelled <- bus.Send(ctx, b, addr, "wait", "3") }()
	cancel()
	if err := <-cancelled; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Send: err = %v, want context.Canceled", err)
	}

	// A request whose deadline passes while the mailbox is full times out.
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer dcancel()
	if _, err := bus.Request[string, string](dctx, b, addr, "wait", "4"); !errors.Is(err, bus.ErrTimeout) {
		t.Errorf("Request on a full mailbox: err = %v, want ErrTimeout", err)
	}

	// A sender without a deadline waits for room.
	sent := make(chan error, 1)
	go func() { sent <- bus.Send(context.Background(), b, addr, "wait", "5") }()
	select {
	case err := <-sent:
		t.Fatalf("Send on a full mailbox returned %v before there was room", err)
	default:
	}
	bl.release <- struct{}{} // "1" returns; "2" starts; "5" gets its place
	if err := <-sent; err != nil {
		t.Errorf("Send after room was made: %v", err)
	}
	if s := <-bl.started; s != "2" {
		t.Errorf("second handled = %q, want 2", s)
	}
	close(bl.release)
	if s := <-bl.started; s != "5" {
		t.Errorf("third handled = %q, want 5", s)
	}
}

func TestSendFullMailboxDefaultTimeout(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{DefaultTimeout: 10 * time.Millisecond})
	addr := bus.Service("busy")
	ep := register(t, b, addr, bus.Mailbox(1))
	bl := newBlocker()
	bus.Handle(ep, "wait", bl.handle)
	defer close(bl.release)
	if err := bus.Send(context.Background(), b, addr, "wait", "1"); err != nil {
		t.Fatal(err)
	}
	<-bl.started
	if err := bus.Send(context.Background(), b, addr, "wait", "2"); err != nil {
		t.Fatal(err)
	}
	err := bus.Send(context.Background(), b, addr, "wait", "3")
	if !errors.Is(err, bus.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want ErrTimeout and context.DeadlineExceeded", err)
	}
}

func TestAbandonedRepliesDoNotLeak(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	ep := register(t, b, bus.Service("slow"), bus.Concurrency(4))
	release := make(chan struct{})
	bus.Handle(ep, "wait", func(ctx context.Context, n int) (int, error) {
		<-release // ignores ctx: it answers after its caller has gone
		return n, nil
	})
	bus.Handle(ep, "echo", func(ctx context.Context, n int) (int, error) { return n, nil })
	for i := range 4 {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := bus.Request[int, int](ctx, b, bus.Service("slow"), "wait", i); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	}
	close(release)
	// Later requests get their own answers, never a late one.
	for i := range 100 {
		got, err := bus.Request[int, int](context.Background(), b, bus.Service("slow"), "echo", 1000+i)
		if err != nil || got != 1000+i {
			t.Fatalf("Request(echo, %d) = %d, %v", 1000+i, got, err)
		}
	}
	// goleak (TestMain) checks that no goroutine is left waiting.
}

func TestConcurrency(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	ep := register(t, b, bus.Service("pool"), bus.Concurrency(3))
	bl := newBlocker()
	bus.Handle(ep, "wait", bl.handle)
	for i := range 3 {
		if err := bus.Send(context.Background(), b, bus.Service("pool"), "wait", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 { // all three run at once, or this blocks
		<-bl.started
	}
	close(bl.release)
}

func TestGather(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{DefaultTimeout: time.Hour})
	slow := newBlocker()
	defer close(slow.release)
	answering := make(chan int, 4)
	for id := range 4 {
		ep := register(t, b, bus.Cluster(id))
		switch id {
		case 1:
			bus.Handle(ep, "guilds", func(ctx context.Context, _ struct{}) (int, error) {
				answering <- id
				return 0, errors.New("cache not ready")
			})
			bus.Handle(ep, "sync", func(ctx context.Context, _ struct{}) (struct{}, error) { return struct{}{}, nil })
		case 2:
			bus.Handle(ep, "guilds", func(ctx context.Context, _ struct{}) (int, error) {
				_, err := slow.handle(ctx, "")
				return 0, err
			})
		default:
			bus.Handle(ep, "guilds", func(ctx context.Context, _ struct{}) (int, error) {
				answering <- id
				return 100 + id, nil
			})
			bus.Handle(ep, "sync", func(ctx context.Context, _ struct{}) (struct{}, error) { return struct{}{}, nil })
		}
	}
	register(t, b, bus.Service("other")) // not a cluster

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-slow.started
		for range 3 { // clusters 0, 1 and 3 are handling Gather's request
			<-answering
		}
		// Each cluster handles one message at a time, in order: once it
		// has answered this, it has answered Gather.
		for _, id := range []int{0, 1, 3} {
			_, _ = bus.Request[struct{}, struct{}](context.Background(), b, bus.Cluster(id), "sync", struct{}{})
		}
		cancel() // the slow member is busy and the others have answered
	}()
	got, err := bus.Gather[struct{}, int](ctx, b, bus.AllClusters, "guilds", struct{}{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 {
		t.Fatalf("got %d replies, want one per cluster (4): %+v", len(got), got)
	}
	for i, r := range got {
		if r.From != bus.Cluster(i) {
			t.Errorf("reply %d from %s, want %s", i, r.From, bus.Cluster(i))
		}
	}
	if got[0].Err != nil || got[0].Value != 100 || got[3].Err != nil || got[3].Value != 103 {
		t.Errorf("healthy members: %+v, %+v, want 100 and 103", got[0], got[3])
	}
	if got[1].Err == nil || !strings.Contains(got[1].Err.Error(), "cluster/1 guilds: cache not ready") {
		t.Errorf("failing member: %v, want its error", got[1].Err)
	}
	if !errors.Is(got[2].Err, context.Canceled) {
		t.Errorf("slow member: %v, want context.Canceled", got[2].Err)
	}
}

func TestGatherDeadlineKeepsPartialResults(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	slow := newBlocker()
	defer close(slow.release)
	for id := range 3 {
		ep := register(t, b, bus.Cluster(id))
		bus.Handle(ep, "id", func(ctx context.Context, _ int) (int, error) {
			if id == 0 {
				_, err := slow.handle(ctx, "")
				return 0, err
			}
			return id, nil
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	got, err := bus.Gather[int, int](ctx, b, bus.AllClusters, "id", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(got[0].Err, bus.ErrTimeout) || !errors.Is(got[0].Err, context.DeadlineExceeded) {
		t.Errorf("slow member: %v, want ErrTimeout", got[0].Err)
	}
	if got[1].Value != 1 || got[1].Err != nil || got[2].Value != 2 || got[2].Err != nil {
		t.Errorf("answers after the slow member were lost: %+v", got[1:])
	}
}

func TestGatherEmptyGroupAndUnknownCommand(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	got, err := bus.Gather[int, int](context.Background(), b, bus.AllServices, "x", 0)
	if err != nil || len(got) != 0 {
		t.Errorf("empty group: %v, %v, want no reply and no error", got, err)
	}
	ep := register(t, b, bus.Service("a"))
	bus.Handle(ep, "x", func(ctx context.Context, n int) (int, error) { return n, nil })
	register(t, b, bus.Service("b"))
	got, err = bus.Gather[int, int](context.Background(), b, bus.AllServices, "x", 7)
	if err != nil || len(got) != 2 {
		t.Fatalf("Gather = %v, %v, want 2 replies", got, err)
	}
	if got[0].Value != 7 || !errors.Is(got[1].Err, bus.ErrUnknownCommand) {
		t.Errorf("Gather = %+v, want 7 from service/a and ErrUnknownCommand from service/b", got)
	}
}

func TestPublishSubscribe(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	type rcv struct {
		at      bus.Address
		payload any
	}
	got := make(chan rcv, 100)
	addrs := []bus.Address{bus.Admiral, bus.Cluster(0), bus.Cluster(1), bus.Service("s")}
	for _, a := range addrs {
		ep := register(t, b, a)
		ep.Subscribe("ping", func(ctx context.Context, ev bus.Event) {
			got <- rcv{a, ev.Payload}
		})
	}
	global := make(chan rcv, 100)
	unsubscribe := bus.Subscribe(b, "ping", func(ctx context.Context, ev bus.Event) {
		global <- rcv{"global", ev.Payload}
	})
	defer unsubscribe()

	collect := func(n int) map[bus.Address]any {
		t.Helper()
		m := map[bus.Address]any{}
		for range n {
			r := <-got
			m[r.at] = r.payload
		}
		return m
	}
	tests := []struct {
		to   bus.Address
		want []bus.Address
	}{
		{bus.Everyone, addrs},
		{bus.AllClusters, []bus.Address{bus.Cluster(0), bus.Cluster(1)}},
		{bus.Cluster(1), []bus.Address{bus.Cluster(1)}},
		{bus.Admiral, []bus.Address{bus.Admiral}},
		{bus.AllServices, []bus.Address{bus.Service("s")}},
	}
	for i, tt := range tests {
		if err := bus.Publish(context.Background(), b, tt.to, "ping", i); err != nil {
			t.Fatalf("Publish(%s): %v", tt.to, err)
		}
		m := collect(len(tt.want))
		if g := <-global; g.payload != i {
			t.Errorf("Publish(%s): global subscriber got %v, want %d", tt.to, g.payload, i)
		}
		for _, a := range tt.want {
			if m[a] != i {
				t.Errorf("Publish(%s): %s got %v, want %d", tt.to, a, m[a], i)
			}
		}
		if len(m) != len(tt.want) {
			t.Errorf("Publish(%s) reached %v, want %v", tt.to, m, tt.want)
		}
	}
	// An event nobody subscribes to is skipped without error.
	if err := bus.Publish(context.Background(), b, bus.Everyone, "other", 1); err != nil {
		t.Errorf("Publish of an unsubscribed event: %v", err)
	}
	select {
	case r := <-got:
		t.Errorf("unexpected delivery %+v", r)
	default:
	}
}

func TestUnsubscribeRemovesExactlyThatOne(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	ep := register(t, b, bus.Cluster(0))
	got := make(chan string, 10)
	var unsub [3]func()
	var gunsub [3]func()
	for i, name := range []string{"a", "b", "c"} {
		unsub[i] = ep.Subscribe("ev", func(ctx context.Context, ev bus.Event) { got <- name })
		gunsub[i] = bus.Subscribe(b, "ev", func(ctx context.Context, ev bus.Event) { got <- "global " + name })
	}
	// eris-fleet removed the last listener here; we remove b, and only b.
	unsub[1]()
	unsub[1]() // a second call does nothing
	gunsub[0]()
	if err := bus.Publish(context.Background(), b, bus.Cluster(0), "ev", nil); err != nil {
		t.Fatal(err)
	}
	// The global subscribers run before Publish returns, in order.
	var all []string
	for range 4 {
		all = append(all, <-got)
	}
	want := map[string]bool{"global b": true, "global c": true, "a": true, "c": true}
	for _, s := range all {
		if !want[s] {
			t.Errorf("got %q from a removed subscription (all: %v)", s, all)
		}
		delete(want, s)
	}
	if len(want) != 0 {
		t.Errorf("missing %v (got %v)", want, all)
	}

	// With every subscription gone, the event is not even queued.
	unsub[0]()
	unsub[2]()
	gunsub[1]()
	gunsub[2]()
	if err := bus.Publish(context.Background(), b, bus.Cluster(0), "ev", nil); err != nil {
		t.Fatal(err)
	}
	// A request behind it would be answered after it: nothing came.
	bus.Handle(ep, "sync", func(ctx context.Context, _ int) (int, error) { return 0, nil })
	if _, err := bus.Request[int, int](context.Background(), b, bus.Cluster(0), "sync", 0); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		t.Errorf("got %q after every subscription was removed", s)
	default:
	}
}

func TestFalsyPayloadsArriveAsTheyAre(t *testing.T) {
	t.Parallel()
	for _, strict := range []bool{false, true} {
		t.Run(fmt.Sprintf("strict=%v", strict), func(t *testing.T) {
			t.Parallel()
			b := newBus(t, bus.Options{Strict: strict})
			ep := register(t, b, bus.Cluster(0))
			got := make(chan any, 1)
			ep.Subscribe("ev", func(ctx context.Context, ev bus.Event) { got <- ev.Payload })
			for _, p := range []any{nil, 0, "", false, 0.0, []int{}} {
				if err := bus.Publish(context.Background(), b, bus.Cluster(0), "ev", p); err != nil {
					t.Fatal(err)
				}
				g := <-got
				if fmt.Sprintf("%T %#v", g, g) != fmt.Sprintf("%T %#v", p, p) {
					t.Errorf("published %T %#v, received %T %#v", p, p, g, g)
				}
			}
		})
	}
}

type withChan struct {
	Name string
	C    chan int
}

type withFunc struct{ F func() }

func TestStrictEncodeErrors(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{Strict: true})
	ep := register(t, b, bus.Service("s"))
	bus.Handle(ep, "in", func(ctx context.Context, v withChan) (int, error) { return 0, nil })
	bus.Handle(ep, "out", func(ctx context.Context, _ int) (withFunc, error) { return withFunc{F: func() {}}, nil })
	ep.Subscribe("ev", func(ctx context.Context, ev bus.Event) {})

	_, err := bus.Request[withChan, int](context.Background(), b, bus.Service("s"), "in", withChan{C: make(chan int)})
	if !errors.Is(err, bus.ErrStrict) || !strings.HasPrefix(fmt.Sprint(err), "bus: strict mode: cannot encode payload of type bus_test.withChan: ") {
		t.Errorf("Request: err = %v, want ErrStrict naming bus_test.withChan", err)
	}
	_, err = bus.Request[int, withFunc](context.Background(), b, bus.Service("s"), "out", 1)
	if !errors.Is(err, bus.ErrStrict) || !strings.Contains(fmt.Sprint(err), "cannot encode reply of type bus_test.withFunc") {
		t.Errorf("reply: err = %v, want ErrStrict naming bus_test.withFunc", err)
	}
	err = bus.Send(context.Background(), b, bus.Service("s"), "in", withChan{C: make(chan int)})
	if !errors.Is(err, bus.ErrStrict) {
		t.Errorf("Send: err = %v, want ErrStrict", err)
	}
	err = bus.Publish(context.Background(), b, bus.Everyone, "ev", withFunc{})
	if !errors.Is(err, bus.ErrStrict) || !strings.Contains(fmt.Sprint(err), "bus_test.withFunc") {
		t.Errorf("Publish: err = %v, want ErrStrict naming bus_test.withFunc", err)
	}
	_, err = bus.Gather[withChan, int](context.Background(), b, bus.AllServices, "in", withChan{C: make(chan int)})
	if !errors.Is(err, bus.ErrStrict) {
		t.Errorf("Gather: err = %v, want ErrStrict", err)
	}

	// Without strict mode the same values pass.
	nb := newBus(t, bus.Options{})
	nep := register(t, nb, bus.Service("s"))
	bus.Handle(nep, "in", func(ctx context.Context, v withChan) (int, error) { return 0, nil })
	if _, err := bus.Request[withChan, int](context.Background(), nb, bus.Service("s"), "in", withChan{C: make(chan int)}); err != nil {
		t.Errorf("non-strict Request: %v", err)
	}
}

func TestStrictPassesCopies(t *testing.T) {
	t.Parallel()
	for _, strict := range []bool{false, true} {
		t.Run(fmt.Sprintf("strict=%v", strict), func(t *testing.T) {
			t.Parallel()
			b := newBus(t, bus.Options{Strict: strict})
			ep := register(t, b, bus.Service("s"))
			bus.Handle(ep, "mutate", func(ctx context.Context, m map[string]int) (map[string]int, error) {
				m["handler"] = 1
				return m, nil
			})
			in := map[string]int{"caller": 1}
			out, err := bus.Request[map[string]int, map[string]int](context.Background(), b, bus.Service("s"), "mutate", in)
			if err != nil {
				t.Fatal(err)
			}
			_, shared := in["handler"]
			if shared == strict {
				t.Errorf("caller's map changed by the handler: %v; want a copy only in strict mode", shared)
			}
			if out["handler"] != 1 || out["caller"] != 1 {
				t.Errorf("reply = %v", out)
			}
		})
	}
}

func TestSoftReplaceLosesNothing(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	addr := bus.Service("store")
	ep := register(t, b, addr, bus.Mailbox(8))

	var running, maxRunning atomic.Int32
	var oldClosed atomic.Bool
	var lateOld atomic.Int32
	track := func(version string) func(ctx context.Context, n int) (string, error) {
		return func(ctx context.Context, n int) (string, error) {
			if version == "v1" && oldClosed.Load() {
				lateOld.Add(1)
			}
			r := running.Add(1)
			for {
				m := maxRunning.Load()
				if r <= m || maxRunning.CompareAndSwap(m, r) {
					break
				}
			}
			defer running.Add(-1)
			return fmt.Sprintf("%s:%d", version, n), nil
		}
	}
	bus.Handle(ep, "get", track("v1"))

	const callers = 8
	var (
		wg      sync.WaitGroup
		stop    = make(chan struct{})
		mu      sync.Mutex // guards counts and errs
		counts  = map[string]int{}
		errs    []error
		v1Seen  = make(chan struct{})
		v2Seen  = make(chan struct{})
		v1Once  sync.Once
		v2Once  sync.Once
		sentAll atomic.Int64
	)
	for c := range callers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				n := c*1_000_000 + i
				sentAll.Add(1)
				got, err := bus.Request[int, string](context.Background(), b, addr, "get", n)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					version, num, _ := strings.Cut(got, ":")
					if num != fmt.Sprint(n) {
						errs = append(errs, fmt.Errorf("request %d answered %q", n, got))
					}
					counts[version]++
					if counts["v1"] >= 200 {
						v1Once.Do(func() { close(v1Seen) })
					}
					if counts["v2"] >= 200 {
						v2Once.Do(func() { close(v2Seen) })
					}
				}
				mu.Unlock()
			}
		})
	}

	<-v1Seen // requests are flowing and queued
	next, err := b.Standby(addr)
	if err != nil {
		t.Fatal(err)
	}
	bus.Handle(next, "get", track("v2"))
	old, err := b.Replace(next)
	if err != nil {
		t.Fatal(err)
	}
	if old != ep {
		t.Errorf("Replace returned %p, want the first endpoint %p", old, ep)
	}
	if err := old.Close(context.Background()); err != nil {
		t.Fatalf("closing the replaced endpoint: %v", err)
	}
	oldClosed.Store(true)
	<-v2Seen
	close(stop)
	wg.Wait()

	if len(errs) > 0 {
		t.Fatalf("%d requests failed, first: %v", len(errs), errs[0])
	}
	total := int64(counts["v1"] + counts["v2"])
	if total != sentAll.Load() {
		t.Errorf("%d requests sent, %d answered", sentAll.Load(), total)
	}
	if n := lateOld.Load(); n > 0 {
		t.Errorf("the old endpoint handled %d requests after its Close returned", n)
	}
	if m := maxRunning.Load(); m != 1 {
		t.Errorf("up to %d handlers ran at once with Concurrency 1, want 1", m)
	}
	t.Logf("answered: v1 %d, v2 %d", counts["v1"], counts["v2"])
}

func TestReplaceErrors(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	if _, err := b.Standby(bus.Cluster(0)); !errors.Is(err, bus.ErrUnknownAddress) {
		t.Errorf("Standby of an unregistered address: %v, want ErrUnknownAddress", err)
	}
	ep := register(t, b, bus.Cluster(0))
	if _, err := b.Replace(ep); err == nil || !strings.Contains(err.Error(), "is current, not on standby") {
		t.Errorf("Replace(current) = %v", err)
	}
	other := newBus(t, bus.Options{})
	oep := register(t, other, bus.Cluster(0))
	if _, err := b.Replace(oep); err == nil || !strings.Contains(err.Error(), "another Bus") {
		t.Errorf("Replace(endpoint of another bus) = %v", err)
	}
	next, err := b.Standby(bus.Cluster(0))
	if err != nil {
		t.Fatal(err)
	}
	if err := next.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Replace(next); err == nil || !strings.Contains(err.Error(), "is closed") {
		t.Errorf("Replace(closed standby) = %v", err)
	}
	if err := ep.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Standby(bus.Cluster(0)); !errors.Is(err, bus.ErrUnknownAddress) {
		t.Errorf("Standby after Close: %v, want ErrUnknownAddress", err)
	}
}

func TestEndpointCloseDrains(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	addr := bus.Service("s")
	ep := register(t, b, addr)
	bl := newBlocker()
	handled := make(chan string, 10)
	bus.Handle(ep, "wait", bl.handle)
	bus.Handle(ep, "note", func(ctx context.Context, s string) (struct{}, error) {
		handled <- s
		return struct{}{}, nil
	})
	if err := bus.Send(context.Background(), b, addr, "wait", "w"); err != nil {
		t.Fatal(err)
	}
	<-bl.started
	for _, s := range []string{"a", "b", "c"} {
		if err := bus.Send(context.Background(), b, addr, "note", s); err != nil {
			t.Fatal(err)
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- ep.Close(context.Background()) }()
	// Close waits for the running handler and the queue.
	select {
	case err := <-closed:
		t.Fatalf("Close returned %v with a handler running", err)
	default:
	}
	close(bl.release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if len(handled) != 3 {
		t.Errorf("%d queued messages handled before Close returned, want 3", len(handled))
	}
	// The address is gone.
	if err := bus.Send(context.Background(), b, addr, "note", "late"); !errors.Is(err, bus.ErrUnknownAddress) {
		t.Errorf("Send after Close: %v, want ErrUnknownAddress", err)
	}
	if err := ep.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v", err)
	}
	// The address can be registered again.
	register(t, b, addr)
}

func TestEndpointCloseTimeout(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	addr := bus.Service("s")
	ep := register(t, b, addr)
	bl := newBlocker()
	bus.Handle(ep, "wait", bl.handle)
	sendCtx := make(chan context.Context, 1)
	bus.Handle(ep, "ctx", func(ctx context.Context, _ string) (string, error) {
		sendCtx <- ctx
		return "", nil
	})
	if err := bus.Send(context.Background(), b, addr, "wait", "w"); err != nil {
		t.Fatal(err)
	}
	<-bl.started
	queued := make(chan error, 1)
	go func() {
		_, err := bus.Request[string, string](context.Background(), b, addr, "wait", "queued")
		queued <- err
	}()
	// Wait for the request to be queued: Close would otherwise refuse it.
	for n := 0; n == 0; n, _ = b.Queued(addr) {
		runtime.Gosched()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	err := ep.Close(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "1 handler(s) still running") {
		t.Errorf("Close = %v, want DeadlineExceeded and the number of running handlers", err)
	}
	// The queued request is refused rather than left waiting.
	close(bl.release)
	if err := <-queued; !errors.Is(err, bus.ErrClosed) {
		t.Errorf("queued request: %v, want ErrClosed", err)
	}
}

func TestBusClose(t *testing.T) {
	t.Parallel()
	b := bus.New(bus.Options{Logger: slog.New(slog.DiscardHandler)})
	ep := register(t, b, bus.Cluster(0))
	bl := newBlocker()
	bus.Handle(ep, "wait", bl.handle)
	done := make(chan error, 1)
	go func() {
		_, err := bus.Request[string, string](context.Background(), b, bus.Cluster(0), "wait", "x")
		done <- err
	}()
	<-bl.started
	closed := make(chan struct{})
	go func() {
		b.Close()
		close(closed)
	}()
	select {
	case <-closed:
		t.Fatal("Close returned while a handler was running")
	default:
	}
	close(bl.release)
	<-closed
	if err := <-done; err != nil {
		t.Errorf("in-flight request: %v, want its answer", err)
	}
	if _, err := bus.Request[string, string](context.Background(), b, bus.Cluster(0), "wait", "x"); !errors.Is(err, bus.ErrClosed) {
		t.Errorf("Request after Close: %v, want ErrClosed", err)
	}
	if _, err := b.Register(bus.Cluster(1)); !errors.Is(err, bus.ErrClosed) {
		t.Errorf("Register after Close: %v, want ErrClosed", err)
	}
	if _, err := bus.Gather[int, int](context.Background(), b, bus.Everyone, "x", 0); !errors.Is(err, bus.ErrClosed) {
		t.Errorf("Gather after Close: %v, want ErrClosed", err)
	}
	b.Close() // twice is fine
}

func TestSendAndEventContextEndsOnForcedClose(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	ep := register(t, b, bus.Service("s"))
	started := make(chan struct{})
	bus.Handle(ep, "work", func(ctx context.Context, _ int) (int, error) {
		close(started)
		<-ctx.Done() // a Send's context ends when the bus is closed
		return 0, ctx.Err()
	})
	if err := bus.Send(context.Background(), b, bus.Service("s"), "work", 0); err != nil {
		t.Fatal(err)
	}
	<-started
	b.Close() // returns only because the handler's context ended
}

// encodingTransport wraps the default transport as a remote one would: it
// encodes every payload and every reply with JSON. It proves that the
// Transport interface can carry the typed API across an encoding.
type encodingTransport struct {
	bus.Transport
	wg sync.WaitGroup // the reply forwarders
}

func (t *encodingTransport) Deliver(ctx context.Context, m bus.Message) error {
	data, err := json.Marshal(m.Payload)
	if err != nil {
		return err
	}
	m.Payload, m.Encoded = data, true
	if m.Kind != bus.KindRequest {
		return t.Transport.Deliver(ctx, m)
	}
	caller := m.Reply
	local := make(chan bus.Response, 1)
	m.Reply = local
	if err := t.Transport.Deliver(ctx, m); err != nil {
		return err
	}
	t.wg.Go(func() {
		r := <-local
		if r.Err == nil {
			data, err := json.Marshal(r.Value)
			r = bus.Response{Value: data, Encoded: true, Err: err}
		}
		caller <- r
	})
	return nil
}

func TestTransportCanEncode(t *testing.T) {
	t.Parallel()
	// The default transport, borrowed from a plain Bus.
	tr := &encodingTransport{Transport: bus.DefaultTransport(t)}
	b := newBus(t, bus.Options{Transport: tr})
	t.Cleanup(tr.wg.Wait)
	ep := register(t, b, bus.Service("geo"))
	bus.Handle(ep, "move", func(ctx context.Context, p point) (point, error) { return point{p.X + 1, p.Y}, nil })
	got, err := bus.Request[point, point](context.Background(), b, bus.Service("geo"), "move", point{1, 1})
	if err != nil || got != (point{2, 1}) {
		t.Errorf("Request over an encoding transport = %v, %v, want {2 1}", got, err)
	}
	_, err = bus.Request[point, point](context.Background(), b, bus.Service("geo"), "nope", point{})
	if !errors.Is(err, bus.ErrUnknownCommand) {
		t.Errorf("unknown command over an encoding transport: %v", err)
	}
}

func TestCloseReplacedWaitsForItsHandlers(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	addr := bus.Service("s")
	ep := register(t, b, addr)
	bl := newBlocker()
	bus.Handle(ep, "v", bl.handle)
	answer := make(chan string, 1)
	go func() {
		v, _ := bus.Request[string, string](context.Background(), b, addr, "v", "v1")
		answer <- v
	}()
	<-bl.started

	next, err := b.Standby(addr)
	if err != nil {
		t.Fatal(err)
	}
	bus.Handle(next, "v", func(ctx context.Context, _ string) (string, error) { return "v2", nil })
	old, err := b.Replace(next)
	if err != nil {
		t.Fatal(err)
	}

	// Bounded by its context, Close reports the handler still running.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := old.Close(ctx); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "1 handler(s) still running") {
		t.Errorf("Close with a handler running = %v, want DeadlineExceeded and the count", err)
	}
	closed := make(chan error, 1)
	go func() { closed <- old.Close(context.Background()) }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned %v while the old handler ran", err)
	default:
	}
	close(bl.release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if v := <-answer; v != "v1" {
		t.Errorf("in-flight request answered %q, want v1 (by the old handler)", v)
	}
	if v, err := bus.Request[string, string](context.Background(), b, addr, "v", ""); v != "v2" || err != nil {
		t.Errorf("after Replace: %q, %v, want v2", v, err)
	}
}
