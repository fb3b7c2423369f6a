package natsfleet_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/bus/bustest"
	"github.com/gofleet/fleet/natsfleet"
)

// TestBusConformance runs the bus's conformance suite on two Buses, each
// with its own Transport and connection, through the embedded server: the
// caller's over TCP, the server's through memory, as a
// process that embeds the server connects.
func TestBusConformance(t *testing.T) {
	bustest.Run(t, func(t *testing.T, opts bus.Options) bustest.Pair {
		prefix := newPrefix()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		transport := func(nc *nats.Conn, err error) *natsfleet.Transport {
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(nc.Close)
			tr, err := natsfleet.NewTransport(nc, natsfleet.TransportConfig{Prefix: prefix, Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(tr.Close)
			return tr
		}
		ct := transport(srv.Connect(ctx, natsfleet.Logger(quiet)))
		st := transport(srv.ConnectInProcess(ctx, natsfleet.Logger(quiet)))
		return bustest.Pair{
			Caller: newBus(t, opts, ct),
			Server: newBus(t, opts, st),
			Await:  func(ctx context.Context, a bus.Address) error { return ct.WaitMember(ctx, a) },
		}
	})
}
