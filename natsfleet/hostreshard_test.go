package natsfleet_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/natsfleet"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// startReshardHost starts host id of a fleet of 4 shards in 4 clusters.
// While hold is open (nil: never), the Setup of its clusters at 8 shards (a reshard's
// new clusters) waits, so that they never become READY.
// onNew, if set, is given each new cluster's group.
func startReshardHost(t *testing.T, nc *nats.Conn, s *discordtest.Server, fleet, id string, d *deliveries, hold <-chan struct{},
	onNew func(*shardgroup.Group)) *runningHost {
	t.Helper()
	user := d.botOn(id)
	bot := func(c int) runtime.Bot {
		inner := user(c)
		return runtime.BotFunc(func(ctx context.Context, g *shardgroup.Group) error {
			if onNew != nil && g.ShardCount() == 8 {
				onNew(g)
			}
			if hold != nil && g.ShardCount() == 8 {
				select {
				case <-hold:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return inner.Setup(ctx, g)
		})
	}
	h, err := natsfleet.NewHost(testCtx(t), nc, natsfleet.HostConfig{Fleet: fleet, ID: id, LeaseTTL: reshardTTL, Logger: hostLogger(id),
		Runtime: runtime.Config{Token: runtime.Token(s.Token()), Bot: bot, GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
			IdentifyInterval: s.IdentifyWindow(), Shards: 4, Clusters: 4, MaxConcurrencyOverride: 4, ShutdownTimeout: 5 * time.Second,
			CheckpointInterval: checkpointEvery}})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	r := &runningHost{h: h, nc: nc, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- h.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

// reshardTTL is the lease TTL of the reshard tests, which run two
// generations of clusters at once: twice the other host tests', so that
// the key-value writes of a loaded machine fit in it.
const reshardTTL = 2 * hostTTL

func reshardServer() *discordtest.Server {
	return discordtest.NewServer(discordtest.WithGuilds(16), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(5*time.Millisecond))
}

func balancedOn(s *discordtest.Server, hosts ...string) func(natsfleet.FleetStatus) bool {
	return func(st natsfleet.FleetStatus) bool {
		o := ownedBy(st)
		for _, h := range hosts {
			if len(o[h]) != 4/len(hosts) {
				return false
			}
		}
		return allReady(s, 4)
	}
}

// onNewPlan reports whether the fleet runs plan revision rev at 8 shards,
// every cluster owned by one of hosts and every shard READY.
func onNewPlan(s *discordtest.Server, rev int, hosts ...string) func(natsfleet.FleetStatus) bool {
	return func(st natsfleet.FleetStatus) bool {
		if st.PlanRevision != rev || st.Shards != 8 || len(st.Clusters) != 4 {
			return false
		}
		for _, c := range st.Clusters {
			if !slices.Contains(hosts, c.Owner) || len(c.Shards) != 2 {
				return false
			}
		}
		return allReady(s, 8)
	}
}

// Under load, a reshard asked on any host moves the fleet from 4 to 8
// shards across both hosts: the new clusters identify through the
// fleet's queue (no violation), nothing is lost across the switch, and
// the events that reached both plans during it are counted.
func TestHostReshardUnderLoadLosesNothingAcrossTheSwitch(t *testing.T) {
	s := reshardServer() // not parallel: two generations of clusters load the machine enough
	defer s.Close()
	fleet := newPrefix()
	d := newDeliveries()
	var mu sync.Mutex // guards groups
	var groups []*shardgroup.Group
	onNew := func(g *shardgroup.Group) {
		mu.Lock()
		groups = append(groups, g)
		mu.Unlock()
	}
	a := startReshardHost(t, connect(t), s, fleet, "a", d, nil, onNew)
	b := startReshardHost(t, connect(t), s, fleet, "b", d, nil, onNew)
	st := waitStatus(t, a.h, "two clusters on each host", balancedOn(s, "a", "b"))
	if st.PlanRevision != 1 || st.Reshard != nil {
		t.Fatalf("before any reshard: plan revision %d, reshard %+v; want 1 and none", st.PlanRevision, st.Reshard)
	}
	asker := b // not necessarily the leader
	if st.Leader == "b" {
		asker = a
	}
	before := s.Stats()
	sd := startSender(s, 16, "reshard")
	eventually(t, "traffic delivered", func() bool { return !d.lastOn("a").IsZero() && !d.lastOn("b").IsZero() })
	if err := asker.h.Reshard(testCtx(t), 8); err != nil {
		t.Fatalf("Reshard(8) from %s: %v", asker.h.ID(), err)
	}
	end := waitStatus(t, a.h, "8 shards in 4 clusters on a and b", onNewPlan(s, 2, "a", "b"))
	// Some traffic after the switch, on the new plan only.
	switched := time.Now()
	eventually(t, "traffic after the switch", func() bool { return d.lastOn("a").After(switched) && d.lastOn("b").After(switched) })
	sent := sd.finish()
	lost, dup := d.check(t, sent, 10*time.Second)
	after := s.Stats()
	t.Logf("reshard 4 -> 8 under load: %d messages, %d lost, %d delivered twice at the switch; %d IDENTIFYs, %d RESUMEs; sessions ended %v",
		len(sent), lost, dup, after.Identifies-before.Identifies, after.Resumes-before.Resumes, after.SessionsEnded)
	if lost != 0 {
		t.Errorf("%d of %d messages lost across the reshard", lost, len(sent))
	}
	if len(after.Violations) != 0 {
		t.Errorf("violations: %v", after.Violations)
	}
	if n := after.Identifies - before.Identifies; n < 8 {
		t.Errorf("%d IDENTIFYs, want at least 8 (the new plan's shards)", n)
	}
	if r := end.Reshard; r == nil || r.Phase != "done" || r.Running || r.Revision != 2 || r.Shards != 8 {
		t.Errorf("status after the reshard: %+v, want revision 2 to 8 shards done", r)
	}
	if got := append(a.h.Owned(), b.h.Owned()...); len(got) != 4 {
		t.Errorf("a runs %v and b %v after the switch, want the 4 new clusters between them", a.h.Owned(), b.h.Owned())
	}
	// The new clusters' caches hold their guilds, received while they
	// did not deliver: 16 guilds over 8 shards, 4 per cluster of 2.
	mu.Lock()
	for _, g := range groups {
		if g.State() == shardgroup.StateReady && g.Client().Caches().GuildsLen() != 4 {
			t.Errorf("new cluster %d caches %d guilds, want 4", g.ID(), g.Client().Caches().GuildsLen())
		}
	}
	mu.Unlock()
	// Both hosts see the same fleet, and /healthz names the revision.
	bst := waitStatus(t, b.h, "b sees the new plan", onNewPlan(s, 2, "a", "b"))
	if bst.PlanRevision != 2 {
		t.Errorf("b sees plan revision %d", bst.PlanRevision)
	}
	srv := httptest.NewServer(b.h.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "plan revision 2, 8 shards") {
		t.Errorf("/healthz: %d %q, want 200 naming plan revision 2", resp.StatusCode, body)
	}
	// Asking for the shard count the fleet has changes nothing.
	if err := a.h.Reshard(testCtx(t), 8); err != nil {
		t.Errorf("Reshard to the current count: %v", err)
	}
	if err := a.h.Reshard(testCtx(t), 6); err == nil || !strings.Contains(err.Error(), "multiple of 4") {
		t.Errorf("Reshard(6) with max_concurrency 4: %v, want an error naming the multiple", err)
	}
}

// While a reshard runs, a second one and a drain are refused; when the
// caller's ctx ends before the switch, the reshard is aborted: the new
// clusters stop and the old plan goes on delivering.
func TestHostReshardRefusesASecondAndADrainAndAbortsWhenCtxEnds(t *testing.T) {
	s := reshardServer() // not parallel: two generations of clusters load the machine enough
	defer s.Close()
	fleet := newPrefix()
	d := newDeliveries()
	hold := make(chan struct{}) // the new clusters never get READY
	a := startReshardHost(t, connect(t), s, fleet, "a", d, hold, nil)
	b := startReshardHost(t, connect(t), s, fleet, "b", d, hold, nil)
	waitStatus(t, a.h, "two clusters on each host", balancedOn(s, "a", "b"))

	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	res := make(chan error, 1)
	go func() { res <- a.h.Reshard(ctx, 8) }()
	st := waitStatus(t, b.h, "the new clusters taken, not ready", func(st natsfleet.FleetStatus) bool {
		r := st.Reshard
		if r == nil || r.Phase != "starting" || len(r.Clusters) != 4 {
			return false
		}
		for _, c := range r.Clusters {
			if c.Owner == "" || c.Ready {
				return false
			}
		}
		return true
	})
	if err := b.h.Reshard(testCtx(t), 12); !errors.Is(err, natsfleet.ErrReshardInProgress) {
		t.Errorf("a second Reshard while one runs: %v, want ErrReshardInProgress", err)
	}
	if err := b.h.Drain(testCtx(t)); !errors.Is(err, natsfleet.ErrReshardInProgress) {
		t.Errorf("Drain during a reshard: %v, want ErrReshardInProgress", err)
	}
	if st.PlanRevision != 1 || st.Reshard.Revision != 2 || !st.Reshard.Running {
		t.Errorf("status during the reshard: plan revision %d, reshard %+v", st.PlanRevision, st.Reshard)
	}
	rec := httptest.NewRecorder()
	b.h.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if body := rec.Body.String(); rec.Code != http.StatusOK || !strings.Contains(body, "plan revision 1, 4 shards; resharding to 8 shards (revision 2, starting)") {
		t.Errorf("/healthz during the reshard: %d %q, want 200 naming the reshard", rec.Code, body)
	}

	cancel()
	err := <-res
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Reshard after its ctx ended: %v, want context.Canceled", err)
	}
	waitStatus(t, b.h, "the reshard aborted and its clusters released", func(st natsfleet.FleetStatus) bool {
		r := st.Reshard
		if r == nil || r.Phase != "aborted" || r.Running {
			return false
		}
		for _, c := range r.Clusters {
			if c.Owner != "" {
				return false
			}
		}
		return st.PlanRevision == 1 && st.Shards == 4
	})
	// The old plan still delivers.
	sd := startSender(s, 16, "after-abort")
	since := time.Now()
	eventually(t, "traffic on both hosts", func() bool { return d.lastOn("a").After(since) && d.lastOn("b").After(since) })
	sent := sd.finish()
	if lost, _ := d.check(t, sent, 10*time.Second); lost != 0 {
		t.Errorf("%d of %d messages lost after the abort", lost, len(sent))
	}
	if v := s.Stats().Violations; len(v) != 0 {
		t.Errorf("violations: %v", v)
	}
	// A new reshard can run once the last has ended.
	close(hold)
	if err := b.h.Reshard(testCtx(t), 8); err != nil {
		t.Fatalf("Reshard after an aborted one: %v", err)
	}
	waitStatus(t, a.h, "the fleet at 8 shards, revision 3", onNewPlan(s, 3, "a", "b"))
}

// The leader dies (its NATS connection closed, nothing released) while
// its new clusters are not READY: the other host becomes the leader,
// takes the dead host's old clusters by RESUME and its new ones by
// IDENTIFY, and finishes the reshard. The fleet ends with one plan
// delivering, nothing lost and no identify violation.
func TestHostReshardSurvivesTheLeaderDying(t *testing.T) {
	s := reshardServer() // not parallel: two generations of clusters load the machine enough
	defer s.Close()
	fleet := newPrefix()
	d := newDeliveries()
	never := make(chan struct{}) // the leader's new clusters never get READY
	open := make(chan struct{})
	close(open)
	first := startReshardHost(t, connect(t), s, fleet, "a", d, never, nil)
	waitStatus(t, first.h, "a leading", func(st natsfleet.FleetStatus) bool { return st.Leader == "a" && allReady(s, 4) })
	other := startReshardHost(t, connect(t), s, fleet, "b", d, open, nil)
	waitStatus(t, other.h, "two clusters on each host", balancedOn(s, "a", "b"))

	sd := startSender(s, 16, "leader-dies")
	eventually(t, "traffic delivered", func() bool { return !d.lastOn("a").IsZero() && !d.lastOn("b").IsZero() })
	res := make(chan error, 1)
	go func() { res <- other.h.Reshard(testCtx(t), 8) }()
	waitStatus(t, other.h, "b's new clusters ready, a's not", func(st natsfleet.FleetStatus) bool {
		r := st.Reshard
		if r == nil || r.Phase != "starting" || len(r.Clusters) != 4 {
			return false
		}
		for _, c := range r.Clusters {
			if c.Owner == "" || c.Ready != (c.Owner == "b") {
				return false
			}
		}
		return true
	})
	before := s.Stats()
	died := time.Now()
	first.nc.Close()
	if err := <-res; err != nil {
		t.Fatalf("Reshard with its leader dead: %v", err)
	}
	end := waitStatus(t, other.h, "8 shards in 4 clusters on b", onNewPlan(s, 2, "b"))
	since := time.Now()
	eventually(t, "traffic after the switch", func() bool { return d.lastOn("b").After(since) })
	sent := sd.finish()
	lost, dup := d.check(t, sent, 10*time.Second)
	after := s.Stats()
	t.Logf("reshard with the leader dying: %d messages, %d lost, %d delivered twice; %d IDENTIFYs, %d RESUMEs after the death",
		len(sent), lost, dup, after.Identifies-before.Identifies, after.Resumes-before.Resumes)
	if lost != 0 {
		t.Errorf("%d of %d messages lost", lost, len(sent))
	}
	if len(after.Violations) != 0 {
		t.Errorf("violations: %v", after.Violations)
	}
	// a's two new clusters (4 shards) never delivered: b identifies them;
	// a's two old clusters are resumed from their checkpoints.
	if n := after.Identifies - before.Identifies; n < 4 {
		t.Errorf("%d IDENTIFYs after a died, want at least 4 (a's new clusters' shards)", n)
	}
	if n := after.Resumes - before.Resumes; n < 2 {
		t.Errorf("%d RESUMEs after a died, want at least 2 (a's old clusters' shards)", n)
	}
	if last := d.lastOn("a"); last.After(died.Add(reshardTTL)) {
		t.Errorf("a delivered %v after it died, past its lease TTL (%v)", last.Sub(died), reshardTTL)
	}
	if end.Leader != "b" || end.Reshard == nil || end.Reshard.Leader != "b" || end.Reshard.Phase != "done" {
		t.Errorf("after the leader died: leader %q, reshard %+v; want b to have finished it", end.Leader, end.Reshard)
	}
	if got := other.h.Owned(); !slices.Equal(got, []int{0, 1, 2, 3}) {
		t.Errorf("b runs %v, want the new plan's 4 clusters and nothing else", got)
	}
}
