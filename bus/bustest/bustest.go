// Package bustest is a conformance suite for bus transports: it checks
// that calls made on one Bus reach the endpoints of another with the
// in-memory bus's semantics (replies, deadlines, sentinel errors,
// back-pressure, gather, publish/subscribe, soft replacement). The bus
// package runs it on one in-memory Bus; a transport between processes
// runs it on two Buses joined by that transport.
package bustest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofleet/fleet/bus"
)

// Pair is two Buses joined by the transport under test: the suite
// registers endpoints on Server and calls them from Caller (they may be
// the same Bus).
type Pair struct {
	Caller, Server *bus.Bus
	// Await, if set, waits until Caller sees addr, registered on Server,
	// as a member of its groups (for transports that learn membership
	// asynchronously).
	Await func(ctx context.Context, addr bus.Address) error
}

// NewPair returns a Pair whose Buses were made with opts (fill in the
// transport), closed when the test ends.
type NewPair func(t *testing.T, opts bus.Options) Pair

// Run runs the suite. Subtests run in parallel.
func Run(t *testing.T, newPair NewPair) {
	tests := []struct {
		name string
		fn   func(*testing.T, NewPair)
	}{
		{"RequestReply", testRequestReply},
		{"DeadlineCarried", testDeadlineCarried},
		{"UnknownAddressAtOnce", testUnknownAddress},
		{"UnknownCommand", testUnknownCommand},
		{"HandlerErrorAndSentinels", testHandlerError},
		{"HandlerPanic", testHandlerPanic},
		{"Send", testSend},
		{"MailboxFullBackPressure", testMailboxFull},
		{"Gather", testGather},
		{"GatherDeadlineKeepsPartialResults", testGatherPartial},
		{"PublishSubscribe", testPublishSubscribe},
		{"SoftReplaceLosesNothing", testSoftReplace},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newPair)
		})
	}
}

func register(t *testing.T, p Pair, addr bus.Address, opts ...bus.Option) *bus.Endpoint {
	t.Helper()
	ep, err := p.Server.Register(addr, opts...)
	if err != nil {
		t.Fatalf("Register(%s): %v", addr, err)
	}
	return ep
}

func await(t *testing.T, p Pair, addrs ...bus.Address) {
	t.Helper()
	if p.Await == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, a := range addrs {
		if err := p.Await(ctx, a); err != nil {
			t.Fatalf("waiting for %s to be reachable: %v", a, err)
		}
	}
}

// bounded returns a context that ends the test's wait if an answer that
// should be immediate never comes.
func bounded(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

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

type point struct {
	X, Y int
	Tags []string
}

func testRequestReply(t *testing.T, newPair NewPair) {
	for _, strict := range []bool{false, true} {
		p := newPair(t, bus.Options{Strict: strict})
		addr := bus.Service(fmt.Sprintf("echo-%v", strict))
		ep := register(t, p, addr, bus.Concurrency(4))
		bus.Handle(ep, "move", func(_ context.Context, in point) (point, error) {
			return point{X: in.X + 1, Y: in.Y * 2, Tags: append(in.Tags, "moved")}, nil
		})
		bus.Handle(ep, "nothing", func(context.Context, struct{}) (*point, error) { return nil, nil })
		got, err := bus.Request[point, point](bounded(t), p.Caller, addr, "move", point{X: 1, Y: 2, Tags: []string{"a"}})
		if err != nil {
			t.Fatalf("strict %v: %v", strict, err)
		}
		if got.X != 2 || got.Y != 4 || strings.Join(got.Tags, ",") != "a,moved" {
			t.Errorf("strict %v: reply %+v", strict, got)
		}
		np, err := bus.Request[struct{}, *point](bounded(t), p.Caller, addr, "nothing", struct{}{})
		if err != nil || np != nil {
			t.Errorf("strict %v: nil reply: %v, %v", strict, np, err)
		}
	}
}

func testDeadlineCarried(t *testing.T, newPair NewPair) {
	p := newPair(t, bus.Options{DefaultTimeout: time.Hour})
	addr := bus.Service("slow")
	ep := register(t, p, addr, bus.Concurrency(2))
	left := make(chan time.Duration, 1)
	bus.Handle(ep, "deadline", func(ctx context.Context, _ struct{}) (struct{}, error) {
		d, ok := ctx.Deadline()
		if !ok {
			left <- -1
		} else {
			left <- time.Until(d)
		}
		return struct{}{}, nil
	})
	bl := newBlocker()
	bus.Handle(ep, "wait", bl.handle)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := bus.Request[struct{}, struct{}](ctx, p.Caller, addr, "deadline", struct{}{}); err != nil {
		t.Fatal(err)
	}
	if l := <-left; l <= 0 || l > 30*time.Second {
		t.Errorf("the handler had %v left, want the caller's deadline (at most 30s, not none)", l)
	}

	tctx, tcancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer tcancel()
	_, err := bus.Request[string, string](tctx, p.Caller, addr, "wait", "x")
	if !errors.Is(err, bus.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrTimeout and context.DeadlineExceeded", err)
	}
	if !strings.Contains(err.Error(), "service/slow wait") {
		t.Errorf("err = %q, want it to name the address and command", err)
	}
}

func testUnknownAddress(t *testing.T, newPair NewPair) {
	// An hour-long DefaultTimeout: only an immediate error passes.
	p := newPair(t, bus.Options{DefaultTimeout: time.Hour})
	ctx := bounded(t)
	_, err := bus.Request[string, string](ctx, p.Caller, bus.Cluster(7), "echo", "x")
	if !errors.Is(err, bus.ErrUnknownAddress) || !strings.Contains(err.Error(), "cluster/7") {
		t.Errorf("Request: err = %v, want ErrUnknownAddress naming cluster/7", err)
	}
	if err := bus.Send(ctx, p.Caller, bus.Cluster(7), "echo", "x"); !errors.Is(err, bus.ErrUnknownAddress) {
		t.Errorf("Send: err = %v, want ErrUnknownAddress", err)
	}
	if err := bus.Publish(ctx, p.Caller, bus.Cluster(7), "ev", nil); !errors.Is(err, bus.ErrUnknownAddress) {
		t.Errorf("Publish: err = %v, want ErrUnknownAddress", err)
	}
}

func testUnknownCommand(t *testing.T, newPair NewPair) {
	p := newPair(t, bus.Options{DefaultTimeout: time.Hour})
	addr := bus.Service("s")
	ep := register(t, p, addr)
	bus.Handle(ep, "echo", func(_ context.Context, s string) (string, error) { return s, nil })
	_, err := bus.Request[string, string](bounded(t), p.Caller, addr, "nope", "x")
	if !errors.Is(err, bus.ErrUnknownCommand) || !strings.Contains(err.Error(), `"nope" at service/s`) {
		t.Errorf("Request: err = %v, want ErrUnknownCommand naming the command and address", err)
	}
	if err := bus.Send(bounded(t), p.Caller, addr, "nope", "x"); !errors.Is(err, bus.ErrUnknownCommand) {
		t.Errorf("Send: err = %v, want ErrUnknownCommand", err)
	}
}

var errMine = errors.New("my error")

func testHandlerError(t *testing.T, newPair NewPair) {
	p := newPair(t, bus.Options{})
	addr := bus.Cluster(3)
	ep := register(t, p, addr)
	bus.Handle(ep, "fail", func(context.Context, string) (string, error) {
		return "", fmt.Errorf("fail on purpose: %w", errMine)
	})
	bus.Handle(ep, "sentinel", func(context.Context, string) (string, error) {
		return "", fmt.Errorf("gone: %w", bus.ErrClosed)
	})
	_, err := bus.Request[string, string](bounded(t), p.Caller, addr, "fail", "x")
	var re *bus.RemoteError
	if !errors.As(err, &re) || re.Address != addr || re.Command != "fail" || !strings.Contains(re.Message, "fail on purpose: my error") {
		t.Fatalf("err = %#v, want a *RemoteError from cluster/3 fail with the handler's message", err)
	}
	_, err = bus.Request[string, string](bounded(t), p.Caller, addr, "sentinel", "x")
	if !errors.Is(err, bus.ErrClosed) || !errors.As(err, &re) {
		t.Errorf("err = %v, want a *RemoteError matching bus.ErrClosed", err)
	}
}

func testHandlerPanic(t *testing.T, newPair NewPair) {
	p := newPair(t, bus.Options{})
	addr := bus.Service("panicky")
	ep := register(t, p, addr)
	bus.Handle(ep, "boom", func(context.Context, string) (string, error) { panic("kaboom") })
	bus.Handle(ep, "echo", func(_ context.Context, s string) (string, error) { return s, nil })
	_, err := bus.Request[string, string](bounded(t), p.Caller, addr, "boom", "x")
	if !errors.Is(err, bus.ErrHandlerPanic) || !strings.Contains(err.Error(), "kaboom") {
		t.Fatalf("err = %v, want ErrHandlerPanic with the panic value", err)
	}
	if got, err := bus.Request[string, string](bounded(t), p.Caller, addr, "echo", "still here"); err != nil || got != "still here" {
		t.Errorf("after a panic: %q, %v; want the endpoint to keep serving", got, err)
	}
}

func testSend(t *testing.T, newPair NewPair) {
	p := newPair(t, bus.Options{})
	addr := bus.Service("sink")
	ep := register(t, p, addr)
	got := make(chan int, 10)
	bus.Handle(ep, "put", func(_ context.Context, n int) (struct{}, error) {
		got <- n
		return struct{}{}, nil
	})
	for i := range 5 {
		if err := bus.Send(bounded(t), p.Caller, addr, "put", i); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		if n := <-got; n != i {
			t.Errorf("handled %d, want %d (in order)", n, i)
		}
	}
}

func testMailboxFull(t *testing.T, newPair NewPair) {
	p := newPair(t, bus.Options{DefaultTimeout: time.Hour})
	addr := bus.Service("busy")
	ep := register(t, p, addr, bus.Mailbox(1))
	bl := newBlocker()
	bus.Handle(ep, "wait", bl.handle)
	ctx := bounded(t)

	// One message in the handler, one in the mailbox: it is full.
	if err := bus.Send(ctx, p.Caller, addr, "wait", "1"); err != nil {
		t.Fatal(err)
	}
	<-bl.started
	if err := bus.Send(ctx, p.Caller, addr, "wait", "2"); err != nil {
		t.Fatal(err)
	}
	// A sender whose deadline passes while the mailbox is full fails by it.
	dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer dcancel()
	if err := bus.Send(dctx, p.Caller, addr, "wait", "3"); !errors.Is(err, bus.ErrTimeout) {
		t.Errorf("Send on a full mailbox: err = %v, want ErrTimeout", err)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer rcancel()
	if _, err := bus.Request[string, string](rctx, p.Caller, addr, "wait", "4"); !errors.Is(err, bus.ErrTimeout) {
		t.Errorf("Request on a full mailbox: err = %v, want ErrTimeout", err)
	}
	// A sender with time waits for room.
	sent := make(chan error, 1)
	go func() { sent <- bus.Send(ctx, p.Caller, addr, "wait", "5") }()
	select {
	case err := <-sent:
		t.Fatalf("Send on a full mailbox returned %v before there was room", err)
	default:
	}
	close(bl.release)
	if err := <-sent; err != nil {
		t.Errorf("Send after room was made: %v", err)
	}
	var order []string
	for s := range bl.started {
		order = append(order, s)
		if s == "5" {
			break
		}
	}
	// In one process a sender that gave up queued nothing. Across
	// processes the receiver learns it only from the deadline carried, so
	// "3" and "4" may still have been queued in the instant after it.
	o := strings.Join(order, ",")
	switch {
	case o == "2,5":
	case p.Caller != p.Server && (o == "2,3,5" || o == "2,4,5" || o == "2,3,4,5"):
	default:
		t.Errorf("handled after the first: %s, want 2,5", o)
	}
}

func testGather(t *testing.T, newPair NewPair) {
	p := newPair(t, bus.Options{DefaultTimeout: time.Hour})
	for id := range 3 {
		ep := register(t, p, bus.Cluster(id))
		bus.Handle(ep, "id", func(context.Context, string) (int, error) {
			if id == 1 {
				return 0, errors.New("cluster 1 fails")
			}
			return id * 10, nil
		})
	}
	sep := register(t, p, bus.Service("other"))
	bus.Handle(sep, "id", func(context.Context, string) (int, error) { return 99, nil })
	await(t, p, bus.Cluster(0), bus.Cluster(1), bus.Cluster(2), bus.Service("other"))
	replies, err := bus.Gather[string, int](bounded(t), p.Caller, bus.AllClusters, "id", "x")
	if err != nil {
		t.Fatal(err)
	}
	if len(replies) != 3 {
		t.Fatalf("%d replies, want 3: %+v", len(replies), replies)
	}
	for i, r := range replies {
		if r.From != bus.Cluster(i) {
			t.Errorf("reply %d from %s, want %s", i, r.From, bus.Cluster(i))
		}
		if i == 1 {
			var re *bus.RemoteError
			if !errors.As(r.Err, &re) || !strings.Contains(r.Err.Error(), "cluster 1 fails") {
				t.Errorf("cluster 1: err = %v, want its handler's error", r.Err)
			}
			continue
		}
		if r.Err != nil || r.Value != i*10 {
			t.Errorf("cluster %d: %d, %v", i, r.Value, r.Err)
		}
	}
	all, err := bus.Gather[string, int](bounded(t), p.Caller, bus.Everyone, "id", "x")
	if err != nil || len(all) != 4 || all[3].From != bus.Service("other") || all[3].Value != 99 {
		t.Errorf("Gather(Everyone) = %+v, %v; want the 3 clusters then service/other", all, err)
	}
}

func testGatherPartial(t *testing.T, newPair NewPair) {
	p := newPair(t, bus.Options{})
	bl := newBlocker()
	defer close(bl.release)
	for id := range 2 {
		ep := register(t, p, bus.Cluster(id))
		if id == 1 {
			bus.Handle(ep, "q", bl.handle)
		} else {
			bus.Handle(ep, "q", func(_ context.Context, s string) (string, error) { return s, nil })
		}
	}
	await(t, p, bus.Cluster(0), bus.Cluster(1))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	replies, err := bus.Gather[string, string](ctx, p.Caller, bus.AllClusters, "q", "x")
	if err != nil || len(replies) != 2 {
		t.Fatalf("Gather = %+v, %v", replies, err)
	}
	if replies[0].Err != nil || replies[0].Value != "x" {
		t.Errorf("cluster 0: %+v, want its answer", replies[0])
	}
	if !errors.Is(replies[1].Err, bus.ErrTimeout) {
		t.Errorf("cluster 1: err = %v, want ErrTimeout", replies[1].Err)
	}
}

// payload decodes an event payload that may have crossed a process as
// its encoding.
func payload[T any](t *testing.T, v any) T {
	t.Helper()
	if b, ok := v.([]byte); ok {
		var out T
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("event payload %q: %v", b, err)
		}
		return out
	}
	out, ok := v.(T)
	if !ok {
		t.Fatalf("event payload is %T", v)
	}
	return out
}

func testPublishSubscribe(t *testing.T, newPair NewPair) {
	p := newPair(t, bus.Options{})
	got := make(chan string, 10)
	for id := range 2 {
		ep := register(t, p, bus.Cluster(id))
		ep.Subscribe("news", func(_ context.Context, ev bus.Event) {
			got <- fmt.Sprintf("%d:%s", id, payload[string](t, ev.Payload))
		})
	}
	await(t, p, bus.Cluster(0), bus.Cluster(1))
	ctx := bounded(t)
	if err := bus.Publish(ctx, p.Caller, bus.Everyone, "news", "hello"); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{<-got: true, <-got: true}
	if !seen["0:hello"] || !seen["1:hello"] {
		t.Errorf("subscribers got %v, want both clusters", seen)
	}
	if err := bus.Publish(ctx, p.Caller, bus.Cluster(1), "news", "to one"); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "1:to one" {
		t.Errorf("got %q, want 1:to one", s)
	}
}

func testSoftReplace(t *testing.T, newPair NewPair) {
	p := newPair(t, bus.Options{})
	addr := bus.Service("store")
	ep := register(t, p, addr, bus.Mailbox(8))
	var running, maxRunning atomic.Int32
	track := func(version string) func(ctx context.Context, n int) (string, error) {
		return func(ctx context.Context, n int) (string, error) {
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

	var (
		wg       sync.WaitGroup
		stop     = make(chan struct{})
		mu       sync.Mutex // guards counts and errs
		counts   = map[string]int{}
		errs     []error
		v1Seen   = make(chan struct{})
		v2Seen   = make(chan struct{})
		v1Once   sync.Once
		v2Once   sync.Once
		sent     atomic.Int64
		deadline = bounded(t)
	)
	for c := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				n := c*1_000_000 + i
				sent.Add(1)
				got, err := bus.Request[int, string](deadline, p.Caller, addr, "get", n)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					version, num, _ := strings.Cut(got, ":")
					if num != fmt.Sprint(n) {
						errs = append(errs, fmt.Errorf("request %d answered %q", n, got))
					}
					counts[version]++
					if counts["v1"] >= 100 {
						v1Once.Do(func() { close(v1Seen) })
					}
					if counts["v2"] >= 100 {
						v2Once.Do(func() { close(v2Seen) })
					}
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		})
	}
	wait := func(ch chan struct{}, what string) {
		select {
		case <-ch:
		case <-deadline.Done():
			close(stop)
			wg.Wait()
			t.Fatalf("waiting for %s: %v (errors: %v)", what, deadline.Err(), errs)
		}
	}
	wait(v1Seen, "100 answers from v1")
	next, err := p.Server.Standby(addr)
	if err != nil {
		t.Fatal(err)
	}
	bus.Handle(next, "get", track("v2"))
	old, err := p.Server.Replace(next)
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Close(deadline); err != nil {
		t.Fatalf("closing the replaced endpoint: %v", err)
	}
	wait(v2Seen, "100 answers from v2")
	close(stop)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d requests failed, first: %v", len(errs), errs[0])
	}
	if total := int64(counts["v1"] + counts["v2"]); total != sent.Load() {
		t.Errorf("%d requests sent, %d answered", sent.Load(), total)
	}
	if m := maxRunning.Load(); m != 1 {
		t.Errorf("up to %d handlers ran at once with Concurrency 1, want 1", m)
	}
}
