package natsfleet_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/natsfleet"
)

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestConnectServerDown(t *testing.T) {
	t.Parallel()
	url := fmt.Sprintf("nats://fleet:secret@127.0.0.1:%d", freePort(t))
	_, err := natsfleet.Connect(testCtx(t), url)
	if err == nil {
		t.Fatal("Connect to a port nobody serves succeeded")
	}
	if !strings.Contains(err.Error(), "127.0.0.1:") || !strings.Contains(err.Error(), "no NATS server answers") {
		t.Errorf("err = %q, want it to name the URL and say nobody answers", err)
	}
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("err = %q shows the password", err)
	}
}

func TestConnectWrongCredentials(t *testing.T) {
	t.Parallel()
	_, err := natsfleet.Connect(testCtx(t), srv.ClientURL(), natsfleet.UserPassword("intruder", "guess"))
	if err == nil {
		t.Fatal("Connect with wrong credentials succeeded")
	}
	if !strings.Contains(err.Error(), "refused the credentials") || !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("err = %q, want one saying the credentials were refused", err)
	}
	if strings.Contains(err.Error(), "guess") {
		t.Errorf("err = %q shows the password", err)
	}
	if _, err := natsfleet.Connect(testCtx(t), srv.ClientURL(), natsfleet.UserPassword("a", "b"), natsfleet.Token("c")); err == nil {
		t.Error("two kinds of credentials accepted")
	}
}

func TestPayloadOverMaxPayload(t *testing.T) {
	t.Parallel()
	s, err := natsfleet.StartServer(natsfleet.ServerConfig{MaxPayload: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := testCtx(t)
	pair := func() (*natsfleet.Transport, *natsfleet.Transport) {
		var trs [2]*natsfleet.Transport
		for i := range trs {
			nc, err := s.Connect(ctx, natsfleet.Logger(quiet))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(nc.Close)
			tr, err := natsfleet.NewTransport(nc, natsfleet.TransportConfig{Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(tr.Close)
			trs[i] = tr
		}
		return trs[0], trs[1]
	}
	ct, st := pair()
	caller := newBus(t, bus.Options{}, ct)
	server := newBus(t, bus.Options{}, st)
	ep, err := server.Register(bus.Service("big"))
	if err != nil {
		t.Fatal(err)
	}
	bus.Handle(ep, "echo", func(_ context.Context, p []byte) ([]byte, error) { return p, nil })
	bus.Handle(ep, "grow", func(_ context.Context, n int) ([]byte, error) { return make([]byte, n), nil })

	_, err = bus.Request[[]byte, []byte](ctx, caller, bus.Service("big"), "echo", make([]byte, 8000))
	var pe *natsfleet.PayloadError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "4096") {
		t.Errorf("request over max payload: %v, want an error naming the 4096-byte limit", err)
	}
	_, err = bus.Request[int, []byte](ctx, caller, bus.Service("big"), "grow", 8000)
	if err == nil || !strings.Contains(err.Error(), "max payload of 4096 bytes") {
		t.Errorf("reply over max payload: %v, want an error naming the 4096-byte limit", err)
	}
	if got, err := bus.Request[[]byte, []byte](ctx, caller, bus.Service("big"), "echo", []byte("small")); err != nil || string(got) != "small" {
		t.Errorf("a small request after: %q, %v", got, err)
	}
}

// TestConnectionDropLosesNothingSilently: calls in flight when the server
// goes away each return an error (or their answer); after the server is
// back the connections rejoin and calls work again.
func TestConnectionDropLosesNothingSilently(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	cfg := natsfleet.ServerConfig{Port: port, User: "fleet", Password: "drop-test-password"}
	s1, err := natsfleet.StartServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	var trs [2]*natsfleet.Transport
	var ncs [2]*nats.Conn
	reconnected := make(chan struct{}, 2)
	for i := range trs {
		nc, err := s1.Connect(ctx, natsfleet.Logger(quiet))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		ncs[i] = nc
		nc.SetReconnectHandler(func(*nats.Conn) { reconnected <- struct{}{} })
		tr, err := natsfleet.NewTransport(nc, natsfleet.TransportConfig{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(tr.Close)
		trs[i] = tr
	}
	caller := newBus(t, bus.Options{}, trs[0])
	server := newBus(t, bus.Options{}, trs[1])
	ep, err := server.Register(bus.Service("s"), bus.Concurrency(8))
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{}, 8)
	release := make(chan struct{})
	bus.Handle(ep, "block", func(ctx context.Context, n int) (int, error) {
		started <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return n, nil
	})
	bus.Handle(ep, "echo", func(_ context.Context, n int) (int, error) { return n, nil })

	const inFlight = 5
	var wg sync.WaitGroup
	results := make(chan error, inFlight)
	for i := range inFlight {
		wg.Go(func() {
			_, err := bus.Request[int, int](ctx, caller, bus.Service("s"), "block", i)
			results <- err
		})
	}
	for range inFlight {
		<-started
	}
	s1.Close()
	wg.Wait()
	close(results)
	for err := range results {
		if err != nil && !errors.Is(err, natsfleet.ErrConnectionLost) {
			t.Errorf("in-flight call: %v, want its answer or ErrConnectionLost", err)
		}
		if errors.Is(err, bus.ErrTimeout) {
			t.Errorf("an in-flight call waited for its deadline: %v", err)
		}
	}
	close(release)

	s2, err := natsfleet.StartServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	// The connections rejoin by themselves, with their subscriptions.
	for range trs {
		select {
		case <-reconnected:
		case <-ctx.Done():
			t.Fatal("the connections did not rejoin the restarted server")
		}
	}
	if err := ncs[1].Flush(); err != nil { // the server has the endpoint's subscription again
		t.Fatal(err)
	}
	if n, err := bus.Request[int, int](ctx, caller, bus.Service("s"), "echo", 7); err != nil || n != 7 {
		t.Errorf("a call after the server came back: %d, %v", n, err)
	}
}
