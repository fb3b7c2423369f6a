package natsfleet_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/bus/bustest"
	"github.com/gofleet/fleet/natsfleet"
)

// directPair returns a caller Bus and a server Bus whose Transports use
// direct links, and the caller's Transport.
func directPair(t *testing.T, opts bus.Options) (caller, server *bus.Bus, ct, st *natsfleet.Transport) {
	t.Helper()
	prefix := newPrefix()
	ct = newTransportWith(t, natsfleet.TransportConfig{Prefix: prefix, Direct: true})
	st = newTransportWith(t, natsfleet.TransportConfig{Prefix: prefix, Direct: true})
	return newBus(t, opts, ct), newBus(t, opts, st), ct, st
}

// TestBusConformanceDirect runs the bus's conformance suite with the
// calls on a direct link: Await also waits for the link to the address.
func TestBusConformanceDirect(t *testing.T) {
	bustest.Run(t, func(t *testing.T, opts bus.Options) bustest.Pair {
		caller, server, ct, _ := directPair(t, opts)
		return bustest.Pair{
			Caller: caller,
			Server: server,
			Await: func(ctx context.Context, a bus.Address) error {
				if err := ct.WaitMember(ctx, a); err != nil {
					return err
				}
				return natsfleet.WaitDirect(ctx, ct, a)
			},
		}
	})
}

// TestDirectSkipsNATS: once the link is open, calls and their answers do
// not go through the NATS server.
func TestDirectSkipsNATS(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	caller, server, ct, _ := directPair(t, bus.Options{})
	addr := bus.Service("echo")
	ep, err := server.Register(addr)
	if err != nil {
		t.Fatal(err)
	}
	bus.Handle(ep, "echo", func(_ context.Context, n int) (int, error) { return n, nil })
	if err := ct.WaitMember(ctx, addr); err != nil {
		t.Fatal(err)
	}
	if err := natsfleet.WaitDirect(ctx, ct, addr); err != nil {
		t.Fatal(err)
	}
	const calls = 100
	for i := range calls {
		if n, err := bus.Request[int, int](ctx, caller, addr, "echo", i); err != nil || n != i {
			t.Fatalf("echo %d = %d, %v", i, n, err)
		}
	}
	if err := bus.Send(ctx, caller, addr, "echo", 1); err != nil {
		t.Fatal(err)
	}
	if got := ct.Stats().DirectCalls; got != calls+1 {
		t.Errorf("%d calls went over the direct link, want %d", got, calls+1)
	}
}

// TestDirectBreakFailsCallsInFlight: when a direct link drops, each call
// in flight on it fails with ErrConnectionLost at once, not at its
// deadline; the next calls are answered.
func TestDirectBreakFailsCallsInFlight(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	caller, server, ct, st := directPair(t, bus.Options{})
	addr := bus.Service("s")
	ep, err := server.Register(addr, bus.Concurrency(8))
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{}, 8)
	release := make(chan struct{})
	bus.Handle(ep, "block", func(ctx context.Context, n int) (int, error) {
		started <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return n, nil
	})
	bus.Handle(ep, "echo", func(_ context.Context, n int) (int, error) { return n, nil })
	if err := ct.WaitMember(ctx, addr); err != nil {
		t.Fatal(err)
	}
	if err := natsfleet.WaitDirect(ctx, ct, addr); err != nil {
		t.Fatal(err)
	}
	const inFlight = 5
	var wg sync.WaitGroup
	results := make(chan error, inFlight)
	for i := range inFlight {
		wg.Go(func() {
			_, err := bus.Request[int, int](ctx, caller, addr, "block", i)
			results <- err
		})
	}
	for range inFlight {
		<-started
	}
	if got := ct.Stats().DirectCalls; got != inFlight {
		t.Fatalf("%d calls went over the direct link, want %d", got, inFlight)
	}
	natsfleet.BreakDirect(st)
	wg.Wait()
	close(results)
	for err := range results {
		if !errors.Is(err, natsfleet.ErrConnectionLost) {
			t.Errorf("a call in flight on the dropped link: %v, want ErrConnectionLost", err)
		}
	}
	close(release)
	if n, err := bus.Request[int, int](ctx, caller, addr, "echo", 7); err != nil || n != 7 {
		t.Errorf("a call after the link dropped: %d, %v", n, err)
	}
}

// TestDirectUnboundAddress: a call for an address the process at the
// other end of the link no longer serves fails with ErrUnknownAddress at
// once, whether the caller learnt of it yet or not.
func TestDirectUnboundAddress(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	caller, server, ct, _ := directPair(t, bus.Options{})
	addr := bus.Service("gone")
	ep, err := server.Register(addr)
	if err != nil {
		t.Fatal(err)
	}
	bus.Handle(ep, "echo", func(_ context.Context, n int) (int, error) { return n, nil })
	if err := ct.WaitMember(ctx, addr); err != nil {
		t.Fatal(err)
	}
	if err := natsfleet.WaitDirect(ctx, ct, addr); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Request[int, int](ctx, caller, addr, "echo", 1); err != nil {
		t.Fatal(err)
	}
	if err := ep.Close(ctx); err != nil {
		t.Fatal(err)
	}
	callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := bus.Request[int, int](callCtx, caller, addr, "echo", 2); !errors.Is(err, bus.ErrUnknownAddress) {
		t.Errorf("a call after the address was unbound: %v, want ErrUnknownAddress", err)
	}
}
