package runtime

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/shardgroup"
)

var errDatabaseDown = errors.New("database down")

// script gives each cluster's Setup calls their outcomes in order (past
// the end, Setup succeeds) and counts Setups and Shutdown hooks. A Setup
// that succeeds registers the counter's listener.
type script struct {
	seen *counter

	mu        sync.Mutex // guards the fields below
	outcomes  map[int][]error
	setups    map[int]int
	shutdowns map[int]int
}

func newScript(outcomes map[int][]error) *script {
	return &script{seen: newCounter(), outcomes: outcomes, setups: map[int]int{}, shutdowns: map[int]int{}}
}

type scriptBot struct {
	s       *script
	cluster int
}

func (s *script) bot(cluster int) Bot { return scriptBot{s, cluster} }

func (b scriptBot) Setup(ctx context.Context, g *shardgroup.Group) error {
	b.s.mu.Lock()
	n := b.s.setups[b.cluster]
	b.s.setups[b.cluster]++
	var err error
	if o := b.s.outcomes[b.cluster]; n < len(o) {
		err = o[n]
	}
	b.s.mu.Unlock()
	if err != nil {
		return err
	}
	return b.s.seen.bot(b.cluster).Setup(ctx, g)
}

func (b scriptBot) Shutdown(context.Context) error {
	b.s.mu.Lock()
	b.s.shutdowns[b.cluster]++
	b.s.mu.Unlock()
	return nil
}

func (s *script) counts(cluster int) (setups, shutdowns int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.setups[cluster], s.shutdowns[cluster]
}

// deliver dispatches a message to the guild and waits until user code
// has seen it.
func (s *script) deliver(t *testing.T, srv *discordtest.Server, guild, nonce int) {
	t.Helper()
	g := srv.GuildID(guild)
	if _, err := srv.Dispatch(g, "MESSAGE_CREATE", srv.MessageCreate(g, "hi", nonce)); err != nil {
		t.Fatal(err)
	}
	s.seen.wait(t, itoa(nonce))
}

// TestSetupErrorOnFirstStartFailsTheCluster: a cluster whose Setup fails
// at Run's start is restarted within MaxRestarts, then reported failed
// with the Setup's error; the other cluster serves on and Run goes on.
func TestSetupErrorOnFirstStartFailsTheCluster(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(time.Millisecond))
	defer srv.Close()
	sc := newScript(map[int][]error{1: {errDatabaseDown, errDatabaseDown}})
	cfg := testConfig(srv)
	cfg.Bot, cfg.Clusters, cfg.MaxRestarts, cfg.RestartBackoff = sc.bot, 2, 1, time.Millisecond
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec := record(rt, EventClusterRestarted, EventClusterFailed, EventClusterReady)
	errc := make(chan error, 1)
	go func() { errc <- rt.Run(context.Background()) }()
	waitFor(t, func() bool { return len(rec.of(EventClusterFailed)) == 1 && len(rec.of(EventClusterReady)) == 1 })

	failed, restarts := rec.of(EventClusterFailed)[0].(ClusterFailed), rec.of(EventClusterRestarted)
	if failed.Cluster != 1 || !errors.Is(failed.Err, errDatabaseDown) {
		t.Fatalf("cluster_failed %+v, want cluster 1 failing with the Setup's error", failed)
	}
	if len(restarts) != 1 || !restartedOnce(restarts[0]) || !errors.Is(restarts[0].(ClusterRestarted).Err, errDatabaseDown) {
		t.Fatalf("restarts %+v, want one of cluster 1, counted 1 of 1, for the Setup's error", restarts)
	}
	if setups, _ := sc.counts(1); setups != 2 {
		t.Fatalf("cluster 1's Setup ran %d times, want 2 (the start and one restart)", setups)
	}
	if st := rt.Stats(); !st.Clusters[1].Failed || st.Clusters[0].Failed || st.Clusters[0].State != shardgroup.StateReady {
		t.Fatalf("clusters %+v, want 0 ready and 1 failed", st.Clusters)
	}
	if err := rt.Restart(context.Background(), 1); err == nil || !strings.Contains(err.Error(), "cluster 1 is failed") {
		t.Fatalf("Restart of the failed cluster = %v", err)
	}
	// Cluster 0 serves: a guild of its shards gets its events.
	sc.deliver(t, srv, guildOfCluster(t, rt, srv, 0), 1)
	select {
	case err := <-errc:
		t.Fatalf("Run returned (%v) while a cluster serves", err)
	default:
	}
	if err := rt.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// guildOfCluster returns the index of a guild whose shard the cluster runs.
func guildOfCluster(t *testing.T, rt *Runtime, srv *discordtest.Server, cluster int) int {
	t.Helper()
	g := rt.groups()[cluster]
	for i := range srv.Guilds() {
		shard := int((srv.GuildID(i) >> 22) % uint64(g.ShardCount()))
		for _, id := range g.ShardIDs() {
			if id == shard {
				return i
			}
		}
	}
	t.Fatalf("no guild on cluster %d", cluster)
	return 0
}

// TestSetupErrorInSoftRestartKeepsTheOldInstance: when the new instance's
// Setup fails, SoftRestart returns its error, the old instance serves on
// (its Shutdown hook does not run, no session is touched), and nothing is
// counted against the restart budget; a later soft restart succeeds.
func TestSetupErrorInSoftRestartKeepsTheOldInstance(t *testing.T) {
	srv := smallServer()
	defer srv.Close()
	sc := newScript(map[int][]error{0: {nil, errDatabaseDown}})
	cfg := testConfig(srv)
	cfg.Bot, cfg.MaxRestarts = sc.bot, 1
	rt, stop := startFleet(t, cfg)
	defer stop()
	rec := record(rt, EventClusterRestarted, EventSoftRestartHandedOver)
	ctx := context.Background()
	old, before := rt.groups()[0], srv.Stats()

	err := rt.SoftRestart(ctx, 0)
	if !errors.Is(err, errDatabaseDown) || !strings.Contains(err.Error(), "old instance keeps serving") {
		t.Fatalf("SoftRestart = %v, want the Setup's error and the old instance serving", err)
	}
	if rt.groups()[0] != old {
		t.Fatal("the failed instance replaced the old one")
	}
	sc.deliver(t, srv, 0, 1) // the old instance's listener still hears events
	after := srv.Stats()
	if setups, shutdowns := sc.counts(0); setups != 2 || shutdowns != 0 {
		t.Fatalf("Setup ran %d times and Shutdown %d, want 2 and 0", setups, shutdowns)
	}
	if after.Resumes != before.Resumes || after.Identifies != before.Identifies {
		t.Fatalf("resumes %d -> %d, identifies %d -> %d: the sessions were touched",
			before.Resumes, after.Resumes, before.Identifies, after.Identifies)
	}
	if n := len(rec.of(EventClusterRestarted)) + len(rec.of(EventSoftRestartHandedOver)); n != 0 {
		t.Fatalf("%d restart events for a soft restart that did not happen", n)
	}
	if st := rt.Stats().Clusters[0]; st.Restarts != 0 || st.Failed {
		t.Fatalf("cluster stats %+v, want no restart counted", st)
	}

	// MaxRestarts is 1 and none was spent: the next soft restart goes.
	if err := rt.SoftRestart(ctx, 0); err != nil {
		t.Fatalf("second SoftRestart: %v", err)
	}
	if rt.groups()[0] == old || srv.Stats().Identifies != before.Identifies {
		t.Fatal("the second soft restart did not hand over")
	}
	if _, shutdowns := sc.counts(0); shutdowns != 1 {
		t.Fatalf("old instance's Shutdown ran %d times, want 1", shutdowns)
	}
	sc.deliver(t, srv, 0, 2)
}

// TestSetupErrorInSupervisedRestartUsesTheBudget: a hard restart whose
// Setup fails returns the error, and the cluster is restarted under
// supervision; each failed Setup counts against MaxRestarts, and once
// they are used up the cluster is failed while the other serves on.
func TestSetupErrorInSupervisedRestartUsesTheBudget(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(time.Millisecond))
	defer srv.Close()
	// Cluster 1 starts, then every Setup fails: the restart's, and the
	// supervisor's.
	sc := newScript(map[int][]error{1: {nil, errDatabaseDown, errDatabaseDown}})
	cfg := testConfig(srv)
	cfg.Bot, cfg.Clusters, cfg.MaxRestarts, cfg.RestartBackoff = sc.bot, 2, 1, time.Millisecond
	rt, stop := startFleet(t, cfg)
	defer stop()
	rec := record(rt, EventClusterRestarted, EventClusterFailed)

	if err := rt.Restart(context.Background(), 1); !errors.Is(err, errDatabaseDown) || !strings.Contains(err.Error(), "restarts under supervision") {
		t.Fatalf("Restart = %v, want the Setup's error", err)
	}
	waitFor(t, func() bool { return len(rec.of(EventClusterFailed)) == 1 })
	restarts := rec.of(EventClusterRestarted)
	if len(restarts) != 1 || !restartedOnce(restarts[0]) {
		t.Fatalf("restarts %+v, want the restart's failure counted 1 of 1", restarts)
	}
	if f := rec.of(EventClusterFailed)[0].(ClusterFailed); f.Cluster != 1 || !errors.Is(f.Err, errDatabaseDown) {
		t.Fatalf("cluster_failed %+v, want cluster 1 with the Setup's error", f)
	}
	if setups, _ := sc.counts(1); setups != 3 {
		t.Fatalf("cluster 1's Setup ran %d times, want 3 (start, restart, supervised restart)", setups)
	}
	if st := rt.Stats(); !st.Clusters[1].Failed || st.Clusters[0].Failed {
		t.Fatalf("clusters %+v, want 1 failed and 0 serving", st.Clusters)
	}
	sc.deliver(t, srv, guildOfCluster(t, rt, srv, 0), 1)
}

// restartedOnce reports whether e is cluster 1's restart counted 1 of 1.
func restartedOnce(e Event) bool {
	r, ok := e.(ClusterRestarted)
	return ok && r.Cluster == 1 && r.Restarts == 1 && r.MaxRestarts == 1
}
