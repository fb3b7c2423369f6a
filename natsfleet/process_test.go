package natsfleet_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/natsfleet"
)

func init() { childKinds["bus"] = busChild }

// busChild serves cluster/1 and service/calc on a Bus over NATS until its
// stdin closes.
func busChild(a childArgs) error {
	c, err := childConnect(a)
	if err != nil {
		return err
	}
	defer c.Close()
	tr, err := natsfleet.NewTransport(c.Conn, natsfleet.TransportConfig{Prefix: a.Prefix, Logger: quiet})
	if err != nil {
		return err
	}
	defer tr.Close()
	b := bus.New(bus.Options{Transport: tr, Logger: quiet})
	defer b.Close()
	cl, err := b.Register(bus.Cluster(1))
	if err != nil {
		return err
	}
	bus.Handle(cl, "id", func(context.Context, struct{}) (int, error) { return 1, nil })
	calc, err := b.Register(bus.Service("calc"), bus.Concurrency(4))
	if err != nil {
		return err
	}
	bus.Handle(calc, "double", func(_ context.Context, n int) (int, error) { return 2 * n, nil })
	bus.Handle(calc, "panic", func(context.Context, int) (int, error) { panic("child panics") })
	bus.Handle(calc, "closed", func(context.Context, int) (int, error) {
		return 0, fmt.Errorf("child says: %w", bus.ErrClosed)
	})
	bus.Handle(calc, "deadline", func(ctx context.Context, _ int) (time.Duration, error) {
		d, ok := ctx.Deadline()
		if !ok {
			return -1, nil
		}
		return time.Until(d), nil
	})
	fmt.Println("ready")
	waitStdin()
	return nil
}

// TestBusAcrossProcesses calls endpoints of a Bus in another OS process.
func TestBusAcrossProcesses(t *testing.T) {
	t.Parallel()
	prefix := newPrefix()
	startChild(t, "bus", childArgs{NATS: srv.ConnectInfo(), Prefix: prefix})
	tr := newTransport(t, prefix)
	b := newBus(t, bus.Options{}, tr)
	local, err := b.Register(bus.Cluster(0))
	if err != nil {
		t.Fatal(err)
	}
	bus.Handle(local, "id", func(context.Context, struct{}) (int, error) { return 0, nil })
	ctx := testCtx(t)
	if err := tr.WaitMember(ctx, bus.Service("calc")); err != nil {
		t.Fatal(err)
	}
	if err := tr.WaitMember(ctx, bus.Cluster(1)); err != nil {
		t.Fatal(err)
	}

	if n, err := bus.Request[int, int](ctx, b, bus.Service("calc"), "double", 21); err != nil || n != 42 {
		t.Errorf("double: %d, %v; want 42", n, err)
	}
	replies, err := bus.Gather[struct{}, int](ctx, b, bus.AllClusters, "id", struct{}{})
	if err != nil || len(replies) != 2 || replies[0].Value != 0 || replies[1].Value != 1 || replies[1].Err != nil {
		t.Errorf("Gather over both processes: %+v, %v", replies, err)
	}
	_, err = bus.Request[int, int](ctx, b, bus.Service("calc"), "panic", 0)
	if !errors.Is(err, bus.ErrHandlerPanic) || !strings.Contains(err.Error(), "child panics") {
		t.Errorf("panic: %v, want ErrHandlerPanic with the value", err)
	}
	_, err = bus.Request[int, int](ctx, b, bus.Service("calc"), "closed", 0)
	if !errors.Is(err, bus.ErrClosed) || !strings.Contains(err.Error(), "child says") {
		t.Errorf("sentinel: %v, want one matching bus.ErrClosed", err)
	}
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	left, err := bus.Request[int, time.Duration](dctx, b, bus.Service("calc"), "deadline", 0)
	if err != nil || left <= 0 || left > 20*time.Second {
		t.Errorf("the child's handler had %v left (%v), want the caller's deadline", left, err)
	}
	if _, err := b.Register(bus.Service("calc")); !errors.Is(err, bus.ErrAddressInUse) {
		t.Errorf("registering an address the child serves: %v, want ErrAddressInUse", err)
	}
}
