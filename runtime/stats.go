package runtime

import (
	"bytes"
	"os"
	goruntime "runtime"
	rtmetrics "runtime/metrics"
	"strconv"
	"time"

	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/voice"
	"github.com/disgoorg/snowflake/v2"

	"github.com/gofleet/fleet/shardgroup"
)

// largeThreshold is the member count above which Discord calls a guild
// large: the large_threshold shards identify with (shardgroup's default).
const largeThreshold = 50

// Stats is a snapshot of the fleet: eris-fleet's stats, under Go names.
// Counts come from the clusters' disgo caches, so they cover what the
// configured cache flags keep. The caller owns the slices.
type Stats struct {
	Time   time.Time     `json:"time"`
	Uptime time.Duration `json:"uptime_ns"` // since Run began; 0 before
	// Shards is how many shards this runtime runs (eris-fleet's
	// shardCount); TotalShards is the fleet's count, which differs when
	// the runtime runs a slice of a bigger fleet.
	Shards      int `json:"shards"`
	TotalShards int `json:"total_shards"`
	ShardsReady int `json:"shards_ready"`
	// Guilds, Members (the sum of the guilds' member counts), LargeGuilds
	// (over 50 members) and VoiceConnections add up the clusters. Users
	// is the number of distinct users in the member caches of the whole
	// fleet (in process mode, the sum of each child's distinct users).
	Guilds           int            `json:"guilds"`
	Users            int            `json:"users"`
	Members          int            `json:"members"`
	LargeGuilds      int            `json:"large_guilds"`
	VoiceConnections int            `json:"voice_connections"`
	Memory           MemoryStats    `json:"memory"`
	Clusters         []ClusterStats `json:"clusters"`
	// Services lists the service actors, the central store among them.
	// Bus counts the requests made on the runtime's own bus.
	Services []ServiceStats `json:"services"`
	Bus      BusStats       `json:"bus"`
	REST     RESTStats      `json:"rest"`
	// Startup is where the start-up stands (Runtime.Startup): once every
	// shard is ready, how long it took.
	Startup StartupProgress `json:"startup"`
}

// MemoryStats is the process's memory. Clusters share one process, so a
// cluster's share shows only as the sizes of its caches
// (ClusterStats.Cache).
type MemoryStats struct {
	RSS     uint64 `json:"rss_bytes"`      // resident set size; 0 where the OS does not say (Linux does)
	Heap    uint64 `json:"heap_bytes"`     // Go heap objects, live and not yet swept
	GoTotal uint64 `json:"go_total_bytes"` // all memory the Go runtime has mapped
}

// ClusterStats describes one cluster's current instance.
type ClusterStats struct {
	ID    int              `json:"id"`
	State shardgroup.State `json:"state"` // the group's: its least advanced shard's
	// Failed is set once the cluster has used up MaxRestarts.
	Failed           bool          `json:"failed"`
	Guilds           int           `json:"guilds"`
	Users            int           `json:"users"` // distinct users in its member cache
	Members          int           `json:"members"`
	LargeGuilds      int           `json:"large_guilds"`
	VoiceConnections int           `json:"voice_connections"`
	Uptime           time.Duration `json:"uptime_ns"` // since the instance now serving started
	Restarts         int           `json:"restarts"`  // soft, hard and supervised, since Run began
	ListenerPanics   int64         `json:"listener_panics"`
	Cache            CacheStats    `json:"cache"`
	Shards           []ShardStats  `json:"shards"`
	// Process describes the child process serving the cluster in process
	// mode; nil when the cluster runs in this process.
	Process *ProcessStats `json:"process,omitempty"`
}

// ProcessStats describes the child process serving a cluster in process
// mode.
type ProcessStats struct {
	PID int `json:"pid"`
	// RSS is the child's resident set size, read by the parent from
	// /proc/<pid>/status on Linux, else the Go runtime's mapped memory
	// the child last reported.
	RSS uint64 `json:"rss_bytes"`
	// Reported is when the child last reported its cluster's state (the
	// shards, caches and counts of ClusterStats); zero before its first
	// report.
	Reported time.Time `json:"reported"`
}

// Processes returns Config.Processes: nil when every cluster runs in
// this process.
func (r *Runtime) Processes() Processes { return r.cfg.Processes }

// ChildReporter is what a ChildProcess implements to describe its
// cluster as the parent's Stats and Clusters show it.
type ChildReporter interface {
	// ClusterStats returns the child's last report of its cluster, with
	// its process, and false before its first report.
	ClusterStats() (ClusterStats, bool)
	// Process describes the child process now.
	Process() ProcessStats
}

// CacheStats counts the entries of a cluster's disgo caches.
type CacheStats struct {
	Guilds      int `json:"guilds"`
	Channels    int `json:"channels"`
	Roles       int `json:"roles"`
	Members     int `json:"members"`
	Presences   int `json:"presences"`
	VoiceStates int `json:"voice_states"`
	Messages    int `json:"messages"`
	Emojis      int `json:"emojis"`
	Stickers    int `json:"stickers"`
}

// ShardStats describes one shard.
type ShardStats struct {
	ID      int              `json:"id"`
	State   shardgroup.State `json:"state"`
	Latency time.Duration    `json:"latency_ns"` // last heartbeat round trip; 0 before the first
	Guilds  int              `json:"guilds"`     // in its cluster's cache
	Events  int64            `json:"events"`     // dispatches received by this instance
	Zombies int64            `json:"zombies"`    // connections this instance closed for want of heartbeat ACKs
}

// ServiceStats describes one service (see services.Info).
type ServiceStats struct {
	Name         string        `json:"name"`
	State        string        `json:"state"`     // a services.State
	Uptime       time.Duration `json:"uptime_ns"` // since the instance now serving became ready
	Restarts     int           `json:"restarts"`
	MailboxDepth int           `json:"mailbox_depth"` // commands waiting; -1 while nothing is registered
}

// BusStats describes the requests made on the runtime's IPC bus (zero
// for a Config.Bus the user made).
type BusStats struct {
	Requests int64         `json:"requests"`
	Failures int64         `json:"failures"`
	Latency  time.Duration `json:"latency_ns"` // mean request round trip
}

// RESTStats describes the shared REST limiter; zero without one.
type RESTStats struct {
	Buckets         int `json:"buckets"`
	Queued          int `json:"queued"`
	InFlight        int `json:"in_flight"`
	InvalidRequests int `json:"invalid_requests"` // 401, 403 and non-shared 429s in Discord's window
}

// Stats returns a snapshot of the fleet. It reads the clusters' caches
// under their own short locks, never under the runtime's, and does not
// stop the world, so event handling goes on while it runs; its cost
// grows with the guilds and cached members. It is safe to call at any
// time: before Run it reports no clusters.
func (r *Runtime) Stats() Stats {
	now := time.Now()
	st := Stats{Time: now, Clusters: []ClusterStats{}, Services: []ServiceStats{}}
	r.mu.Lock()
	clusters := append([]*cluster(nil), r.clusters...)
	env, started := r.env, r.started
	r.mu.Unlock()
	if !started.IsZero() {
		st.Uptime = now.Sub(started)
	}
	if env != nil {
		st.Shards, st.TotalShards = env.shards, env.total
	}
	st.Startup = r.startup.snapshot()
	// users maps a user to 1 + the index of the last cluster that counted
	// it, so one map counts distinct users per cluster and fleet-wide.
	users := map[snowflake.ID]int32{}
	childUsers := 0 // the distinct users of clusters in child processes, each counted by its child
	for i, c := range clusters {
		cs := clusterStats(c, now, users, int32(i+1))
		if cs.Process != nil {
			childUsers += cs.Users
		}
		for _, sh := range cs.Shards {
			if sh.State == shardgroup.StateReady {
				st.ShardsReady++
			}
		}
		st.Guilds += cs.Guilds
		st.Members += cs.Members
		st.LargeGuilds += cs.LargeGuilds
		st.VoiceConnections += cs.VoiceConnections
		st.Clusters = append(st.Clusters, cs)
	}
	st.Users = len(users) + childUsers
	if r.services != nil {
		for _, in := range r.services.Services() {
			st.Services = append(st.Services, ServiceStats{Name: in.Name, State: string(in.State), Uptime: in.Uptime,
				Restarts: in.Restarts, MailboxDepth: in.MailboxDepth})
		}
	}
	st.Memory = readMemory()
	st.Bus = r.busStats()
	if l := r.RESTLimiter(); l != nil {
		ls := l.Stats()
		st.REST = RESTStats{Buckets: ls.Buckets, Queued: ls.Queued, InFlight: ls.InFlight, InvalidRequests: ls.InvalidRequests}
	}
	return st
}

// Clusters returns every cluster's state, in cluster order: what Stats
// reports of each, without walking the caches. Its counts are those the
// caches keep (Guilds, VoiceConnections, Cache); Users, Members,
// LargeGuilds and each shard's Guilds, which Stats counts guild by guild,
// are zero. It is cheap enough for every health check and scrape, and
// safe to call at any time: before Run it reports no clusters. The caller
// owns the slices.
func (r *Runtime) Clusters() []ClusterStats {
	now := time.Now()
	r.mu.Lock()
	clusters := append([]*cluster(nil), r.clusters...)
	r.mu.Unlock()
	out := make([]ClusterStats, 0, len(clusters))
	for _, c := range clusters {
		cs, _ := clusterState(c, now)
		out = append(out, cs)
	}
	return out
}

// clusterState describes one cluster from its states and the sizes of its
// caches, and returns its group (nil before its first one).
func clusterState(c *cluster, now time.Time) (ClusterStats, *shardgroup.Group) {
	c.mu.Lock()
	g, startedAt, proc := c.group, c.startedAt, c.proc
	cs := ClusterStats{ID: c.id, Restarts: c.restarts, Failed: c.parked == "failed"}
	if c.proc != nil { // in a child process: the states its events told
		cs.Uptime = now.Sub(startedAt)
		cs.Shards = make([]ShardStats, len(c.shards))
		cs.State = shardgroup.StateReady
		for i, id := range c.shards {
			cs.Shards[i] = ShardStats{ID: id, State: c.states[id]}
			if v := c.states[id]; v != shardgroup.StateReady && (cs.State == shardgroup.StateReady || v < cs.State) {
				cs.State = v // the least advanced shard's, as Group.State
			}
		}
		c.mu.Unlock()
		if rep, ok := proc.(ChildReporter); ok {
			withReport(&cs, rep)
		}
		return cs, nil
	}
	c.mu.Unlock()
	if g == nil {
		cs.Shards = make([]ShardStats, len(c.shards))
		for i, id := range c.shards {
			cs.Shards[i] = ShardStats{ID: id, State: shardgroup.StateIdle}
		}
		return cs, nil
	}
	cs.State = g.State()
	cs.Uptime = now.Sub(startedAt)
	cs.ListenerPanics = g.ListenerPanics()
	infos := g.Shards()
	cs.Shards = make([]ShardStats, len(infos))
	for i, in := range infos {
		cs.Shards[i] = ShardStats{ID: in.ID, State: in.State, Latency: time.Duration(in.Latency), Events: in.Events, Zombies: in.Zombies}
	}
	client := g.Client()
	caches := client.Caches()
	cs.Guilds = caches.GuildsLen()
	if vm := client.VoiceManager(); vm != nil {
		vm.ForEachCon(func(voice.Conn) { cs.VoiceConnections++ })
	}
	cs.Cache = CacheStats{
		Guilds:      cs.Guilds,
		Channels:    caches.ChannelsLen(),
		Roles:       caches.RolesAllLen(),
		Members:     caches.MembersAllLen(),
		Presences:   caches.PresencesAllLen(),
		VoiceStates: caches.VoiceStatesAllLen(),
		Messages:    caches.MessagesAllLen(),
		Emojis:      caches.EmojisAllLen(),
		Stickers:    caches.StickersAllLen(),
	}
	return cs, g
}

// withReport adds to cs, a cluster served by a child process, the
// child's process and its last report: the counts and caches, and each
// shard's latency, guilds and events. The states stay those the child's
// events told, which are fresher.
func withReport(cs *ClusterStats, rep ChildReporter) {
	p := rep.Process()
	cs.Process = &p
	got, ok := rep.ClusterStats()
	if !ok {
		return
	}
	cs.Guilds, cs.Users, cs.Members, cs.LargeGuilds = got.Guilds, got.Users, got.Members, got.LargeGuilds
	cs.VoiceConnections, cs.ListenerPanics, cs.Cache = got.VoiceConnections, got.ListenerPanics, got.Cache
	byID := make(map[int]ShardStats, len(got.Shards))
	for _, sh := range got.Shards {
		byID[sh.ID] = sh
	}
	for i, sh := range cs.Shards {
		if r, ok := byID[sh.ID]; ok {
			cs.Shards[i].Latency, cs.Shards[i].Guilds, cs.Shards[i].Events, cs.Shards[i].Zombies = r.Latency, r.Guilds, r.Events, r.Zombies
		}
	}
}

// clusterStats describes one cluster, walking its caches; mark is the
// cluster's tag in users.
func clusterStats(c *cluster, now time.Time, users map[snowflake.ID]int32, mark int32) ClusterStats {
	cs, g := clusterState(c, now)
	if g == nil {
		return cs
	}
	index := make(map[int]int, len(cs.Shards)) // shard ID -> position
	for i, sh := range cs.Shards {
		index[sh.ID] = i
	}
	caches := g.Client().Caches()
	total := uint64(max(g.ShardCount(), 1))
	// GuildsForEach holds the guild cache's read lock for the walk: keep
	// the callback short and look at members after it.
	ids := make([]snowflake.ID, 0, caches.GuildsLen())
	caches.GuildsForEach(func(gd discord.Guild) {
		ids = append(ids, gd.ID)
		cs.Members += gd.MemberCount
		if gd.MemberCount > largeThreshold {
			cs.LargeGuilds++
		}
		if i, ok := index[int((uint64(gd.ID)>>22)%total)]; ok {
			cs.Shards[i].Guilds++
		}
	})
	cs.Guilds = len(ids)
	cs.Cache.Guilds = cs.Guilds
	if caches.MembersAllLen() > 0 {
		// One guild at a time: each walk takes the member cache's read
		// lock briefly, so writers interleave.
		for _, id := range ids {
			caches.MembersForEach(id, func(m discord.Member) {
				if users[m.User.ID] != mark {
					users[m.User.ID] = mark
					cs.Users++
				}
			})
		}
	}
	return cs
}

// memorySamples are read with runtime/metrics, which does not stop the
// world as runtime.ReadMemStats does.
var memorySamples = [...]string{"/memory/classes/heap/objects:bytes", "/memory/classes/total:bytes"}

func readMemory() MemoryStats {
	var s [len(memorySamples)]rtmetrics.Sample
	for i, name := range memorySamples {
		s[i].Name = name
	}
	rtmetrics.Read(s[:])
	m := MemoryStats{RSS: residentSetSize()}
	if s[0].Value.Kind() == rtmetrics.KindUint64 {
		m.Heap = s[0].Value.Uint64()
	}
	if s[1].Value.Kind() == rtmetrics.KindUint64 {
		m.GoTotal = s[1].Value.Uint64()
	}
	return m
}

// residentSetSize reads the process's RSS from /proc/self/statm, or 0.
func residentSetSize() uint64 {
	if goruntime.GOOS != "linux" {
		return 0
	}
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := bytes.Fields(b)
	if len(f) < 2 {
		return 0
	}
	pages, err := strconv.ParseUint(string(f[1]), 10, 64)
	if err != nil {
		return 0
	}
	return pages * uint64(os.Getpagesize())
}

// statsLoop emits a StatsReport every interval until stop closes. A
// snapshot is taken on this goroutine, never on a shard's; a slow one
// delays the next tick instead of piling up.
func (r *Runtime) statsLoop(stop <-chan struct{}, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			st := r.Stats()
			r.emitStats(&st)
		}
	}
}

func (r *Runtime) emitStats(st *Stats) {
	r.events.emit(StatsReport{Stats: st})
}
