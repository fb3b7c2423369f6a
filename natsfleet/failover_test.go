package natsfleet_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/gofleet/fleet/internal/multihost"
)

// The fault tests run a fleet of host processes (this test binary run
// again with multihost.HostEnv set) on a three-node NATS cluster against
// the simulator, and count what the hosts' listeners saw.

const faultRate = 400 // MESSAGE_CREATE per second during the fault tests

// startFleet starts a fleet of three hosts, closed when the test ends.
func startFleet(t *testing.T, cfg multihost.Config) *multihost.Fleet {
	t.Helper()
	if testing.Short() {
		t.Skip("host processes on a NATS cluster: not in -short")
	}
	cfg.Exe, cfg.Args = os.Args[0], []string{"-test.run=^$"}
	cfg.Prefix = newPrefix()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	f, err := multihost.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("stopping the hosts: %v", err)
		}
	})
	return f
}

// hostLoad sends MESSAGE_CREATEs at faultRate and samples the simulator for
// two live sessions of one shard until the test ends or stop is called.
type hostLoad struct {
	send *multihost.Sender
	stop func()
}

func startLoad(t *testing.T, f *multihost.Fleet) *hostLoad {
	send := multihost.NewSender(f.Discord, faultRate)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- send.Run(ctx) }()
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				done <- nil
				return
			case <-tick.C:
				f.Tally.SampleSimulator(f.Discord)
			}
		}
	}()
	var stopped bool
	l := &hostLoad{send: send}
	l.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("load: %v", err)
			}
		}
	}
	t.Cleanup(l.stop)
	return l
}

// flowing waits until a second's events have been sent and every one
// reported.
func (l *hostLoad) flowing(t *testing.T, f *multihost.Fleet) {
	t.Helper()
	from := l.send.Mark()
	await(t, 30*time.Second, func(ctx context.Context) error {
		for l.send.Mark() < from+faultRate {
			select {
			case <-ctx.Done():
				return fmt.Errorf("a second's events not sent: %w", ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
		return f.Tally.Await(ctx, l.send.Sent(from, -1))
	})
}

func await(t *testing.T, d time.Duration, fn func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := fn(ctx); err != nil {
		t.Fatal(err)
	}
}

// check stops the load, waits until every event sent has been reported,
// and asserts the fleet's promises: nothing lost, no shard owned twice,
// no identify violation, no IDENTIFY after the fleet was ready, and
// duplicates no more than window's worth of events per moved shard
// (window: how long a host delivered without a checkpoint reaching the
// store).
func check(t *testing.T, f *multihost.Fleet, l *hostLoad, identifies, movedShards int, window time.Duration) {
	t.Helper()
	l.stop()
	all := l.send.Sent(0, -1)
	if len(all) == 0 {
		t.Fatal("no event was sent")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_ = f.Tally.Await(ctx, all)
	lost, dup := f.Tally.Count(all)
	st := f.Discord.Stats()
	t.Logf("%d events sent, %d lost, %d duplicated; by host %v; identifies %d after ready, resumes %d",
		len(all), lost, dup, f.Tally.ByHost(), st.Identifies-identifies, st.Resumes)
	if lost != 0 {
		t.Errorf("%d of %d events lost", lost, len(all))
	}
	// Per moved shard, the events of the window (the rate is spread over
	// every shard), twice over for scheduling jitter.
	perShard := float64(faultRate) / float64(f.Cfg.Shards)
	if bound := int64(2 * perShard * window.Seconds() * float64(max(movedShards, 1))); dup > bound+int64(movedShards) {
		t.Errorf("%d duplicates, more than %d: %v's worth of events per moved shard", dup, bound, window)
	}
	if n := f.Tally.OwnedTwice(); n != 0 {
		t.Errorf("%d shards owned twice: %v", n, f.Tally.OwnedTwiceWhy())
	}
	if v := st.Violations["identify_concurrency"]; v != 0 {
		t.Errorf("%d identify violations", v)
	}
	if n := st.Identifies - identifies; n != 0 {
		t.Errorf("%d IDENTIFYs after the fleet was ready: a move re-identified instead of resuming", n)
	}
}

// TestHostsStartTogether: three hosts started at the same moment plan the
// fleet once and run every cluster on exactly one host, with one
// IDENTIFY per shard and no identify violation.
func TestHostsStartTogether(t *testing.T) {
	f := startFleet(t, multihost.Config{})
	f.Tally.SampleSimulator(f.Discord)
	st := f.Discord.Stats()
	if st.Identifies != f.Cfg.Shards {
		t.Errorf("%d IDENTIFYs for %d shards", st.Identifies, f.Cfg.Shards)
	}
	if v := st.Violations["identify_concurrency"]; v != 0 {
		t.Errorf("%d identify violations", v)
	}
	if n := f.Tally.OwnedTwice(); n != 0 {
		t.Errorf("%d shards owned twice: %v", n, f.Tally.OwnedTwiceWhy())
	}
	owners := f.Tally.Owners()
	for c := range f.Cfg.Clusters {
		if owners[c] == "" {
			t.Errorf("cluster %d has no owner: %v", c, owners)
		}
	}
}

// TestHostKilledUnderLoad: a host killed with SIGKILL while events flow;
// its clusters' shards are resumed on the others after the lease's TTL.
func TestHostKilledUnderLoad(t *testing.T) {
	f := startFleet(t, multihost.Config{})
	identifies := f.Discord.Stats().Identifies
	l := startLoad(t, f)
	l.flowing(t, f)
	dead := f.ShardsOf(0)
	if len(dead) == 0 {
		t.Fatalf("host 0 owns no cluster: %v", f.Tally.Owners())
	}
	killed := time.Now()
	f.Kill(0)
	await(t, f.Cfg.LeaseTTL+30*time.Second, func(ctx context.Context) error {
		at, err := f.Tally.AwaitDelivered(ctx, dead, f.IDs[0], killed)
		t.Logf("shards %v deliver elsewhere %v after the kill", dead, at.Sub(killed))
		return err
	})
	await(t, 30*time.Second, f.AwaitSettled)
	check(t, f, l, identifies, len(dead), f.Cfg.Checkpoint)
}

// TestHostCutOffLongerThanTTL: a host's NATS connection is cut for
// longer than the lease TTL, then restored. The host stops delivering its
// clusters when its lease runs out (fencing); the others resume them; no
// shard is served twice, and after the cut the host rejoins.
func TestHostCutOffLongerThanTTL(t *testing.T) {
	f := startFleet(t, multihost.Config{Cuttable: []int{0}})
	identifies := f.Discord.Stats().Identifies
	l := startLoad(t, f)
	l.flowing(t, f)
	cut := f.ShardsOf(0)
	if len(cut) == 0 {
		t.Fatalf("host 0 owns no cluster: %v", f.Tally.Owners())
	}
	at := time.Now()
	f.Cutter(0).Cut()
	await(t, f.Cfg.LeaseTTL+30*time.Second, func(ctx context.Context) error {
		_, err := f.Tally.AwaitDelivered(ctx, cut, f.IDs[0], at)
		return err
	})
	f.Cutter(0).Restore()
	// Back in the fleet, the host gets its share again, handed over.
	await(t, 30*time.Second, func(ctx context.Context) error {
		for len(f.ClustersOf(0)) == 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("host 0 runs no cluster after its connection came back (owners %v): %w", f.Tally.Owners(), ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
		return nil
	})
	await(t, 30*time.Second, f.AwaitSettled)
	l.flowing(t, f)
	// Cut off, the host could not checkpoint while it still held its
	// lease: the new owners resume from before the cut.
	check(t, f, l, identifies, len(cut), f.Cfg.LeaseTTL+f.Cfg.Checkpoint)
}

// TestHostsNATSNodeKilled: the NATS node a host is connected to dies; the
// host moves to another node and the fleet loses nothing. The lease TTL
// is longer than the few seconds JetStream takes to elect new leaders for
// the buckets the dead node led (see TestClusterSurvivesNodeLoss's log),
// as a production TTL should be.
func TestHostsNATSNodeKilled(t *testing.T) {
	f := startFleet(t, multihost.Config{LeaseTTL: 10 * time.Second})
	identifies := f.Discord.Stats().Identifies
	l := startLoad(t, f)
	l.flowing(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.NATS.CloseNode(ctx, 0); err != nil { // host 0's node
		t.Fatal(err)
	}
	// Events sent after the loss reach the hosts: host 0's reports come
	// through another node.
	l.flowing(t, f)
	await(t, 30*time.Second, f.AwaitSettled)
	check(t, f, l, identifies, f.Cfg.Shards, f.Cfg.LeaseTTL+f.Cfg.Checkpoint)
}
