package natsfleet_test

import (
	"context"
	"testing"

	"github.com/gofleet/fleet/bus"
)

var parallelism = 32

// BenchmarkRequestParallel measures request/reply between two Buses
// through the embedded server, many requests in flight.
func BenchmarkRequestParallel(b *testing.B) {
	prefix := newPrefix()
	ct, st := newTransport(b, prefix), newTransport(b, prefix)
	caller := newBus(b, bus.Options{}, ct)
	server := newBus(b, bus.Options{}, st)
	ep, err := server.Register(bus.Service("echo"))
	if err != nil {
		b.Fatal(err)
	}
	bus.Handle(ep, "echo", func(_ context.Context, p []byte) ([]byte, error) { return p, nil })
	ctx := context.Background()
	if err := ct.WaitMember(ctx, bus.Service("echo")); err != nil {
		b.Fatal(err)
	}
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
	prefix := newPrefix()
	ct, st := newTransport(b, prefix), newTransport(b, prefix)
	caller := newBus(b, bus.Options{}, ct)
	server := newBus(b, bus.Options{}, st)
	ep, err := server.Register(bus.Service("echo"))
	if err != nil {
		b.Fatal(err)
	}
	bus.Handle(ep, "echo", func(_ context.Context, p []byte) ([]byte, error) { return p, nil })
	ctx := context.Background()
	if err := ct.WaitMember(ctx, bus.Service("echo")); err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 100)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := bus.Request[[]byte, []byte](ctx, caller, bus.Service("echo"), "echo", payload); err != nil {
			b.Fatal(err)
		}
	}
}
