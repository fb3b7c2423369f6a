package natsfleet_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	devents "github.com/disgoorg/disgo/events"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/natsfleet"
	fleetrt "github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/services"
	"github.com/gofleet/fleet/shardgroup"
)

// A behaviour of the fleet is tested in both modes with inModes: the
// same program, its clusters in this process or each in a child process.

// fleetMode is how a test runs its fleet.
type fleetMode struct {
	name      string
	processes bool // each cluster in a child process
}

var fleetModes = []fleetMode{{"one process", false}, {"processes", true}}

// inModes runs fn as a subtest in each mode.
func inModes(t *testing.T, fn func(t *testing.T, m fleetMode)) {
	t.Helper()
	for _, m := range fleetModes {
		t.Run(m.name, func(t *testing.T) { fn(t, m) })
	}
}

func init() { childKinds["modefleet"] = modeChild }

const modeArgsEnv = "NATSFLEET_TEST_MODE_ARGS"

// modeArgs is what the program needs, the same in the parent and the
// children.
type modeArgs struct {
	Token, GatewayURL, RESTURL string
	Interval                   time.Duration
	Clusters                   int
	Prefix                     string
}

// delivery is a MESSAGE_CREATE a cluster's listener saw.
type delivery struct{ Shard, Seq int }

// modeBot reports each MESSAGE_CREATE to the "deliveries" service,
// answers "pid", and writes the central store on "store".
type modeBot struct {
	b atomic.Value // busClient: its group's bus, from Setup
}

type busClient struct{ bus.Client }

func (mb *modeBot) Setup(_ context.Context, g *shardgroup.Group) error {
	b := g.Bus()
	mb.b.Store(busClient{b})
	g.Client().AddEventListeners(bot.NewListenerFunc(func(e *devents.MessageCreate) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = bus.Send(ctx, b, bus.Service("deliveries"), "seen", delivery{e.ShardID(), e.SequenceNumber()})
	}))
	return nil
}

type storeRequest struct {
	Key   string `json:"key"`
	Value int    `json:"value"`
}

func (mb *modeBot) Commands(h bus.Handlers) {
	bus.Handle(h, "pid", func(context.Context, struct{}) (int, error) { return os.Getpid(), nil })
	bus.Handle(h, "store", func(ctx context.Context, r storeRequest) (bool, error) {
		b, ok := mb.b.Load().(busClient)
		if !ok {
			return false, errors.New("store before Setup")
		}
		return true, services.StoreSet(ctx, b.Client, r.Key, r.Value)
	})
}

func modeConfig(m fleetMode, a modeArgs) fleetrt.Config {
	cfg := fleetrt.Config{
		Token: fleetrt.Token(a.Token), GatewayURL: a.GatewayURL, RESTURL: a.RESTURL, IdentifyInterval: a.Interval,
		Clusters: a.Clusters, ShutdownTimeout: 5 * time.Second, RestartBackoff: 10 * time.Millisecond,
		Logger: quiet, Bot: func(int) fleetrt.Bot { return &modeBot{} },
	}
	if m.processes {
		raw, _ := json.Marshal(a)
		cfg.Processes = natsfleet.Processes(natsfleet.ProcessConfig{
			Prefix: a.Prefix, Args: []string{"-test.run=^$"}, CheckpointInterval: 100 * time.Millisecond,
			StatsInterval: 50 * time.Millisecond,
			Env:           []string{childEnv + "=modefleet", childArgsEnv + "={}", modeArgsEnv + "=" + string(raw)},
		})
	}
	return cfg
}

// modeChild is the program run as a child.
func modeChild(childArgs) error {
	var a modeArgs
	if err := json.Unmarshal([]byte(os.Getenv(modeArgsEnv)), &a); err != nil {
		return err
	}
	rt, err := fleetrt.New(modeConfig(fleetMode{processes: true}, a))
	if err != nil {
		return err
	}
	return rt.Run(context.Background())
}

// modeDeliveries counts what the clusters' listeners saw.
type modeDeliveries struct {
	mu    sync.Mutex // guards count, n
	count map[delivery]int
	n     int
	ch    chan struct{}
}

// modeFleet is a ready fleet in mode m against s, with its modeDeliveries.
type modeFleet struct {
	rt   *fleetrt.Runtime
	seen *modeDeliveries
	ev   *events
}

func startModeFleet(t *testing.T, m fleetMode, s *discordtest.Server, clusters int) *modeFleet {
	t.Helper()
	rt, err := fleetrt.New(modeConfig(m, modeArgs{Token: s.Token(), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		Interval: s.IdentifyWindow(), Clusters: clusters, Prefix: procPrefix + "-mode" + newPrefix()}))
	if err != nil {
		t.Fatal(err)
	}
	f := &modeFleet{rt: rt, seen: &modeDeliveries{count: map[delivery]int{}, ch: make(chan struct{}, 1)},
		ev: &events{ch: make(chan struct{}, 1)}}
	rt.Subscribe(f.ev.add)
	ep, err := rt.Bus().Register(bus.Service("deliveries"), bus.Concurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	bus.Handle(ep, "seen", func(_ context.Context, d delivery) (struct{}, error) {
		f.seen.mu.Lock()
		f.seen.count[d]++
		f.seen.n++
		f.seen.mu.Unlock()
		select {
		case f.seen.ch <- struct{}{}:
		default:
		}
		return struct{}{}, nil
	})
	go rt.Run(context.Background())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := rt.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-rt.Done()
	})
	select {
	case <-rt.Ready():
	case <-rt.Done():
		t.Fatalf("Run returned before the fleet was ready: %v", rt.Err())
	case <-time.After(60 * time.Second):
		t.Fatal("the fleet was not ready within 60 s")
	}
	return f
}

// distinct waits until n distinct modeDeliveries were seen, failing with how
// many were lost, and returns how many were seen more than once.
func (d *modeDeliveries) distinct(t *testing.T, ctx context.Context, n int64) int {
	t.Helper()
	for {
		d.mu.Lock()
		got := len(d.count)
		d.mu.Unlock()
		if int64(got) >= n {
			break
		}
		select {
		case <-d.ch:
		case <-ctx.Done():
			t.Fatalf("%d distinct events delivered, want %d: %d lost", got, n, n-int64(got))
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.n - len(d.count)
}

func modeServer() *discordtest.Server {
	return discordtest.NewServer(discordtest.WithGuilds(16), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(10*time.Millisecond))
}

// A soft restart under load loses nothing, repeats nothing and spends no
// IDENTIFY, in either mode.
func TestModesSoftRestartUnderLoad(t *testing.T) {
	inModes(t, func(t *testing.T, m fleetMode) {
		ctx := testCtx(t)
		s := modeServer()
		defer s.Close()
		f := startModeFleet(t, m, s, 2)
		before := s.Stats().Identifies
		loaded := make(chan discordtest.LoadResult, 1)
		go func() {
			res, _ := s.Load(ctx, discordtest.Load{Events: 2000, Rate: 2000})
			loaded <- res
		}()
		if err := f.rt.SoftRestart(ctx, 1); err != nil {
			t.Fatal(err)
		}
		res := <-loaded
		if dups := f.seen.distinct(t, ctx, res.Dispatches); dups != 0 {
			t.Errorf("%d events delivered twice", dups)
		}
		if n := s.Stats().Identifies - before; n != 0 {
			t.Errorf("%d IDENTIFYs during the soft restart, want 0", n)
		}
	})
}

// IPC reaches a cluster's commands, the central store works from a
// cluster, and the stats snapshot shows where each cluster runs.
func TestModesIPCStoreAndStats(t *testing.T) {
	inModes(t, func(t *testing.T, m fleetMode) {
		ctx := testCtx(t)
		s := modeServer()
		defer s.Close()
		f := startModeFleet(t, m, s, 2)
		for _, c := range f.rt.Clusters() {
			pid, err := bus.Request[struct{}, int](ctx, f.rt.Bus(), bus.Cluster(c.ID), "pid", struct{}{})
			if err != nil {
				t.Fatal(err)
			}
			if m.processes {
				if c.Process == nil || c.Process.PID != pid || pid == os.Getpid() {
					t.Errorf("cluster %d answered from pid %d; Stats: %+v", c.ID, pid, c.Process)
				}
			} else if c.Process != nil || pid != os.Getpid() {
				t.Errorf("cluster %d in one process: pid %d, Process %+v", c.ID, pid, c.Process)
			}
			if _, err := bus.Request[storeRequest, bool](ctx, f.rt.Bus(), bus.Cluster(c.ID), "store",
				storeRequest{Key: "from-" + strconv.Itoa(c.ID), Value: 10 + c.ID}); err != nil {
				t.Fatal(err)
			}
			v, ok, err := services.StoreGet[int](ctx, f.rt.Bus(), "from-"+strconv.Itoa(c.ID))
			if err != nil || !ok || v != 10+c.ID {
				t.Errorf("store from cluster %d: %v, %v, %v", c.ID, v, ok, err)
			}
		}
		st := f.rt.Stats()
		if st.ShardsReady != 4 || len(st.Clusters) != 2 {
			t.Errorf("Stats: %d shards ready in %d clusters, want 4 in 2", st.ShardsReady, len(st.Clusters))
		}
	})
}
