package natsfleet_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	devents "github.com/disgoorg/disgo/events"
	"github.com/disgoorg/snowflake/v2"

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
type delivery struct {
	Shard, Seq int
	Content    string
}

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
		_ = bus.Send(ctx, b, bus.Service("deliveries"), "seen", delivery{e.ShardID(), e.SequenceNumber(), e.Message.Content})
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

// A reshard under load moves the fleet to a new shard count without
// losing an event and within Discord's identify limit, in either mode.
// In one process the cut-over delivers each event once; in process mode
// the events of the overlap (new children delivering, old ones not yet
// stopped) are delivered twice, and reported. Stats show the new plan;
// in process mode, on new children, and the session store keeps only
// the new count's sessions.
func TestModesReshard(t *testing.T) {
	inModes(t, func(t *testing.T, m fleetMode) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		s := modeServer()
		defer s.Close()
		f := startModeFleet(t, m, s, 2)
		before := map[int]bool{}
		for _, c := range f.rt.Stats().Clusters {
			if c.Process != nil {
				before[c.Process.PID] = true
			}
		}
		st := newStreamer(s, 300)
		go st.run()
		st.waitSent(t, ctx, 100) // the load runs before the reshard begins
		err := f.rt.Reshard(ctx, fleetrt.ReshardOptions{Shards: 8, Clusters: 2})
		n := st.stopAfter(200) // and goes on after the switch
		if err != nil {
			t.Fatal(err)
		}
		dups := f.seen.contents(t, ctx, "r", n)
		if m.processes {
			t.Logf("reshard 4 -> 8 in process mode: %d messages, 0 lost, %d delivered twice at the switch", n, dups)
		} else if dups != 0 {
			t.Errorf("%d of %d messages delivered twice", dups, n)
		}
		if v := s.Stats().Violations; len(v) != 0 {
			t.Errorf("violations: %v", v)
		}
		// The new clusters' caches hold their guilds: they took them in
		// while they did not deliver.
		for i := range s.Guilds() {
			if g, err := f.rt.FetchGuild(ctx, snowflake.ID(s.GuildID(i))); err != nil || g == nil {
				t.Fatalf("guild %d after the reshard: %v, %v; want it from its cluster's cache", i, g, err)
			}
		}
		stats := f.rt.Stats()
		if stats.Shards != 8 || stats.ShardsReady != 8 || len(stats.Clusters) != 2 {
			t.Errorf("Stats after the reshard: %d shards, %d ready, %d clusters; want 8, 8, 2", stats.Shards, stats.ShardsReady, len(stats.Clusters))
		}
		if !m.processes {
			return
		}
		for _, c := range stats.Clusters {
			if c.Process == nil || before[c.Process.PID] {
				t.Errorf("cluster %d after the reshard in %+v, want a new child", c.ID, c.Process)
			}
		}
		pm := f.rt.Processes().(*natsfleet.ProcessMode)
		waitSessions(t, ctx, pm, 8)
	})
}

// waitSessions waits until the fleet's session store holds a session of
// the shard count total for each of its shards, and none other: the new
// children's checkpoints have replaced the old ones'.
func waitSessions(t *testing.T, ctx context.Context, pm *natsfleet.ProcessMode, total int) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond) // checkpoints raise no event: the store is polled
	defer tick.Stop()
	var recs []natsfleet.SessionRecord
	for {
		var err error
		recs, err = pm.Sessions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ok := len(recs) == total
		for _, r := range recs {
			ok = ok && r.ShardCount == total
		}
		if ok {
			return
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			got := make([]string, len(recs))
			for i, r := range recs {
				got[i] = fmt.Sprintf("%d/%d", r.ShardID, r.ShardCount)
			}
			t.Fatalf("stored sessions (shard/count) %v, want one per shard of %d", got, total)
		}
	}
}

// contents waits until every message with content prefix+"0" ..
// prefix+(n-1) was seen, failing with how many were lost, and returns how
// many deliveries of them were extra.
func (d *modeDeliveries) contents(t *testing.T, ctx context.Context, prefix string, n int) (dups int) {
	t.Helper()
	for {
		seen := map[string]int{}
		d.mu.Lock()
		for k, c := range d.count {
			if strings.HasPrefix(k.Content, prefix) {
				seen[k.Content] += c
			}
		}
		d.mu.Unlock()
		lost := 0
		dups = 0
		for i := range n {
			switch c := seen[prefix+strconv.Itoa(i)]; c {
			case 0:
				lost++
			default:
				dups += c - 1
			}
		}
		if lost == 0 {
			return dups
		}
		select {
		case <-d.ch:
		case <-ctx.Done():
			t.Fatalf("%d of %d messages never delivered", lost, n)
		}
	}
}

// streamer sends MESSAGE_CREATEs with the unique contents "r0", "r1", ...
// over a server's guilds at a steady rate.
type streamer struct {
	s     *discordtest.Server
	rate  int
	sent  atomic.Int64
	after atomic.Int64 // how many to send once halt closes
	halt  chan struct{}
	done  chan struct{}
	tick  chan struct{} // a send happened
}

func newStreamer(s *discordtest.Server, rate int) *streamer {
	return &streamer{s: s, rate: rate, halt: make(chan struct{}), done: make(chan struct{}), tick: make(chan struct{}, 1)}
}

// run sends until halt closes, then after more, and returns.
func (st *streamer) run() {
	defer close(st.done)
	start := time.Now()
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	last := int64(-1)
	for {
		select {
		case <-st.halt:
			if last < 0 {
				last = st.sent.Load() + st.after.Load()
			}
		default:
		}
		due := int64(time.Since(start).Seconds() * float64(st.rate))
		for next := st.sent.Load(); next < due && (last < 0 || next < last); next = st.sent.Load() {
			g := st.s.GuildID(int(next) % st.s.Guilds())
			_, _ = st.s.Dispatch(g, "MESSAGE_CREATE", st.s.MessageCreate(g, "r"+strconv.FormatInt(next, 10), int(next)))
			st.sent.Add(1)
		}
		select {
		case st.tick <- struct{}{}:
		default:
		}
		if last >= 0 && st.sent.Load() >= last {
			return
		}
		<-t.C
	}
}

// waitSent waits until n messages were sent.
func (st *streamer) waitSent(t *testing.T, ctx context.Context, n int64) {
	t.Helper()
	for st.sent.Load() < n {
		select {
		case <-st.tick:
		case <-ctx.Done():
			t.Fatalf("%d messages sent, want %d", st.sent.Load(), n)
		}
	}
}

// stopAfter makes run send after more messages and stop; it returns how
// many were sent in all.
func (st *streamer) stopAfter(after int) int {
	st.after.Store(int64(after))
	close(st.halt)
	<-st.done
	return int(st.sent.Load())
}
