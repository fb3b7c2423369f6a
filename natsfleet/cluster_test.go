package natsfleet_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/internal/multihost"
	"github.com/gofleet/fleet/natsfleet"
)

func TestStartClusterBadInput(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		n    int
		cfg  natsfleet.ServerConfig
		want string
	}{
		{"no nodes", 0, natsfleet.ServerConfig{}, "at least 1"},
		{"per-node port", 3, natsfleet.ServerConfig{Port: 4222}, "per node"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := natsfleet.StartCluster(tc.n, tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("StartCluster: %v, want an error saying %q", err, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name string
		cfg  natsfleet.ServerConfig
		want string
	}{
		{"routes without cluster", natsfleet.ServerConfig{Routes: []string{"127.0.0.1:1"}}, "without Cluster"},
		{"cluster without credentials", natsfleet.ServerConfig{Cluster: "c"}, "User and Password"},
		{"bad route", natsfleet.ServerConfig{Cluster: "c", User: "u", Password: "p", Routes: []string{"nowhere"}}, "host:port"},
		{"cluster without routes", natsfleet.ServerConfig{Cluster: "c", User: "u", Password: "p"}, "without Routes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := natsfleet.StartServer(tc.cfg)
			if err == nil {
				s.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("StartServer: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// TestClusterSurvivesNodeLoss: three nodes; a client connected to one of
// them serves a bus address and writes to the store; that node is
// killed. The client moves to another node with its subscriptions, the
// store's bucket (kept on three nodes) still holds every write, and each
// call made across the loss returned its answer or an error: none was
// lost silently.
func TestClusterSurvivesNodeLoss(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("a NATS cluster in a process of its own: not in -short")
	}
	ctx := testCtx(t)
	// The nodes run StartCluster in a process of their own (see
	// multihost.Nodes: nats-server's clustered JetStream stays out of the
	// process whose races fail this test).
	c, err := multihost.StartNodes(ctx, os.Args[0], []string{"-test.run=^$"}, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.Close(); err != nil {
			t.Errorf("stopping the NATS process: %v", err)
		}
	}()
	prefix := newPrefix()
	info := c.ConnectInfo()

	// The client names only node 0; it learns the others from it.
	reconnected := make(chan string, 1)
	nc, err := natsfleet.Connect(ctx, c.ClientURL(0), append(info.Options(), natsfleet.Logger(quiet),
		natsfleet.NATSOptions(nats.ReconnectHandler(func(nc *nats.Conn) { reconnected <- nc.ConnectedUrl() })))...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	other, err := natsfleet.Connect(ctx, c.ClientURL(1), append(info.Options(), natsfleet.Logger(quiet))...)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	// Connections to each node open the store's bucket at once, as hosts
	// starting together do: each gets it, none waits for its deadline.
	third, err := natsfleet.Connect(ctx, c.ClientURL(2), append(info.Options(), natsfleet.Logger(quiet))...)
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	var stores [3]*natsfleet.KVStore
	var opened sync.WaitGroup
	for i, conn := range []*nats.Conn{nc, other, third} {
		opened.Go(func() {
			octx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			s, err := natsfleet.NewKVStore(octx, conn, prefix)
			if err != nil {
				t.Errorf("opening the store from node %d while the others do: %v", i, err)
			}
			stores[i] = s
		})
	}
	opened.Wait()
	if t.Failed() {
		t.FailNow()
	}
	store := stores[0]
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, prefix+"_store")
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r := st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Replicas; r != 3 {
		t.Fatalf("the store's bucket has %d replicas, want 3 on a three-node cluster", r)
	}

	newTr := func(nc *nats.Conn) *natsfleet.Transport {
		tr, err := natsfleet.NewTransport(nc, natsfleet.TransportConfig{Prefix: prefix, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(tr.Close)
		return tr
	}
	server := newBus(t, bus.Options{}, newTr(nc))
	caller := newBus(t, bus.Options{}, newTr(other))
	ep, err := server.Register(bus.Service("s"))
	if err != nil {
		t.Fatal(err)
	}
	bus.Handle(ep, "echo", func(_ context.Context, n int) (int, error) { return n, nil })
	// The subscription reaches the other nodes over the routes a moment
	// after this node has it.
	for {
		n, err := bus.Request[int, int](ctx, caller, bus.Service("s"), "echo", 1)
		if errors.Is(err, bus.ErrUnknownAddress) && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		if err != nil || n != 1 {
			t.Fatalf("echo before the loss: %d, %v", n, err)
		}
		break
	}

	// Increments run across the loss; each must return within its own
	// deadline, and the counter must hold every one that succeeded.
	var ok, failed atomic.Int64
	progress := make(chan struct{}, 1) // a signal after each success
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := store.Increment(cctx, "count", 1)
				cancel()
				switch {
				case err == nil:
					ok.Add(1)
					select {
					case progress <- struct{}{}:
					default:
					}
				case errors.Is(err, context.Canceled):
					t.Errorf("increment: %v", err)
					return
				default:
					failed.Add(1)
				}
			}
		})
	}
	waitOK := func(n int64, what string) {
		for ok.Load() < n {
			select {
			case <-progress:
			case <-ctx.Done():
				t.Fatalf("%s (%d ok, %d failed)", what, ok.Load(), failed.Load())
			}
		}
	}
	waitOK(20, "no increments before the loss")
	killed := time.Now()
	if err := c.CloseNode(ctx, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case url := <-reconnected:
		if url == c.ClientURL(0) {
			t.Errorf("reconnected to the node that was killed (%s)", url)
		}
	case <-ctx.Done():
		t.Fatal("the client did not reconnect to another node")
	}
	waitOK(ok.Load()+1, "increments did not resume after the reconnect")
	t.Logf("the store answered again %v after the node's loss", time.Since(killed).Round(time.Millisecond))
	waitOK(ok.Load()+20, "increments did not keep going after the reconnect")
	close(stop)
	wg.Wait()
	attempts := ok.Load() + failed.Load()
	got, err := store.Increment(ctx, "count", 0)
	if err != nil {
		t.Fatal(err)
	}
	// A failed call may or may not have been applied; a successful one was.
	if got < ok.Load() || got > attempts {
		t.Errorf("counter = %d after %d successful and %d failed increments: a write was lost or invented", got, ok.Load(), failed.Load())
	}
	t.Logf("%d increments succeeded, %d failed across the node's loss; counter %d", ok.Load(), failed.Load(), got)

	// The endpoint's subscription moved with the connection.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, err := bus.Request[int, int](ctx, caller, bus.Service("s"), "echo", 2); err != nil || n != 2 {
		t.Errorf("echo after the loss: %d, %v", n, err)
	}
}
