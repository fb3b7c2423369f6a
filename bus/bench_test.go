package bus_test

import (
	"context"
	"testing"
	"time"

	"github.com/gofleet/fleet/bus"
)

// benchBus returns a bus with an echo service of 100-byte payloads.
func benchBus(b *testing.B, opts bus.Options, epOpts ...bus.Option) (*bus.Bus, bus.Address) {
	b.Helper()
	bs := newBus(b, opts)
	addr := bus.Service("echo")
	ep := register(b, bs, addr, epOpts...)
	bus.Handle(ep, "echo", func(ctx context.Context, p []byte) ([]byte, error) { return p, nil })
	return bs, addr
}

func deadlineCtx(b *testing.B) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	b.Cleanup(cancel)
	return ctx
}

func BenchmarkRequest(b *testing.B) {
	payload := make([]byte, 100)
	for _, bc := range []struct {
		name   string
		strict bool
		ctx    func(*testing.B) context.Context
	}{
		{"deadline", false, deadlineCtx},
		{"no-deadline", false, func(*testing.B) context.Context { return context.Background() }},
		{"strict", true, deadlineCtx},
	} {
		b.Run(bc.name, func(b *testing.B) {
			bs, addr := benchBus(b, bus.Options{Strict: bc.strict})
			ctx := bc.ctx(b)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bus.Request[[]byte, []byte](ctx, bs, addr, "echo", payload); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkRequestParallel(b *testing.B) {
	payload := make([]byte, 100)
	for _, bc := range []struct {
		name        string
		concurrency int
	}{
		{"concurrency=1", 1},
		{"concurrency=2", 2},
	} {
		b.Run(bc.name, func(b *testing.B) {
			bs, addr := benchBus(b, bus.Options{}, bus.Concurrency(bc.concurrency))
			ctx := deadlineCtx(b)
			b.SetParallelism(32) // 64 requesters on 2 CPUs
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := bus.Request[[]byte, []byte](ctx, bs, addr, "echo", payload); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func BenchmarkSend(b *testing.B) {
	payload := make([]byte, 100)
	bs, addr := benchBus(b, bus.Options{})
	ctx := deadlineCtx(b)
	b.ReportAllocs()
	for b.Loop() {
		if err := bus.Send(ctx, bs, addr, "echo", payload); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGather(b *testing.B) {
	bs := newBus(b, bus.Options{})
	for id := range 8 {
		ep := register(b, bs, bus.Cluster(id))
		bus.Handle(ep, "guilds", func(ctx context.Context, _ struct{}) (int, error) { return id, nil })
	}
	ctx := deadlineCtx(b)
	b.ReportAllocs()
	for b.Loop() {
		got, err := bus.Gather[struct{}, int](ctx, bs, bus.AllClusters, "guilds", struct{}{})
		if err != nil || len(got) != 8 {
			b.Fatal(got, err)
		}
	}
}

func BenchmarkPublish(b *testing.B) {
	bs := newBus(b, bus.Options{})
	for id := range 8 {
		ep := register(b, bs, bus.Cluster(id))
		ep.Subscribe("tick", func(ctx context.Context, ev bus.Event) {})
	}
	ctx := deadlineCtx(b)
	b.ReportAllocs()
	for b.Loop() {
		if err := bus.Publish(ctx, bs, bus.AllClusters, "tick", 1); err != nil {
			b.Fatal(err)
		}
	}
}

func TestRequestAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under -race")
	}
	b := newBus(t, bus.Options{})
	c0 := register(t, b, bus.Cluster(0))
	bus.Handle(c0, "echo", func(ctx context.Context, p []byte) ([]byte, error) { return p, nil })
	ep := register(t, b, bus.Service("echo"))
	bus.Handle(ep, "ptr", func(ctx context.Context, p *point) (*point, error) { return p, nil })
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	payload := make([]byte, 100)
	n := testing.AllocsPerRun(1000, func() {
		if _, err := bus.Request[[]byte, []byte](ctx, b, bus.Cluster(0), "echo", payload); err != nil {
			t.Fatal(err)
		}
	})
	// Boxing the payload and the reply; Cluster(id) itself does not allocate for small ids.
	if n > 2 {
		t.Errorf("Request of a []byte: %.1f allocations, want at most 2 (budget 4)", n)
	}
	p := &point{1, 2}
	addr := bus.Service("echo") // building an address allocates
	n = testing.AllocsPerRun(1000, func() {
		if _, err := bus.Request[*point, *point](ctx, b, addr, "ptr", p); err != nil {
			t.Fatal(err)
		}
	})
	if n > 0 {
		t.Errorf("Request of a pointer: %.1f allocations, want 0", n)
	}
}
