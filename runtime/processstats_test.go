package runtime

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/shardgroup"
)

// reportingProcesses is a process mode whose children are values in this
// process: each reports its shards ready at once, and its cluster's state
// as a child's report would.
type reportingProcesses struct {
	mu   sync.Mutex // guards next
	next int        // the next fake pid
}

func (p *reportingProcesses) Transport() bus.Transport { return nil }
func (p *reportingProcesses) Child(context.Context, Config, func()) (bool, error) {
	return false, nil
}
func (p *reportingProcesses) Start(context.Context, ProcessFleet) (ProcessPool, error) { return p, nil }
func (p *reportingProcesses) Close(context.Context) error                              { return nil }
func (p *reportingProcesses) Resharded(context.Context, int) error                     { return nil }

func (p *reportingProcesses) Spawn(_ context.Context, spec ChildSpec) (ChildProcess, error) {
	p.mu.Lock()
	p.next++
	pid := 1000 + p.next
	p.mu.Unlock()
	ch := &reportingChild{pid: pid, cluster: spec.Cluster, shards: spec.Shards, exited: make(chan struct{})}
	for _, sh := range spec.Shards {
		spec.Report(ShardReady{Cluster: spec.Cluster, Shard: sh})
	}
	spec.Report(ClusterReady{Cluster: spec.Cluster})
	return ch, nil
}

type reportingChild struct {
	pid, cluster int
	shards       []int
	once         sync.Once
	exited       chan struct{}
}

func (c *reportingChild) Pid() int                { return c.pid }
func (c *reportingChild) Exited() <-chan struct{} { return c.exited }
func (c *reportingChild) Err() error              { return nil }
func (c *reportingChild) HandOver(context.Context) (map[int]shardgroup.Session, error) {
	return nil, nil
}
func (c *reportingChild) Resume(context.Context, map[int]shardgroup.Session) error { return nil }
func (c *reportingChild) Deliver(context.Context) error                            { return nil }
func (c *reportingChild) Sync(context.Context, bool) error                         { return nil }
func (c *reportingChild) Stop(context.Context, bool) error {
	c.once.Do(func() { close(c.exited) })
	return nil
}

// ClusterStats is the child's report: every shard ready, 3 guilds each,
// and figures the parent must not take (ID, restarts) set wrong.
func (c *reportingChild) ClusterStats() (ClusterStats, bool) {
	cs := ClusterStats{ID: -1, Restarts: 99, State: shardgroup.StateReady, Guilds: 3 * len(c.shards), Users: 5}
	for _, sh := range c.shards {
		cs.Shards = append(cs.Shards, ShardStats{ID: sh, State: shardgroup.StateReady, Latency: 7 * time.Millisecond, Guilds: 3})
	}
	return cs, true
}

func (c *reportingChild) Process() ProcessStats {
	return ProcessStats{PID: c.pid, RSS: uint64(c.cluster+1) << 20}
}

var _ ChildReporter = (*reportingChild)(nil)

func TestStatsShowEachChildProcess(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	cfg := testConfig(s)
	cfg.Clusters = 2
	cfg.Processes = &reportingProcesses{}
	rt, stop := startFleet(t, cfg)
	defer func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	}()
	if rt.Processes() != cfg.Processes {
		t.Error("Processes() is not Config.Processes")
	}
	// The fake children report ready inside Spawn, before the runtime
	// holds them: the fleet can be ready a moment before its stats know
	// both children.
	var st Stats
	waitFor(t, func() bool {
		st = rt.Stats()
		for _, c := range st.Clusters {
			if c.Process == nil {
				return false
			}
		}
		return len(st.Clusters) == 2
	})
	if st.ShardsReady != 4 || st.Guilds != 12 || st.Users != 10 {
		t.Errorf("shards ready %d, guilds %d, users %d; want 4, 12 and 10 from the children's reports", st.ShardsReady, st.Guilds, st.Users)
	}
	pids := map[int]bool{}
	for i, c := range st.Clusters {
		if c.ID != i || c.Restarts != 0 {
			t.Errorf("cluster %d: ID %d, restarts %d: want the parent's, not the report's", i, c.ID, c.Restarts)
		}
		if c.Process == nil {
			t.Fatalf("cluster %d: no Process", i)
		}
		if c.Process.RSS != uint64(i+1)<<20 {
			t.Errorf("cluster %d: RSS %d, want %d", i, c.Process.RSS, uint64(i+1)<<20)
		}
		pids[c.Process.PID] = true
		for _, sh := range c.Shards {
			if sh.State != shardgroup.StateReady || sh.Latency != 7*time.Millisecond {
				t.Errorf("cluster %d shard %d: %v, latency %v", i, sh.ID, sh.State, sh.Latency)
			}
		}
	}
	if len(pids) != 2 {
		t.Errorf("pids %v: want one per cluster", pids)
	}
	// Clusters, the cheap view, shows the processes too; a restart
	// starts a new child, counted and with a new pid.
	if err := rt.Restart(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	cs := rt.Clusters()
	if cs[1].Process == nil || pids[cs[1].Process.PID] || cs[1].Restarts != 1 {
		t.Errorf("after a restart: %+v, want a new pid and 1 restart", cs[1].Process)
	}
}
