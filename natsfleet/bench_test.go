package natsfleet_test

import (
	"context"
	"testing"

	"github.com/gofleet/fleet/bus"
)

var parallelism = 32

// echoPair returns a Bus whose calls reach an "echo" service on another
// Bus through the embedded server.
func echoPair(b *testing.B) *bus.Bus {
	b.Helper()
	prefix := newPrefix()
	ct, st := newTransport(b, prefix), newTransport(b, prefix)
	caller := newBus(b, bus.Options{}, ct)
	server := newBus(b, bus.Options{}, st)
	ep, err := server.Register(bus.Service("echo"))
	if err != nil {
		b.Fatal(err)
	}
	bus.Handle(ep, "echo", func(_ context.Context, p []byte) ([]byte, error) { return p, nil })
	if err := ct.WaitMember(context.Background(), bus.Service("echo")); err != nil {
		b.Fatal(err)
	}
	return caller
}

// BenchmarkRequestParallel measures request/reply between two Buses
// through the embedded server, many requests in flight.
func BenchmarkRequestParallel(b *testing.B) {
	caller := echoPair(b)
	ctx := context.Background()
	payload := make([]byte, 100)
	b.ReportAllocs()
	b.SetParallelism(parallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := bus.Request[[]byte, []byte](ctx, caller, bus.Service("echo"), "echo", payload); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkRequestSequential measures request/reply between two Buses
// through the embedded server, one request at a time.
func BenchmarkRequestSequential(b *testing.B) {
	caller := echoPair(b)
	ctx := context.Background()
	payload := make([]byte, 100)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := bus.Request[[]byte, []byte](ctx, caller, bus.Service("echo"), "echo", payload); err != nil {
			b.Fatal(err)
		}
	}
}
