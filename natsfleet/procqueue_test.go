package natsfleet_test

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/natsfleet"
	"github.com/gofleet/fleet/runtime"
)

// TestProcessesIdentifyGrantKilled: a child killed with SIGKILL while its
// shard holds an identify turn (its IDENTIFY sent, the READY not yet
// come) gives the turn back by exiting: the bucket's next shards, in the
// child that replaces it and in the other, identify without waiting out
// the lease (ten minutes here), and none too early.
func TestProcessesIdentifyGrantKilled(t *testing.T) {
	s, err := discordtest.Start(discordtest.WithGuilds(16), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	// Cluster 0 runs shards 0 and 1, cluster 1 shards 2 and 3; bucket 0
	// is shards 0 and 2. Shard 0's IDENTIFY gets no READY until released.
	s.HoldShard(0)
	prefix := procPrefix + "-" + newPrefix()
	rt := runUntilIdentify(t, fleetConfig(fleetArgs{Token: s.Token(), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		Interval: s.IdentifyWindow(), Clusters: 2, Prefix: prefix, IdentifyLease: 10 * time.Minute,
		ColdStart: true}), 0)
	pid := fleetChildPid(t, prefix, 0)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s.ReleaseShard(0) // the new child's IDENTIFY is answered
	select {
	case <-rt.Ready():
	case <-rt.Done():
		t.Fatalf("Run returned: %v", rt.Err())
	case <-time.After(60 * time.Second):
		t.Fatal("the fleet was not ready within 60 s: the killed child's turn was not given back")
	}
	st := s.Stats()
	if v := st.Violations["identify_concurrency"]; v != 0 {
		t.Errorf("%d identify violations, want 0", v)
	}
	if st.Identifies < 5 {
		t.Errorf("%d IDENTIFYs, want at least 5 (shard 0 twice)", st.Identifies)
	}
}

// fleetChildPid is the pid of the running child of cluster in the fleet
// of prefix.
func fleetChildPid(t *testing.T, prefix string, cluster int) int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Skip("no /proc to find the child in:", err)
	}
	me := "\nPPid:\t" + strconv.Itoa(os.Getpid()) + "\n"
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		status, _ := os.ReadFile("/proc/" + e.Name() + "/status")
		env, _ := os.ReadFile("/proc/" + e.Name() + "/environ")
		if strings.Contains(string(status), me) && strings.Contains(string(env), natsfleet.ChildEnv+"=") &&
			strings.Contains(string(env), `"cluster":`+strconv.Itoa(cluster)+",") &&
			strings.Contains(string(env), `"prefix":"`+prefix+`"`) {
			return pid
		}
	}
	t.Fatalf("no child process of cluster %d", cluster)
	return 0
}

// TestProcessesIdentifyManyChildren: four children identify their
// shards at once through the parent's queue: every shard READY, none
// too early for its bucket.
func TestProcessesIdentifyManyChildren(t *testing.T) {
	s, err := discordtest.Start(discordtest.WithGuilds(32), discordtest.WithRecommendedShards(16),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	f := startProcFleet(t, s, 4, func(c *runtime.Config) {
		*c = fleetConfig(fleetArgs{Token: s.Token(), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
			Interval: s.IdentifyWindow(), Clusters: 4, Prefix: procPrefix + "-" + newPrefix(), ColdStart: true})
	})
	st := s.Stats()
	if st.Identifies != 16 || st.Violations["identify_concurrency"] != 0 {
		t.Errorf("identifies %d, identify violations %d; want 16 and 0", st.Identifies, st.Violations["identify_concurrency"])
	}
	// The fleet is ready once every shard is: each READY came from a child.
	ready := map[int]bool{}
	f.mu.Lock()
	for _, e := range f.events {
		if e, ok := e.(runtime.ShardReady); ok {
			ready[e.Shard] = true
		}
	}
	f.mu.Unlock()
	if len(ready) != 16 {
		t.Errorf("%d shards reported READY, want 16", len(ready))
	}
}
