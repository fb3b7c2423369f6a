package bus_test

import (
	"context"
	"testing"
	"time"

	"github.com/gofleet/fleet/bus"
)

// TestHandlers wants an endpoint's Handlers view to register handlers and
// subscribe as the endpoint does, without a way to close the endpoint.
func TestHandlers(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	ep := register(t, b, bus.Service("echo"))
	h := ep.Handlers()
	if _, ok := h.(*bus.Endpoint); ok {
		t.Fatal("the Handlers is the *Endpoint: its holder could close it")
	}
	if _, ok := h.(interface{ Close(context.Context) error }); ok {
		t.Fatal("the Handlers has a Close method")
	}
	if h.Address() != bus.Service("echo") {
		t.Fatalf("Address = %s, want service:echo", h.Address())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bus.Handle(h, "echo", echo)
	published := make(chan any, 1)
	unsubscribe := h.Subscribe("news", func(_ context.Context, ev bus.Event) { published <- ev.Payload })
	defer unsubscribe()
	if got, err := bus.Request[string, string](ctx, b, bus.Service("echo"), "echo", "hi"); err != nil || got != "hi" {
		t.Errorf("Request through a handler registered on the view = %q, %v; want hi", got, err)
	}
	if err := bus.Publish(ctx, b, bus.Service("echo"), "news", "extra"); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	select {
	case got := <-published:
		if got != "extra" {
			t.Errorf("subscriber got %v, want extra", got)
		}
	case <-ctx.Done():
		t.Fatal("the view's subscriber heard nothing within 10s")
	}
}
