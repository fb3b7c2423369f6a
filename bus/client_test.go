package bus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/gofleet/fleet/bus"
)

// TestClient: what Bus.Client returns makes every call the Bus makes, is
// not the *Bus, and fails with ErrClosed once the bus is closed.
func TestClient(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	c := b.Client()
	if _, ok := c.(*bus.Bus); ok {
		t.Fatal("the Client is the *Bus: its holder could close the bus")
	}
	if _, ok := c.(interface{ Close() }); ok {
		t.Fatal("the Client has a Close method")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	ep := register(t, b, bus.Service("echo"))
	bus.Handle(ep, "echo", echo)
	sent := make(chan string, 1)
	bus.Handle(ep, "note", func(_ context.Context, s string) (struct{}, error) { sent <- s; return struct{}{}, nil })
	published := make(chan any, 1)
	ep.Subscribe("news", func(_ context.Context, ev bus.Event) { published <- ev.Payload })
	watched := make(chan any, 1)
	unsubscribe := bus.Subscribe(c, "news", func(_ context.Context, ev bus.Event) { watched <- ev.Payload })
	defer unsubscribe()

	if got, err := bus.Request[string, string](ctx, c, bus.Service("echo"), "echo", "hi"); err != nil || got != "hi" {
		t.Errorf("Request = %q, %v; want hi", got, err)
	}
	if err := bus.Send(ctx, c, bus.Service("echo"), "note", "sent"); err != nil {
		t.Errorf("Send: %v", err)
	} else if got := <-sent; got != "sent" {
		t.Errorf("Send delivered %q", got)
	}
	replies, err := bus.Gather[string, string](ctx, c, bus.AllServices, "echo", "all")
	if err != nil || len(replies) != 1 || replies[0].Value != "all" || replies[0].Err != nil {
		t.Errorf("Gather = %+v, %v; want one reply all", replies, err)
	}
	if err := bus.Publish(ctx, c, bus.Service("echo"), "news", "n"); err != nil {
		t.Errorf("Publish: %v", err)
	} else if got, seen := <-published, <-watched; got != "n" || seen != "n" {
		t.Errorf("Publish delivered %v to the endpoint and %v to the bus-wide subscriber", got, seen)
	}

	b.Close()
	if _, err := bus.Request[string, string](ctx, c, bus.Service("echo"), "echo", "late"); !errors.Is(err, bus.ErrClosed) {
		t.Errorf("Request after Close = %v, want ErrClosed", err)
	}
}
