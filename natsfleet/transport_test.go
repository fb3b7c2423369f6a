package natsfleet_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/bus/bustest"
	"github.com/gofleet/fleet/natsfleet"
)

// TestBusConformance runs the bus's conformance suite on two Buses, each
// with its own Transport and connection, through the embedded server: the
// caller's over TCP, the server's through memory, as a
// process that embeds the server connects.
func TestBusConformance(t *testing.T) {
	bustest.Run(t, func(t *testing.T, opts bus.Options) bustest.Pair {
		prefix := newPrefix()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		transport := func(nc *nats.Conn, err error) *natsfleet.Transport {
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(nc.Close)
			tr, err := natsfleet.NewTransport(nc, natsfleet.TransportConfig{Prefix: prefix, Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(tr.Close)
			return tr
		}
		ct := transport(srv.Connect(ctx, natsfleet.Logger(quiet)))
		st := transport(srv.ConnectInProcess(ctx, natsfleet.Logger(quiet)))
		return bustest.Pair{
			Caller: newBus(t, opts, ct),
			Server: newBus(t, opts, st),
			Await:  func(ctx context.Context, a bus.Address) error { return ct.WaitMember(ctx, a) },
		}
	})
}

// TestSlowAnswerHoldsNoOther: the answers to the calls one process
// receives go back as the endpoint gives them; a request still being
// handled does not hold back the answers to the ones after it, whether
// they came in the same NATS message or not.
func TestSlowAnswerHoldsNoOther(t *testing.T) {
	t.Parallel()
	prefix := newPrefix()
	ctx := testCtx(t)
	ct, st := newTransport(t, prefix), newTransport(t, prefix)
	caller := newBus(t, bus.Options{}, ct)
	server := newBus(t, bus.Options{}, st)
	addr := bus.Service("mixed")
	ep, err := server.Register(addr, bus.Concurrency(8))
	if err != nil {
		t.Fatal(err)
	}
	started, release := make(chan struct{}), make(chan struct{})
	bus.Handle(ep, "slow", func(ctx context.Context, n int) (int, error) {
		close(started)
		select {
		case <-release:
			return n, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	})
	bus.Handle(ep, "fast", func(_ context.Context, n int) (int, error) { return n + 1, nil })
	if err := ct.WaitMember(ctx, addr); err != nil {
		t.Fatal(err)
	}

	slow := make(chan error, 1)
	go func() {
		n, err := bus.Request[int, int](ctx, caller, addr, "slow", 7)
		if err == nil && n != 7 {
			err = fmt.Errorf("slow answered %d, want 7", n)
		}
		slow <- err
	}()
	<-started
	// Many fast calls at once, so that some share a message with each
	// other; each is answered while "slow" still runs.
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Go(func() {
			n, err := bus.Request[int, int](ctx, caller, addr, "fast", i)
			if err != nil || n != i+1 {
				t.Errorf("fast(%d) = %d, %v; want %d", i, n, err, i+1)
			}
		})
	}
	wg.Wait()
	select {
	case err := <-slow:
		t.Fatalf("slow answered before it was released: %v", err)
	default:
	}
	close(release)
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
}

// TestHandlerContextEnds: a handler's context, for a call from another
// process, ends at its caller's deadline, whether the handler waits on
// Done (or on a context derived from it) or only asks Err afterwards.
func TestHandlerContextEnds(t *testing.T) {
	t.Parallel()
	prefix := newPrefix()
	ctx := testCtx(t)
	ct, st := newTransport(t, prefix), newTransport(t, prefix)
	caller := newBus(t, bus.Options{}, ct)
	server := newBus(t, bus.Options{}, st)
	addr := bus.Service("deadlines")
	ep, err := server.Register(addr, bus.Concurrency(2))
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan error, 2)
	bus.Handle(ep, "done", func(ctx context.Context, _ int) (int, error) {
		derived, cancel := context.WithCancel(ctx)
		defer cancel()
		<-derived.Done()
		seen <- ctx.Err()
		return 0, ctx.Err()
	})
	late := make(chan struct{})
	bus.Handle(ep, "err", func(ctx context.Context, _ int) (int, error) {
		<-late
		seen <- ctx.Err()
		return 0, nil
	})
	if err := ct.WaitMember(ctx, addr); err != nil {
		t.Fatal(err)
	}
	for _, command := range []string{"done", "err"} {
		cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		_, err := bus.Request[int, int](cctx, caller, addr, command, 1)
		cancel()
		if !errors.Is(err, bus.ErrTimeout) {
			t.Fatalf("%s: err = %v, want ErrTimeout", command, err)
		}
		if command == "err" {
			close(late) // the caller's deadline has passed
		}
		if err := <-seen; !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: the handler's ctx.Err() = %v, want context.DeadlineExceeded", command, err)
		}
	}
}

// TestAbandonedCallsFreeWindow: a process that receives calls and never
// answers holds the caller's window only until each caller gives up,
// whether its ctx was cancelled or its deadline passed; the next call
// then goes out.
func TestAbandonedCallsFreeWindow(t *testing.T) {
	t.Parallel()
	prefix := newPrefix()
	ctx := testCtx(t)
	tr, err := natsfleet.NewTransport(connect(t), natsfleet.TransportConfig{Prefix: prefix, Logger: quiet, Window: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.Close)
	caller := newBus(t, bus.Options{}, tr)
	silent := connect(t)
	got := make(chan struct{}, 16)
	if _, err := silent.QueueSubscribe(prefix+".bus.service.silent", "serve", func(*nats.Msg) { got <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	if err := silent.Flush(); err != nil {
		t.Fatal(err)
	}
	addr := bus.Service("silent")
	call := func(ctx context.Context) chan error {
		done := make(chan error, 1)
		go func() {
			_, err := bus.Request[int, int](ctx, caller, addr, "x", 1)
			done <- err
		}()
		return done
	}
	received := func(what string) {
		t.Helper()
		select {
		case <-got:
		case <-ctx.Done():
			t.Fatalf("%s never reached the silent process: the window stayed full", what)
		}
	}

	cctx, cancel := context.WithCancel(ctx)
	first := call(cctx)
	received("the first call")
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: err = %v, want context.Canceled", err)
	}

	dctx, dcancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer dcancel()
	second := call(dctx)
	received("the call after a cancelled one")
	if err := <-second; !errors.Is(err, bus.ErrTimeout) {
		t.Fatalf("unanswered call: err = %v, want ErrTimeout", err)
	}

	lctx, lcancel := context.WithCancel(ctx)
	third := call(lctx)
	received("the call after a timed-out one")
	lcancel()
	<-third
}
