package natsfleet_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/internal/multihost"
	"github.com/gofleet/fleet/natsfleet"
)

// srv is the embedded server the tests share; each test uses its own
// fleet prefix.
var srv *natsfleet.Server

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	if os.Getenv(multihost.HostEnv) != "" {
		if err := multihost.RunHostFromEnv(); err != nil {
			fmt.Fprintln(os.Stderr, "host:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	s, err := natsfleet.StartServer(natsfleet.ServerConfig{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv = s
	code := m.Run()
	srv.Close()
	// No test leaves a child process behind.
	if left := leftChildren(); len(left) > 0 {
		fmt.Fprintln(os.Stderr, "processes left behind:", left)
		code = 1
	}
	if pids, err := multihost.Children(); err != nil || len(pids) > 0 {
		fmt.Fprintf(os.Stderr, "child processes left behind: %v %v\n", pids, err)
		code = 1
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

var prefixes atomic.Int64

func newPrefix() string { return fmt.Sprintf("t%d", prefixes.Add(1)) }

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// connect returns a connection to srv closed when the test ends.
func connect(t testing.TB) *nats.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := srv.Connect(ctx, natsfleet.Logger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// newTransport returns a Transport on its own connection, closed when the
// test ends (after the buses that use it).
func newTransport(t testing.TB, prefix string) *natsfleet.Transport {
	t.Helper()
	return newTransportWith(t, natsfleet.TransportConfig{Prefix: prefix})
}

// newTransportWith is newTransport with cfg (its Logger quiet).
func newTransportWith(t testing.TB, cfg natsfleet.TransportConfig) *natsfleet.Transport {
	t.Helper()
	cfg.Logger = quiet
	tr, err := natsfleet.NewTransport(connect(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.Close)
	return tr
}

var quiet = slog.New(slog.DiscardHandler)

func newBus(t testing.TB, opts bus.Options, tr bus.Transport) *bus.Bus {
	opts.Transport = tr
	opts.Logger = quiet
	b := bus.New(opts)
	t.Cleanup(b.Close)
	return b
}
