package natsfleet_test

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/natsfleet"
)

// Two Buses, as two processes would have, joined through an embedded
// NATS server: one serves a service, the other calls it.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	quiet := slog.New(slog.DiscardHandler)
	s, err := natsfleet.StartServer(natsfleet.ServerConfig{})
	if err != nil {
		panic(err)
	}
	defer s.Close()

	join := func() (*bus.Bus, *natsfleet.Transport, func()) {
		nc, err := s.Connect(ctx, natsfleet.Logger(quiet))
		if err != nil {
			panic(err)
		}
		tr, err := natsfleet.NewTransport(nc, natsfleet.TransportConfig{Prefix: "example", Logger: quiet})
		if err != nil {
			panic(err)
		}
		b := bus.New(bus.Options{Transport: tr, Logger: quiet})
		return b, tr, func() { b.Close(); tr.Close(); nc.Close() }
	}
	server, _, closeServer := join()
	defer closeServer()
	caller, callerTr, closeCaller := join()
	defer closeCaller()

	ep, err := server.Register(bus.Service("greeter"))
	if err != nil {
		panic(err)
	}
	bus.Handle(ep, "greet", func(_ context.Context, name string) (string, error) { return "hello, " + name, nil })
	if err := callerTr.WaitMember(ctx, bus.Service("greeter")); err != nil {
		panic(err)
	}
	got, err := bus.Request[string, string](ctx, caller, bus.Service("greeter"), "greet", "fleet")
	fmt.Println(got, err)
	// Output: hello, fleet <nil>
}
