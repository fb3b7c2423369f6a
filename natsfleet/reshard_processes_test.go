package natsfleet_test

import (
	"context"
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/natsfleet"
	"github.com/gofleet/fleet/runtime"
)

// fleetChildren lists the running child processes of the fleet whose
// prefix is prefix, standby ones included.
func fleetChildren(prefix string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !alive(pid) {
			continue
		}
		env, _ := os.ReadFile("/proc/" + e.Name() + "/environ")
		if strings.Contains(string(env), natsfleet.ChildEnv+"=") && strings.Contains(string(env), `"prefix":"`+prefix+`"`) {
			out = append(out, pid)
		}
	}
	slices.Sort(out)
	return out
}

// identifiesAt counts the IDENTIFYs s received at shard count shards
// since from.
func identifiesAt(s *discordtest.Server, shards int, from time.Time) int {
	n := 0
	for _, id := range s.Identifies() {
		if id.Shards == shards && !id.At.Before(from) {
			n++
		}
	}
	return n
}

// progress waits for a ReshardProgress from event index from on: a child
// of the new plan has a shard ready.
func (f *procFleet) progress(t *testing.T, from int) {
	t.Helper()
	f.waitEvent(t, from, "ReshardProgress", func(e runtime.Event) bool {
		_, ok := e.(runtime.ReshardProgress)
		return ok
	})
}

// TestProcessesReshardOverlaps runs a reshard in process mode against
// what may happen meanwhile, one subtest each, on one fleet. A shard of
// the new plan is held back by the gateway so that the reshard waits
// before its switch.
func TestProcessesReshardOverlaps(t *testing.T) {
	s := procServer(t)
	store := &runtime.MemorySessionStore{}
	f := startProcFleet(t, s, 2, func(c *runtime.Config) { c.SessionStore = store })
	var fleetPrefix string
	{
		// The fleet's children carry its prefix; the first ones are the
		// ones Stats shows.
		pids := []int{f.pid(t, 0), f.pid(t, 1)}
		env, _ := os.ReadFile("/proc/" + strconv.Itoa(pids[0]) + "/environ")
		_, rest, _ := strings.Cut(string(env), `"prefix":"`)
		fleetPrefix, _, _ = strings.Cut(rest, `"`)
		if got := fleetChildren(fleetPrefix); !slices.Equal(got, sorted(pids)) {
			t.Fatalf("the fleet's children %v, want %v", got, pids)
		}
	}

	// A second reshard is refused; a child of the old plan killed with
	// SIGKILL is restarted and resumes at the old count (the new plan's
	// children saved nothing over its sessions); a soft restart asked
	// meanwhile waits for the reshard and acts on the new plan.
	t.Run("second reshard, crash and soft restart", func(t *testing.T) {
		ctx := testCtx(t)
		s.HoldShard(7) // a shard only the new plan has, in its cluster 1
		defer s.ReleaseShard(7)
		m := f.mark()
		done := make(chan error, 1)
		go func() { done <- f.rt.Reshard(context.Background(), runtime.ReshardOptions{Shards: 8, Clusters: 2}) }()
		f.progress(t, m)
		if err := f.rt.Reshard(ctx, runtime.ReshardOptions{Shards: 12, Clusters: 3}); !errors.Is(err, runtime.ErrReshardInProgress) {
			t.Errorf("a second Reshard: %v, want ErrReshardInProgress", err)
		}
		old := f.pid(t, 1) // the old plan's child still serves the cluster's address
		killed := time.Now()
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_, next := f.waitEvent(t, m, "ClusterRestarted of cluster 1", func(e runtime.Event) bool {
			r, ok := e.(runtime.ClusterRestarted)
			return ok && r.Cluster == 1
		})
		// The new plan's cluster 1 has the held shard: this is the old
		// plan's, restarted.
		f.waitEvent(t, next, "ClusterReady of cluster 1", func(e runtime.Event) bool {
			r, ok := e.(runtime.ClusterReady)
			return ok && r.Cluster == 1
		})
		restarted := f.pid(t, 1)
		if restarted == old {
			t.Fatalf("cluster 1 still in pid %d after SIGKILL", old)
		}
		if n := identifiesAt(s, 4, killed); n != 0 {
			t.Errorf("the old plan's restarted child identified %d shards, want 0: it resumes its checkpoints", n)
		}
		soft := make(chan error, 1)
		go func() { soft <- f.rt.SoftRestart(context.Background(), 0) }()
		s.ReleaseShard(7)
		if err := <-done; err != nil {
			t.Fatalf("Reshard: %v", err)
		}
		if err := <-soft; err != nil {
			t.Fatalf("SoftRestart during the reshard: %v", err)
		}
		_, afterDone := f.waitEvent(t, m, "ReshardDone", func(e runtime.Event) bool {
			_, ok := e.(runtime.ReshardDone)
			return ok
		})
		f.waitEvent(t, afterDone, "SoftRestartStarted after ReshardDone", func(e runtime.Event) bool {
			_, ok := e.(runtime.SoftRestartStarted)
			return ok
		})
		st := f.rt.Stats()
		if st.Shards != 8 || st.ShardsReady != 8 || len(st.Clusters) != 2 || len(st.Clusters[0].Shards) != 4 {
			t.Fatalf("after the reshard: %d shards, %d ready, %d clusters, want 8 in 2 of 4", st.Shards, st.ShardsReady, len(st.Clusters))
		}
		var pids []int
		for _, c := range st.Clusters {
			pids = append(pids, c.Process.PID)
		}
		if alive(old) || alive(restarted) || !slices.Equal(fleetChildren(fleetPrefix), sorted(pids)) {
			t.Errorf("children %v after the reshard, want only the new plan's %v", fleetChildren(fleetPrefix), pids)
		}
		if v := s.Stats().Violations; len(v) != 0 {
			t.Errorf("violations %v", v)
		}
	})

	// A reshard whose ctx ends before the switch stops the new plan's
	// children; the old ones serve on.
	t.Run("ctx ends", func(t *testing.T) {
		before := fleetChildren(fleetPrefix)
		s.HoldShard(15)
		defer s.ReleaseShard(15)
		m := f.mark()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- f.rt.Reshard(ctx, runtime.ReshardOptions{Shards: 16, Clusters: 2}) }()
		f.progress(t, m)
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("Reshard with its ctx cancelled: %v, want context.Canceled", err)
		}
		if got := fleetChildren(fleetPrefix); !slices.Equal(got, before) {
			t.Errorf("children %v after the reshard gave up, want the old plan's %v", got, before)
		}
		if st := f.rt.Stats(); st.Shards != 8 || st.ShardsReady != 8 {
			t.Errorf("after the reshard gave up: %d shards, %d ready, want the old plan's 8", st.Shards, st.ShardsReady)
		}
	})

	// Shutdown during a reshard stops every child, old and new, and saves
	// the old plan's sessions only.
	t.Run("shutdown", func(t *testing.T) {
		s.HoldShard(15)
		defer s.ReleaseShard(15)
		m := f.mark()
		done := make(chan error, 1)
		go func() { done <- f.rt.Reshard(context.Background(), runtime.ReshardOptions{Shards: 16, Clusters: 2}) }()
		f.progress(t, m)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := f.rt.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-done; !errors.Is(err, runtime.ErrNotRunning) {
			t.Errorf("Reshard stopped by Shutdown: %v, want ErrNotRunning", err)
		}
		if got := fleetChildren(fleetPrefix); len(got) != 0 {
			t.Errorf("children %v left after Shutdown", got)
		}
		saved, _ := store.Load(ctx)
		counts := map[int]int{}
		for _, sess := range saved {
			counts[sess.ShardCount]++
		}
		if len(counts) != 1 || counts[8] != 8 {
			t.Errorf("sessions saved by shard count: %v, want the old plan's 8 of 8", counts)
		}
	})
}

func sorted(s []int) []int {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
