package bus_test

import (
	"testing"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/bus/bustest"
)

// TestConformance runs the transport conformance suite on the in-memory
// transport: caller and endpoints on one Bus.
func TestConformance(t *testing.T) {
	t.Parallel()
	bustest.Run(t, func(t *testing.T, opts bus.Options) bustest.Pair {
		b := newBus(t, opts)
		return bustest.Pair{Caller: b, Server: b}
	})
}
