package natsfleet

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// ownership records which host runs which cluster, and counts every
// moment a cluster ran on two hosts whose leases were both valid.
type ownership struct {
	mu      sync.Mutex // guards running, twice, starts
	running map[int]map[string]*heldLease
	twice   int
	starts  map[int]int
}

func newOwnership() *ownership {
	return &ownership{running: map[int]map[string]*heldLease{}, starts: map[int]int{}}
}

// runner returns a clusterRunner for host id that runs until its ctx ends.
func (o *ownership) runner(id string) clusterRunner {
	return func(ctx context.Context, c *clusterRun) error {
		o.mu.Lock()
		now := time.Now()
		for other, l := range o.running[c.ID] {
			if other != id && l.valid(now) {
				o.twice++
			}
		}
		if o.running[c.ID] == nil {
			o.running[c.ID] = map[string]*heldLease{}
		}
		o.running[c.ID][id] = c.Lease
		o.starts[c.ID]++
		o.mu.Unlock()
		<-ctx.Done()
		o.mu.Lock()
		delete(o.running[c.ID], id)
		o.mu.Unlock()
		return nil
	}
}

func (o *ownership) ownedTwice() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.twice
}

type testHost struct {
	core   *hostCore
	nc     *nats.Conn
	ctx    context.Context
	cancel context.CancelFunc
	done   chan error
}

func startTestHosts(t *testing.T, s *Server, fleet string, n int, o *ownership, plans *atomic.Int32, ttl time.Duration) []*testHost {
	t.Helper()
	var out []*testHost
	for i := range n {
		id := fmt.Sprintf("h%d", i)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		nc, err := s.Connect(ctx, Logger(slog.New(slog.DiscardHandler)))
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		runCtx, stop := context.WithCancel(context.Background())
		core, err := newHostCore(ctx, nc, coreConfig{fleet: fleet, id: id, weight: 1, ttl: ttl, margin: ttl / 10, interval: ttl / 3,
			log: slog.New(slog.DiscardHandler), run: o.runner(id),
			plan: func(context.Context) (planRecord, error) {
				plans.Add(1)
				return planRecord{Shards: 6, MaxConcurrency: 1, Clusters: [][]int{{0}, {1}, {2}, {3}, {4}, {5}}}, nil
			}})
		cancel()
		if err != nil {
			stop()
			nc.Close()
			t.Fatal(err)
		}
		th := &testHost{core: core, nc: nc, ctx: runCtx, cancel: stop, done: make(chan error, 1)}
		out = append(out, th)
		t.Cleanup(func() {
			th.cancel()
			<-th.done
			th.nc.Close()
		})
	}
	// Start them all at once.
	for _, th := range out {
		go func() { th.done <- th.core.runLoop(th.ctx, 5*time.Second) }()
	}
	return out
}

func waitOwned(t *testing.T, hosts []*testHost, what string, cond func(map[string][]int) bool) map[string][]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		owned := map[string][]int{}
		var changed []<-chan struct{}
		for _, h := range hosts {
			s, ch := h.core.snapshot()
			owned[h.core.id] = s.Owned
			changed = append(changed, ch)
		}
		if cond(owned) {
			return owned
		}
		select {
		case <-changed[0]:
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("waiting for %s: owned %v", what, owned)
		}
	}
}

func TestHostsStartingTogetherPlanOnceAndOwnEachClusterOnce(t *testing.T) {
	t.Parallel()
	s, err := StartServer(ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	o := newOwnership()
	var plans atomic.Int32
	hosts := startTestHosts(t, s, "lease1", 3, o, &plans, 300*time.Millisecond)
	spread := func(owned map[string][]int) bool {
		var all []int
		for _, cs := range owned {
			if len(cs) != 2 {
				return false
			}
			all = append(all, cs...)
		}
		slices.Sort(all)
		return slices.Equal(all, []int{0, 1, 2, 3, 4, 5})
	}
	waitOwned(t, hosts, "two clusters on each of three hosts", spread)
	if n := plans.Load(); n != 1 {
		t.Errorf("the plan was made %d times, want once", n)
	}
	if n := o.ownedTwice(); n != 0 {
		t.Errorf("a cluster ran on two hosts with valid leases %d times", n)
	}
}

func TestHostCutOffIsFencedAndItsClustersTakenAfterTheTTL(t *testing.T) {
	t.Parallel()
	s, err := StartServer(ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	o := newOwnership()
	var plans atomic.Int32
	ttl := 300 * time.Millisecond
	hosts := startTestHosts(t, s, "lease2", 3, o, &plans, ttl)
	before := waitOwned(t, hosts, "every cluster owned", func(owned map[string][]int) bool {
		n := 0
		for _, cs := range owned {
			n += len(cs)
		}
		return n == 6 && len(owned["h0"]) > 0
	})
	lost := before["h0"]
	// h0's connection goes away without releasing anything.
	cut := time.Now()
	hosts[0].nc.Close()
	after := waitOwned(t, hosts, "h0's clusters on the other hosts", func(owned map[string][]int) bool {
		n := 0
		for _, id := range []string{"h1", "h2"} {
			n += len(owned[id])
		}
		return n == 6 && len(owned["h0"]) == 0
	})
	if d := time.Since(cut); d < ttl {
		t.Errorf("h0's clusters moved %v after its connection was cut, before the lease TTL (%v)", d, ttl)
	}
	if n := o.ownedTwice(); n != 0 {
		t.Errorf("a cluster ran on two hosts with valid leases %d times", n)
	}
	for _, c := range lost {
		if !slices.Contains(after["h1"], c) && !slices.Contains(after["h2"], c) {
			t.Errorf("cluster %d of h0 not taken over: %v", c, after)
		}
	}
	// Nothing else moved.
	for _, id := range []string{"h1", "h2"} {
		for _, c := range before[id] {
			if !slices.Contains(after[id], c) {
				t.Errorf("cluster %d moved away from %s, which stayed", c, id)
			}
		}
	}
}

// A lease that has been seen expired stays expired: a renewal that
// completes late must not revive a cluster that stopped delivering.
func TestExpiredLeaseIsNotRevived(t *testing.T) {
	t.Parallel()
	l := &heldLease{key: leaseKey(0), epoch: 1}
	now := time.Now()
	l.deadline.Store(now.Add(time.Hour).UnixNano())
	if !l.extend(now.Add(2 * time.Hour)) {
		t.Fatal("a valid lease was not extended")
	}
	if !l.Deadline().Equal(time.Unix(0, now.Add(2*time.Hour).UnixNano())) {
		t.Errorf("deadline %v after extending to now+2h", l.Deadline())
	}
	l.deadline.Store(now.Add(-time.Millisecond).UnixNano())
	if l.valid(now) {
		t.Fatal("a lease past its deadline is valid")
	}
	if l.extend(now.Add(time.Hour)) {
		t.Error("an expired lease was extended")
	}
	if l.valid(now.Add(-time.Hour)) {
		t.Error("an expired lease became valid again")
	}
}
