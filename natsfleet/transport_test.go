package natsfleet_test

import (
	"context"
	"testing"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/bus/bustest"
)

// TestBusConformance runs the bus's conformance suite on two Buses, each
// with its own Transport and connection, through the embedded server.
func TestBusConformance(t *testing.T) {
	bustest.Run(t, func(t *testing.T, opts bus.Options) bustest.Pair {
		prefix := newPrefix()
		ct, st := newTransport(t, prefix), newTransport(t, prefix)
		return bustest.Pair{
			Caller: newBus(t, opts, ct),
			Server: newBus(t, opts, st),
			Await:  func(ctx context.Context, a bus.Address) error { return ct.WaitMember(ctx, a) },
		}
	})
}
