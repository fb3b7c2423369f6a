package runtime

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/gofleet/fleet/discordtest"
)

func TestReshardOverTheBusOutlivesTheRequestTimeout(t *testing.T) {
	// One identify bucket, 500 ms windows: the four new shards take over
	// 1.5 s, more than the bus's request timeout, which still leaves
	// starting the reshard (a request to Discord) room on a busy machine.
	s := discordtest.NewServer(discordtest.WithGuilds(16), discordtest.WithRecommendedShards(2),
		discordtest.WithIdentifyWindow(500*time.Millisecond))
	defer s.Close()
	cfg := testConfig(s)
	cfg.RequestTimeout = time.Second
	rt, stop := startFleet(t, cfg)
	defer stop()
	rec := record(rt, EventReshardDone)
	start := time.Now()
	if err := NewClient(rt.Bus()).Reshard(context.Background(), ReshardOptions{Shards: 4}); err != nil {
		t.Fatalf("Client.Reshard: %v", err)
	}
	t.Logf("reshard over the bus took %s (request timeout %s)", time.Since(start), cfg.RequestTimeout)
	if len(rec.of(EventReshardDone)) != 1 {
		t.Fatal("no reshard_done event")
	}
	if took := time.Since(start); took < cfg.RequestTimeout {
		t.Fatalf("the reshard took %s, less than the request timeout: the test shows nothing", took)
	}
	if st := rt.Stats(); st.TotalShards != 4 {
		t.Fatalf("%d shards after the reshard, want 4", st.TotalShards)
	}
}

func TestOperationsCanBePolled(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(16), discordtest.WithRecommendedShards(2),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(10*time.Millisecond))
	defer s.Close()
	cfg := testConfig(s)
	cfg.Clusters = 2
	rt, stop := startFleet(t, cfg)
	defer stop()
	ctx := context.Background()

	op, err := rt.StartReshard(ctx, ReshardOptions{Shards: 4})
	if err != nil || op.State != OperationRunning || op.Kind != OperationReshard || op.ID == "" {
		t.Fatalf("StartReshard = %+v, %v", op, err)
	}
	if _, err := rt.StartReshard(ctx, ReshardOptions{Shards: 4}); !errors.Is(err, ErrReshardInProgress) {
		t.Fatalf("a second StartReshard = %v, want ErrReshardInProgress", err)
	}
	done, err := rt.WaitOperation(ctx, op.ID)
	if err != nil || done.State != OperationDone || done.Done != 4 || done.Of != 4 || done.Ended.IsZero() {
		t.Fatalf("WaitOperation = %+v, %v; want done, 4 of 4", done, err)
	}
	polled, err := NewClient(rt.Bus()).Operation(ctx, op.ID)
	if err != nil || polled.State != OperationDone || polled.Done != 4 {
		t.Fatalf("Client.Operation = %+v, %v", polled, err)
	}
	if _, err := NewClient(rt.Bus()).Operation(ctx, "reshard-99"); err == nil {
		t.Fatal("an unknown operation was found")
	}

	// A rolling restart over the bus, its progress counted by cluster.
	op, err = NewClient(rt.Bus()).StartSoftRestartAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	done, err = NewClient(rt.Bus()).WaitOperation(ctx, op.ID)
	if err != nil || done.State != OperationDone || done.Done != 2 || done.Of != 2 || done.Kind != OperationSoftRestartAll {
		t.Fatalf("rolling restart = %+v, %v", done, err)
	}
}

func TestOperationsEndWithTheFleet(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(16), discordtest.WithRecommendedShards(2),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	rt, stop := startFleet(t, testConfig(s))
	ctx := context.Background()
	s.HoldShard(3) // the reshard never completes
	defer s.ReleaseShard(3)
	op, err := rt.StartReshard(ctx, ReshardOptions{Shards: 4})
	if err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	done, err := rt.WaitOperation(ctx, op.ID)
	if !errors.Is(err, ErrNotRunning) || done.State != OperationFailed {
		t.Fatalf("operation after the stop: %+v, %v; want failed with ErrNotRunning", done, err)
	}
	if _, err := rt.StartReshard(ctx, ReshardOptions{Shards: 4}); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("StartReshard after the stop = %v", err)
	}
}

// A reshard to the shard and cluster counts the fleet already has
// changes nothing, in every form: no shard identifies, and the operation
// is done at once and says so.
func TestReshardToTheCurrentCountChangesNothing(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(2),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	cfg := testConfig(s)
	cfg.Clusters = 2
	rt, stop := startFleet(t, cfg)
	defer stop()
	ctx := context.Background()
	before := s.Stats().Identifies
	for _, opts := range []ReshardOptions{{}, {Shards: 2}, {Shards: 2, Clusters: 2}, {Clusters: 2}} {
		if err := rt.Reshard(ctx, opts); err != nil {
			t.Fatalf("Reshard(%+v): %v", opts, err)
		}
		op, err := rt.StartReshard(ctx, opts)
		if err != nil || op.State != OperationDone || op.Result != "unchanged: the fleet already runs 2 shards in 2 clusters" {
			t.Fatalf("StartReshard(%+v) = %+v, %v; want done at once, unchanged", opts, op, err)
		}
		if got, err := rt.WaitOperation(ctx, op.ID); err != nil || got.Result != op.Result {
			t.Fatalf("WaitOperation = %+v, %v", got, err)
		}
	}
	if n := s.Stats().Identifies; n != before {
		t.Fatalf("%d IDENTIFYs, want none", n-before)
	}
	if err := rt.Reshard(ctx, ReshardOptions{Shards: 2, Clusters: 1}); err != nil {
		t.Fatalf("Reshard to one cluster: %v", err)
	}
	if n := s.Stats().Identifies; n != before+2 {
		t.Fatalf("a reshard to one cluster identified %d shards, want 2", n-before)
	}
}
