package natsfleet_test

import (
	"context"
	"errors"
	"fmt"
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
	s := discordtest.NewServer(discordtest.WithGuilds(shards*2), discordtest.WithRecommendedShards(shards),
		discordtest.WithMaxConcurrency(mc), discordtest.WithIdentifyWindow(interval))
	defer s.Close()
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
	st := s.Stats()
	if v := st.Violations["identify_concurrency"]; v != 0 {
		t.Errorf("%d identify violations, want 0", v)
	}
	if st.Identifies != shards {
		t.Errorf("%d identifies accepted, want %d", st.Identifies, shards)
	}
	// Every bucket was busy at once: the buckets' IDENTIFYs interleave
	// rather than run one bucket after the other.
	seen := map[int]bool{}
	for _, id := range s.Identifies()[:mc] {
		seen[id.Bucket] = true
	}
	if len(seen) != mc {
		t.Errorf("the first %d IDENTIFYs used buckets %v, want all %d", mc, seen, mc)
	}
}

// TestIdentifyQueueDeadHolder: a process that took a bucket and went
// silent blocks it for its lease plus one interval, no longer.
func TestIdentifyQueueDeadHolder(t *testing.T) {
	t.Parallel()
	prefix := newPrefix()
	cfg := natsfleet.IdentifyConfig{Prefix: prefix, MaxConcurrency: 2, Interval: 20 * time.Millisecond, Lease: 300 * time.Millisecond}
	ctx := testCtx(t)
	deadConn, err := srv.Connect(ctx, natsfleet.Logger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	dead, err := natsfleet.NewIdentifyQueue(ctx, deadConn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	live, err := natsfleet.NewIdentifyQueue(ctx, connect(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close(ctx)
	if err := dead.WaitBucket(ctx, 0); err != nil {
		t.Fatal(err)
	}
	deadConn.Close() // gone without releasing
	dead.Close(ctx)

	// Bucket 1 is free at once.
	if err := live.WaitBucket(ctx, 1); err != nil {
		t.Fatal(err)
	}
	live.UnlockBucket(1)
	start := time.Now()
	if err := live.WaitBucket(ctx, 0); err != nil {
		t.Fatalf("bucket 0 after its holder died: %v", err)
	}
	if d := time.Since(start); d < cfg.Lease/2 {
		t.Errorf("bucket 0 taken after %v, before the holder's lease (%v) ran out", d, cfg.Lease)
	}
	live.UnlockBucket(0)

	// A cancelled wait gives its turn back.
	if err := live.WaitBucket(ctx, 0); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- live.WaitBucket(cctx, 2) }() // bucket 0 again: busy
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled wait: %v, want context.Canceled", err)
	}
	live.UnlockBucket(0)
	if err := live.WaitBucket(ctx, 0); err != nil {
		t.Errorf("after a cancelled wait: %v", err)
	}
	live.UnlockBucket(0)
}
