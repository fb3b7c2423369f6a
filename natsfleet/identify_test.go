package natsfleet_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/natsfleet"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

type natsfleetConn struct{ *nats.Conn }

func init() { childKinds["identify"] = identifyChild }

// identifyChild runs shards First..Last of Total against the simulator,
// identifying through the NATS queue; it says "fleet ready" once they are.
func identifyChild(a childArgs) error {
	c, err := childConnect(a)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := natsfleet.NewIdentifyQueue(ctx, c.Conn, natsfleet.IdentifyConfig{Prefix: a.Prefix, MaxConcurrency: a.MaxConcurrency, Interval: a.Interval})
	if err != nil {
		return err
	}
	rt, err := runtime.New(runtime.Config{
		Token: runtime.Token(a.Token), GatewayURL: a.GatewayURL, RESTURL: a.RESTURL,
		IdentifyInterval: a.Interval, IdentifyQueue: q, Clusters: 2,
		Bot: func(int) runtime.Bot {
			return runtime.BotFunc(func(context.Context, *shardgroup.Group) error { return nil })
		},
		TotalShards: a.Total, FirstShardID: a.First, LastShardID: a.Last,
		Logger: quiet,
	})
	if err != nil {
		return err
	}
	go rt.Run(context.Background())
	fmt.Println("ready")
	select {
	case <-rt.Ready():
		fmt.Println("fleet ready")
	case <-rt.Done():
		return rt.Err()
	case <-time.After(2 * time.Minute):
		fmt.Println("not ready in 2 minutes")
	}
	waitStdin()
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	if err := rt.Shutdown(sctx); err != nil {
		return err
	}
	<-rt.Done()
	return rt.Err()
}

// TestIdentifyQueueAcrossProcesses runs one fleet's shards in three
// processes that share the NATS identify queue: the simulator sees no
// IDENTIFY too early for its bucket.
func TestIdentifyQueueAcrossProcesses(t *testing.T) {
	const shards, mc, procs = 48, 4, 3
	interval := 40 * time.Millisecond
	s := identifySim(t, shards*2, shards, mc, interval)
	prefix := newPrefix()
	per := shards / procs
	children := make([]*testChild, procs)
	for p := range procs {
		children[p] = startChild(t, "identify", childArgs{
			NATS: srv.ConnectInfo(), Prefix: prefix, Token: s.Token(), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
			Total: shards, First: p * per, Last: (p+1)*per - 1, MaxConcurrency: mc, Interval: interval,
		})
	}
	for p, c := range children {
		if line, err := c.line(2 * time.Minute); err != nil || line != "fleet ready" {
			t.Fatalf("process %d: %q, %v; want fleet ready", p, line, err)
		}
	}
	for _, c := range children {
		c.stop()
	}
	checkIdentifies(t, s, shards)
}

// TestIdentifyQueueManyConnections runs one fleet as six runtimes in this
// process, each with its own connection and queue, as six processes
// would: the simulator sees no IDENTIFY too early for its bucket.
func TestIdentifyQueueManyConnections(t *testing.T) {
	t.Parallel()
	const shards, mc, procs = 48, 4, 6
	interval := 30 * time.Millisecond
	s := identifySim(t, shards*2, shards, mc, interval)
	prefix := newPrefix()
	ctx := testCtx(t)
	per := shards / procs
	ready := make(chan struct{}, procs)
	errc := make(chan error, procs)
	rts := make([]*runtime.Runtime, procs)
	for p := range procs {
		rt := queueRuntime(t, ctx, s, natsfleet.IdentifyConfig{Prefix: prefix, MaxConcurrency: mc, Interval: interval},
			shards, p*per, (p+1)*per-1)
		rt.Subscribe(func(e runtime.Event) {
			if e.Kind() == runtime.EventFleetReady {
				ready <- struct{}{}
			}
		})
		rts[p] = rt
	}
	for _, rt := range rts {
		go func() { errc <- rt.Run(context.Background()) }()
	}
	awaitFleets(t, ctx, s, ready, errc, procs)
	shutdownAll(t, ctx, rts, errc)
	checkIdentifies(t, s, shards)
}

// TestIdentifyQueueShutdownMidStart: three runtimes share the queue and
// one is shut down while its shards still wait for their reserved turns.
// Its Shutdown returns, and the other two get ready without waiting out
// the leases of the turns it gave up: its queue reports them done as it
// closes. The simulator sees no IDENTIFY too early for its bucket.
func TestIdentifyQueueShutdownMidStart(t *testing.T) {
	t.Parallel()
	const shards, mc, procs = 36, 3, 3
	interval := 30 * time.Millisecond
	s := identifySim(t, shards*2, shards, mc, interval)
	// A lease far beyond the test's deadline: a turn left to its lease
	// would fail the test.
	cfg := natsfleet.IdentifyConfig{Prefix: newPrefix(), MaxConcurrency: mc, Interval: interval, Lease: time.Hour}
	ctx := testCtx(t)
	per := shards / procs
	type run struct {
		rt    *runtime.Runtime
		ready chan struct{}
		shard chan struct{} // a shard of this runtime is READY
		errc  chan error
	}
	runs := make([]*run, procs)
	for p := range procs {
		rt := queueRuntime(t, ctx, s, cfg, shards, p*per, (p+1)*per-1)
		r := &run{rt: rt, ready: make(chan struct{}, 1), shard: make(chan struct{}, 1), errc: make(chan error, 1)}
		rt.Subscribe(func(e runtime.Event) {
			var c chan struct{}
			switch e.Kind() {
			case runtime.EventFleetReady:
				c = r.ready
			case runtime.EventShardReady:
				c = r.shard
			default:
				return
			}
			select {
			case c <- struct{}{}:
			default:
			}
		})
		runs[p] = r
	}
	for _, r := range runs {
		go func() { r.errc <- r.rt.Run(context.Background()) }()
	}
	stopped := runs[0]
	select {
	case <-stopped.shard:
	case err := <-stopped.errc:
		t.Fatalf("the first runtime stopped before any of its shards was ready: %v", err)
	case <-ctx.Done():
		t.Fatal("no shard of the first runtime was ready in time")
	}
	select {
	case <-stopped.ready:
		t.Fatal("the first runtime was ready before it could be shut down mid-start: give it more shards")
	default:
	}
	if err := stopped.rt.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown mid-start: %v", err)
	}
	if err := <-stopped.errc; err != nil {
		t.Errorf("Run after a Shutdown mid-start: %v", err)
	}
	for i, r := range runs[1:] {
		select {
		case <-r.ready:
		case err := <-r.errc:
			t.Fatalf("runtime %d stopped before it was ready: %v", i+1, err)
		case <-ctx.Done():
			t.Fatalf("runtime %d was not ready after another was shut down mid-start: a turn it gave up waits for its lease", i+1)
		}
	}
	for _, r := range runs[1:] {
		if err := r.rt.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		if err := <-r.errc; err != nil {
			t.Error(err)
		}
	}
	checkNoViolation(t, s)
}

// TestIdentifyQueueSoftRestartMidStart: two runtimes share the queue; a
// cluster of one is soft-restarted while its shards still wait for their
// turns. Both fleets get ready, every shard IDENTIFYs once (the sessions
// opened are handed over, the turns not yet come are given up and taken
// again), and the simulator sees no IDENTIFY too early for its bucket.
func TestIdentifyQueueSoftRestartMidStart(t *testing.T) {
	t.Parallel()
	const shards, mc, procs = 24, 3, 2
	interval := 30 * time.Millisecond
	s := identifySim(t, shards*2, shards, mc, interval)
	cfg := natsfleet.IdentifyConfig{Prefix: newPrefix(), MaxConcurrency: mc, Interval: interval, Lease: time.Hour}
	ctx := testCtx(t)
	per := shards / procs
	rts := make([]*runtime.Runtime, procs)
	ready := make(chan struct{}, procs)
	firstShard := make(chan struct{}, 1)
	errc := make(chan error, procs)
	for p := range procs {
		rt := queueRuntime(t, ctx, s, cfg, shards, p*per, (p+1)*per-1)
		rt.Subscribe(func(e runtime.Event) {
			switch e.Kind() {
			case runtime.EventFleetReady:
				ready <- struct{}{}
			case runtime.EventShardReady:
				if p == 0 {
					select {
					case firstShard <- struct{}{}:
					default:
					}
				}
			}
		})
		rts[p] = rt
		go func() { errc <- rt.Run(context.Background()) }()
	}
	select {
	case <-firstShard:
	case <-ctx.Done():
		t.Fatal("no shard of the first runtime was ready in time")
	}
	if n := readyShards(rts[0]); n == per {
		t.Fatal("the first runtime was ready before its soft restart: give it more shards")
	}
	if err := rts[0].SoftRestart(ctx, 0); err != nil {
		t.Errorf("SoftRestart mid-start: %v", err)
	}
	awaitFleets(t, ctx, s, ready, errc, procs)
	shutdownAll(t, ctx, rts, errc)
	checkIdentifies(t, s, shards) // none spent twice by the soft restart
}

// TestIdentifyQueueReshardMidStart: a fleet on the NATS queue is
// resharded while its shards still wait for their turns. The reshard
// completes, the new generation's shards are all READY, and the
// simulator sees no IDENTIFY too early for its bucket: the old
// generation's turns not yet come are given up, not left for the Lease.
func TestIdentifyQueueReshardMidStart(t *testing.T) {
	t.Parallel()
	const shards, mc, more = 24, 3, 30
	interval := 20 * time.Millisecond
	s := identifySim(t, more*2, shards, mc, interval)
	cfg := natsfleet.IdentifyConfig{Prefix: newPrefix(), MaxConcurrency: mc, Interval: interval, Lease: time.Hour}
	ctx := testCtx(t)
	rt := queueRuntime(t, ctx, s, cfg, shards, 0, shards-1)
	firstShard := make(chan struct{}, 1)
	rt.Subscribe(func(e runtime.Event) {
		if e.Kind() == runtime.EventShardReady {
			select {
			case firstShard <- struct{}{}:
			default:
			}
		}
	})
	errc := make(chan error, 1)
	go func() { errc <- rt.Run(context.Background()) }()
	select {
	case <-firstShard:
	case <-ctx.Done():
		t.Fatal("no shard was ready in time")
	}
	if n := readyShards(rt); n == shards {
		t.Fatal("the fleet was ready before its reshard: give it more shards")
	}
	if err := rt.Reshard(ctx, runtime.ReshardOptions{Shards: more}); err != nil {
		t.Errorf("Reshard mid-start: %v", err)
	}
	if n := readyShards(rt); n != more {
		t.Errorf("%d shards ready after the reshard, want %d", n, more)
	}
	if err := rt.Shutdown(ctx); err != nil {
		t.Error(err)
	}
	if err := <-errc; err != nil {
		t.Error(err)
	}
	checkNoViolation(t, s)
}

// readyShards counts the runtime's shards that are ready.
func readyShards(rt *runtime.Runtime) int {
	n := 0
	for _, c := range rt.Stats().Clusters {
		for _, sh := range c.Shards {
			if sh.State == shardgroup.StateReady {
				n++
			}
		}
	}
	return n
}

// queueRuntime returns a runtime of shards first..last of total (all of
// them: the whole fleet) against the simulator s, in two clusters,
// identifying through a NATS queue of its own connection with cfg; Run
// closes the queue.
func queueRuntime(t *testing.T, ctx context.Context, s *discordtest.Server, cfg natsfleet.IdentifyConfig, total, first, last int) *runtime.Runtime {
	t.Helper()
	q, err := natsfleet.NewIdentifyQueue(ctx, connect(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	rc := runtime.Config{
		Token: runtime.Token(s.Token()), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		IdentifyInterval: cfg.Interval, IdentifyQueue: q, Clusters: 2,
		Bot: func(int) runtime.Bot {
			return runtime.BotFunc(func(context.Context, *shardgroup.Group) error { return nil })
		},
		TotalShards: total, FirstShardID: first, LastShardID: last,
		Logger: quiet,
	}
	if first == 0 && last == total-1 {
		rc.TotalShards, rc.LastShardID, rc.Shards = 0, 0, total
	}
	rt, err := runtime.New(rc)
	if err != nil {
		q.Close(ctx)
		t.Fatal(err)
	}
	return rt
}

// awaitFleets waits for n FleetReady events on ready, failing the test
// if a Run returns first (on errc) or ctx ends.
func awaitFleets(t *testing.T, ctx context.Context, s *discordtest.Server, ready <-chan struct{}, errc <-chan error, n int) {
	t.Helper()
	for range n {
		select {
		case <-ready:
		case err := <-errc:
			t.Fatalf("a runtime stopped before it was ready: %v", err)
		case <-ctx.Done():
			t.Fatalf("the runtimes were not ready in time; the simulator's READY shards: %v", s.Stats().ReadyShards)
		}
	}
}

// shutdownAll shuts every runtime down and collects each Run's error
// from errc.
func shutdownAll(t *testing.T, ctx context.Context, rts []*runtime.Runtime, errc <-chan error) {
	t.Helper()
	for _, rt := range rts {
		if err := rt.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	}
	for range rts {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
}

// identifySim starts a simulator of guilds guilds, recommending shards,
// with max_concurrency mc and the identify window interval; it stops
// with the test.
func identifySim(t *testing.T, guilds, shards, mc int, interval time.Duration) *discordtest.Server {
	t.Helper()
	s := discordtest.NewServer(discordtest.WithGuilds(guilds), discordtest.WithRecommendedShards(shards),
		discordtest.WithMaxConcurrency(mc), discordtest.WithIdentifyWindow(interval))
	t.Cleanup(s.Close)
	return s
}

// checkIdentifies checks that the simulator accepted want IDENTIFYs,
// none too early for its bucket.
func checkIdentifies(t *testing.T, s *discordtest.Server, want int) {
	t.Helper()
	checkNoViolation(t, s)
	if n := s.Stats().Identifies; n != want {
		t.Errorf("%d IDENTIFYs accepted, want %d", n, want)
	}
}

// checkNoViolation fails the test if the simulator saw an IDENTIFY too
// early for its bucket, and logs them all then.
func checkNoViolation(t *testing.T, s *discordtest.Server) {
	t.Helper()
	if v := s.Stats().Violations["identify_concurrency"]; v != 0 {
		t.Errorf("%d identify violations, want 0", v)
		logIdentifies(t, s.Identifies())
	}
}

// logIdentifies logs the simulator's IDENTIFYs by bucket, with the time
// since the previous one of the bucket.
func logIdentifies(t *testing.T, ids []discordtest.Identify) {
	t.Helper()
	last := map[int]time.Time{}
	for _, id := range ids {
		var gap time.Duration
		if l, ok := last[id.Bucket]; ok {
			gap = id.At.Sub(l)
		}
		if !id.Violation {
			last[id.Bucket] = id.At
		}
		t.Logf("bucket %d shard %d after %v violation %v", id.Bucket, id.Shard, gap, id.Violation)
	}
}

// TestIdentifyQueueSpacing: WaitBucket returns from many queues on their
// own connections are at least an Interval apart per bucket.
func TestIdentifyQueueSpacing(t *testing.T) {
	t.Parallel()
	const queues, mc, perQueue = 5, 3, 4
	cfg := natsfleet.IdentifyConfig{Prefix: newPrefix(), MaxConcurrency: mc, Interval: 10 * time.Millisecond}
	ctx := testCtx(t)
	var mu sync.Mutex
	at := make([][]time.Time, mc)
	var wg sync.WaitGroup
	for range queues {
		q, err := natsfleet.NewIdentifyQueue(ctx, connect(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close(ctx)
		for shard := range mc * perQueue {
			wg.Go(func() {
				if err := q.WaitBucket(ctx, shard); err != nil {
					t.Error(err)
					return
				}
				now := time.Now()
				mu.Lock()
				at[shard%mc] = append(at[shard%mc], now)
				mu.Unlock()
				q.UnlockBucket(shard)
			})
		}
	}
	wg.Wait()
	for b, times := range at {
		if len(times) != queues*perQueue {
			t.Errorf("bucket %d: %d waits returned, want %d", b, len(times), queues*perQueue)
		}
		slices.SortFunc(times, time.Time.Compare)
		for i := 1; i < len(times); i++ {
			if gap := times[i].Sub(times[i-1]); gap < cfg.Interval {
				t.Errorf("bucket %d: waits %d and %d returned %v apart, less than the interval %v", b, i-1, i, gap, cfg.Interval)
			}
		}
	}
}

// TestIdentifyQueueBucketsAtOnce: every bucket is busy at once, each
// turn waiting only for its own bucket's.
func TestIdentifyQueueBucketsAtOnce(t *testing.T) {
	t.Parallel()
	const mc = 4
	ctx := testCtx(t)
	prefix := newPrefix()
	var qs [2]*natsfleet.IdentifyQueue
	for i := range qs {
		q, err := natsfleet.NewIdentifyQueue(ctx, connect(t), natsfleet.IdentifyConfig{Prefix: prefix, MaxConcurrency: mc, Interval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close(ctx)
		qs[i] = q
	}
	// No READY comes and the interval is an hour: each bucket's first
	// turn, from either queue, still comes at once.
	for shard := range mc {
		if err := qs[shard%2].WaitBucket(ctx, shard); err != nil {
			t.Fatalf("bucket %d waited for another bucket: %v", shard, err)
		}
	}
}

// TestIdentifyQueueDeadProcess: a process that took its turn and died
// before READY delays its bucket by one interval plus the lease.
func TestIdentifyQueueDeadProcess(t *testing.T) {
	t.Parallel()
	cfg := natsfleet.IdentifyConfig{Prefix: newPrefix(), MaxConcurrency: 2, Interval: 20 * time.Millisecond, Lease: 200 * time.Millisecond}
	ctx := testCtx(t)
	identified := dieHolding(t, ctx, cfg, 0)
	live, err := natsfleet.NewIdentifyQueue(ctx, connect(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close(ctx)

	if err := live.WaitBucket(ctx, 1); err != nil { // bucket 1 is free at once
		t.Fatal(err)
	}
	live.UnlockBucket(1)
	if err := live.WaitBucket(ctx, 0); err != nil {
		t.Fatalf("bucket 0 after its holder died: %v", err)
	}
	if d := time.Since(identified); d < cfg.Lease {
		t.Errorf("bucket 0 free %v after the dead process's turn, before its lease (%v) ran out", d, cfg.Lease)
	}
	live.UnlockBucket(0)
}

// dieHolding opens a queue on a connection of its own, takes shard's
// turn and dies before its READY (its connection gone, nothing
// reported); it returns when the turn was taken.
func dieHolding(t *testing.T, ctx context.Context, cfg natsfleet.IdentifyConfig, shard int) time.Time {
	t.Helper()
	nc, err := srv.Connect(ctx, natsfleet.Logger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	dead, err := natsfleet.NewIdentifyQueue(ctx, nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := dead.WaitBucket(ctx, shard); err != nil {
		t.Fatal(err)
	}
	identified := time.Now()
	nc.Close()
	dead.Close(ctx)
	return identified
}

// TestIdentifyQueueReserveBehindDeadHolder: a process dies holding a
// bucket's turn; a reservation behind it in another process is next once
// the holder's lease ran out, not never, and its shard identifies then.
func TestIdentifyQueueReserveBehindDeadHolder(t *testing.T) {
	t.Parallel()
	cfg := natsfleet.IdentifyConfig{Prefix: newPrefix(), MaxConcurrency: 1, Interval: 20 * time.Millisecond, Lease: 200 * time.Millisecond}
	ctx := testCtx(t)
	identified := dieHolding(t, ctx, cfg, 0)
	live := newQueue(t, ctx, cfg)

	rctx, giveUp, err := live.ReserveTurn(ctx, 1)
	if err != nil {
		t.Fatalf("reserving behind a dead holder: %v", err)
	}
	defer giveUp()
	if d := time.Since(identified); d < cfg.Lease {
		t.Errorf("the reservation was next %v after the dead process's turn, before its lease (%v) ran out", d, cfg.Lease)
	}
	if err := live.WaitBucket(rctx, 1); err != nil {
		t.Fatalf("the reserved turn behind a dead holder: %v", err)
	}
	live.UnlockBucket(1)
}

// TestIdentifyQueueClosedWithTurnsGivenUp: a process gives up its turns
// behind another process's and closes before that one is done; the turn
// after them is next as soon as it is, not after their Lease, and keeps
// the Interval from its READY.
func TestIdentifyQueueClosedWithTurnsGivenUp(t *testing.T) {
	t.Parallel()
	cfg := natsfleet.IdentifyConfig{Prefix: newPrefix(), MaxConcurrency: 1, Interval: 20 * time.Millisecond, Lease: time.Hour}
	ctx := testCtx(t)
	a, b, c := newQueue(t, ctx, cfg), newQueue(t, ctx, cfg), newQueue(t, ctx, cfg)
	if err := a.WaitBucket(ctx, 0); err != nil { // ticket 1, identifying
		t.Fatal(err)
	}
	// b's shard takes ticket 2 and gives it up, and b closes.
	bctx, cancel := context.WithCancel(ctx)
	gaveUp := make(chan error, 1)
	go func() {
		_, _, err := b.ReserveTurn(bctx, 1)
		gaveUp <- err
	}()
	waitIssued(t, ctx, a, 0, 2)
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("ReserveTurn = %v, want it cancelled", err)
	}
	b.Close(ctx)
	next := make(chan error, 1)
	go func() {
		rctx, giveUp, err := c.ReserveTurn(ctx, 2) // ticket 3
		if err == nil {
			err = c.WaitBucket(rctx, 2)
			giveUp()
		}
		next <- err
	}()
	waitIssued(t, ctx, a, 0, 3)
	select {
	case err := <-next:
		t.Fatalf("the turn after the given-up ones came before the one ahead of them was done (%v)", err)
	case <-time.After(3 * cfg.Interval):
	}
	unlocked := time.Now()
	a.UnlockBucket(0)
	if err := <-next; err != nil {
		t.Fatalf("the turn after the given-up ones: %v", err)
	}
	if d := time.Since(unlocked); d < cfg.Interval {
		t.Errorf("the turn came %v after the READY ahead, less than the interval %v", d, cfg.Interval)
	}
	c.UnlockBucket(2)
}

// TestIdentifyQueueDeadHolderTwoWaiting: when a holder dies with two
// turns waiting behind it, the first goes after the lease and the second
// still waits for the first's READY plus an interval.
func TestIdentifyQueueDeadHolderTwoWaiting(t *testing.T) {
	t.Parallel()
	cfg := natsfleet.IdentifyConfig{Prefix: newPrefix(), MaxConcurrency: 1, Interval: 20 * time.Millisecond, Lease: 150 * time.Millisecond}
	ctx := testCtx(t)
	dieHolding(t, ctx, cfg, 0)
	var at [2]time.Time
	var qs [2]*natsfleet.IdentifyQueue
	for i := range qs {
		q, err := natsfleet.NewIdentifyQueue(ctx, connect(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close(ctx)
		qs[i] = q
	}
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i, q := range qs {
		wg.Go(func() {
			<-gate
			if err := q.WaitBucket(ctx, 0); err != nil {
				t.Error(err)
				return
			}
			at[i] = time.Now()
			q.UnlockBucket(0) // READY at once
		})
	}
	close(gate) // both take their tickets at once
	wg.Wait()
	gap := at[1].Sub(at[0]).Abs()
	if gap < cfg.Interval {
		t.Errorf("the two turns after a dead holder came %v apart, less than the interval %v", gap, cfg.Interval)
	}
}

// TestIdentifyQueueAbandonedTurn: a wait given up keeps its place until
// the turn before it is done, so the turn after it still waits for that
// one's READY plus an interval.
func TestIdentifyQueueAbandonedTurn(t *testing.T) {
	t.Parallel()
	cfg := natsfleet.IdentifyConfig{Prefix: newPrefix(), MaxConcurrency: 1, Interval: 20 * time.Millisecond, Lease: time.Minute}
	ctx := testCtx(t)
	a, b, c := newQueue(t, ctx, cfg), newQueue(t, ctx, cfg), newQueue(t, ctx, cfg)
	if err := a.WaitBucket(ctx, 0); err != nil { // a identifies
		t.Fatal(err)
	}
	bctx, bcancel := context.WithCancel(ctx)
	berr := make(chan error, 1)
	go func() { berr <- b.WaitBucket(bctx, 0) }()
	cdone := make(chan time.Time, 1)
	go func() {
		if err := c.WaitBucket(ctx, 0); err != nil {
			t.Error(err)
		}
		cdone <- time.Now()
	}()
	bcancel()
	if err := <-berr; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled wait: %v, want context.Canceled", err)
	}
	unlocked := time.Now()
	a.UnlockBucket(0) // a's READY
	if at := <-cdone; at.Sub(unlocked) < cfg.Interval {
		t.Errorf("the turn after an abandoned one came %v after the READY before it, less than the interval %v", at.Sub(unlocked), cfg.Interval)
	}
	c.UnlockBucket(0)
}

// TestIdentifyQueueReserveTurn: a reserved turn is the next one only
// once the turn before it is done, in whichever process; a WaitBucket
// under the reservation's context waits for that turn, an Interval after
// the READY before it.
func TestIdentifyQueueReserveTurn(t *testing.T) {
	t.Parallel()
	cfg := natsfleet.IdentifyConfig{Prefix: newPrefix(), MaxConcurrency: 2, Interval: 20 * time.Millisecond, Lease: time.Minute}
	ctx := testCtx(t)
	a, b := newQueue(t, ctx, cfg), newQueue(t, ctx, cfg)
	// Bucket 0: shard 0 in a, then shard 2 in b, then shard 4 in a.
	ctx0, giveUp0, err := a.ReserveTurn(ctx, 0) // the bucket's first turn: next at once
	if err != nil {
		t.Fatal(err)
	}
	type reserved struct {
		ctx    context.Context
		giveUp func()
		at     time.Time
	}
	next := make(chan reserved, 2)
	reserve := func(q *natsfleet.IdentifyQueue, shard int) {
		rctx, giveUp, err := q.ReserveTurn(ctx, shard)
		if err != nil {
			t.Error(err)
		}
		next <- reserved{rctx, giveUp, time.Now()}
	}
	go reserve(b, 2)
	waitIssued(t, ctx, b, 0, 2) // shard 2's ticket comes before shard 4's
	go reserve(a, 4)
	// Bucket 1 is another order: its first reservation is next at once.
	_, giveUp1, err := b.ReserveTurn(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	giveUp1()
	select {
	case <-next:
		t.Fatal("a reservation was next before the bucket's first turn was done")
	case <-time.After(3 * cfg.Interval):
	}
	if err := a.WaitBucket(ctx0, 0); err != nil { // the reserved turn: at once
		t.Fatal(err)
	}
	giveUp0() // taken by WaitBucket: nothing to give up
	unlocked := time.Now()
	a.UnlockBucket(0) // shard 0's READY
	r2 := <-next
	if r2.at.Before(unlocked) {
		t.Fatal("shard 2's turn was next before shard 0's READY")
	}
	if err := b.WaitBucket(r2.ctx, 2); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(unlocked); d < cfg.Interval {
		t.Errorf("shard 2's turn came %v after shard 0's READY, less than the interval %v", d, cfg.Interval)
	}
	select {
	case <-next:
		t.Fatal("shard 4's turn was next while shard 2 had not had its READY")
	default:
	}
	b.UnlockBucket(2)
	r4 := <-next
	if err := a.WaitBucket(r4.ctx, 4); err != nil {
		t.Fatal(err)
	}
	a.UnlockBucket(4)
	r2.giveUp()
	r4.giveUp()
}

// TestIdentifyQueueReservationsOfOneShardID: two shards of the same ID in
// one process (a reshard's two generations) keep their reservations
// apart: each WaitBucket waits for its own, and giving one up leaves the
// other.
func TestIdentifyQueueReservationsOfOneShardID(t *testing.T) {
	t.Parallel()
	cfg := natsfleet.IdentifyConfig{Prefix: newPrefix(), MaxConcurrency: 1, Interval: 10 * time.Millisecond, Lease: time.Minute}
	ctx := testCtx(t)
	q := newQueue(t, ctx, cfg)
	oldCtx, oldGiveUp, err := q.ReserveTurn(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	type reserved struct {
		ctx    context.Context
		giveUp func()
	}
	second := make(chan reserved, 1)
	go func() {
		rctx, giveUp, err := q.ReserveTurn(ctx, 0)
		if err != nil {
			t.Error(err)
		}
		second <- reserved{rctx, giveUp}
	}()
	// The first shard 0's connection ends before its IDENTIFY: the
	// second one's turn is next, and is its own.
	oldGiveUp()
	r := <-second
	oldGiveUp() // a second time: nothing
	_ = oldCtx
	if err := q.WaitBucket(r.ctx, 0); err != nil {
		t.Fatal(err)
	}
	r.giveUp() // taken: nothing
	q.UnlockBucket(0)
}

// TestIdentifyQueueCancelTurn: a reserved turn given up (its shard's
// connection ended before its IDENTIFY) lets the bucket go on at once,
// and a reservation whose ctx ends is given up too.
func TestIdentifyQueueCancelTurn(t *testing.T) {
	t.Parallel()
	cfg := natsfleet.IdentifyConfig{Prefix: newPrefix(), MaxConcurrency: 1, Interval: time.Hour, Lease: time.Hour}
	ctx := testCtx(t)
	a, b := newQueue(t, ctx, cfg), newQueue(t, ctx, cfg)
	_, giveUp0, err := a.ReserveTurn(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A reservation that gives up while it waits for its turn.
	wctx, wcancel := context.WithCancel(ctx)
	werr := make(chan error, 1)
	go func() {
		_, _, err := b.ReserveTurn(wctx, 1)
		werr <- err
	}()
	waitIssued(t, ctx, b, 0, 2)
	wcancel()
	if err := <-werr; !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled reservation returned %v, want context.Canceled", err)
	}
	// Shard 0's connection ends before its IDENTIFY: nothing was sent,
	// so the next turn need not wait the (hour-long) Interval, and the
	// turn shard 1 gave up is skipped too.
	giveUp0()
	rctx, giveUp2, err := b.ReserveTurn(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.WaitBucket(rctx, 2); err != nil {
		t.Fatal(err)
	}
	giveUp2()
	b.UnlockBucket(2)
}

// newQueue opens a queue of cfg on a connection of its own, closed when
// the test ends.
func newQueue(t *testing.T, ctx context.Context, cfg natsfleet.IdentifyConfig) *natsfleet.IdentifyQueue {
	t.Helper()
	q, err := natsfleet.NewIdentifyQueue(ctx, connect(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close(ctx) })
	return q
}

// waitIssued waits until q has seen n tickets of bucket k issued.
func waitIssued(t *testing.T, ctx context.Context, q *natsfleet.IdentifyQueue, k int, n uint64) {
	t.Helper()
	for natsfleet.IssuedTickets(q, k) < n {
		select {
		case <-ctx.Done():
			t.Fatalf("%d tickets of bucket %d not taken: %v", n, k, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// TestIdentifyQueueClosed: a wait fails once the queue is closed.
func TestIdentifyQueueClosed(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	q, err := natsfleet.NewIdentifyQueue(ctx, connect(t), natsfleet.IdentifyConfig{Prefix: newPrefix(), MaxConcurrency: 1, Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.WaitBucket(ctx, 0); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- q.WaitBucket(ctx, 0) }() // an hour away
	q.Close(ctx)
	if err := <-errc; err == nil {
		t.Error("a wait returned nil after Close")
	}
}

// BenchmarkIdentifyQueueStartup is the queue's part of a fleet's start-up:
// 256 shards over 4 queues on their own connections, 16 buckets, each
// READY at once after its turn. It reports the physical limit (16
// Intervals) over the time all turns took (ratio), the first turn's wait
// (first_ms) and how far past the Interval the turns of a bucket came
// (over_ms, mean).
func BenchmarkIdentifyQueueStartup(b *testing.B) {
	const shards, mc, queues = 256, 16, 4
	interval := 20 * time.Millisecond
	ctx := context.Background()
	var total, first, over time.Duration
	var gaps int
	for b.Loop() {
		cfg := natsfleet.IdentifyConfig{Prefix: newPrefix(), MaxConcurrency: mc, Interval: interval}
		qs := make([]*natsfleet.IdentifyQueue, queues)
		for i := range qs {
			q, err := natsfleet.NewIdentifyQueue(ctx, connect(b), cfg)
			if err != nil {
				b.Fatal(err)
			}
			qs[i] = q
		}
		var mu sync.Mutex
		turns := make([][]time.Time, mc)
		start := time.Now()
		var wg sync.WaitGroup
		for shard := range shards {
			q := qs[shard*queues/shards]
			wg.Go(func() {
				if err := q.WaitBucket(ctx, shard); err != nil {
					b.Error(err)
					return
				}
				now := time.Now()
				mu.Lock()
				turns[shard%mc] = append(turns[shard%mc], now)
				mu.Unlock()
				q.UnlockBucket(shard)
			})
		}
		wg.Wait()
		total += time.Since(start)
		for _, q := range qs {
			q.Close(ctx)
		}
		for _, ts := range turns {
			slices.SortFunc(ts, time.Time.Compare)
			first += ts[0].Sub(start)
			for i := 1; i < len(ts); i++ {
				over += ts[i].Sub(ts[i-1]) - interval
				gaps++
			}
		}
	}
	limit := time.Duration(shards/mc) * interval
	b.ReportMetric(float64(limit)*float64(b.N)/float64(total), "ratio")
	b.ReportMetric(float64(first.Milliseconds())/float64(b.N*mc), "first_ms")
	b.ReportMetric(float64(over.Microseconds())/1e3/float64(gaps), "over_ms")
}
