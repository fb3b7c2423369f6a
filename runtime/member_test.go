package runtime

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/shardgroup"
)

// memberConfig is a member of a 4-shard fleet on s, sharing b and q.
func memberConfig(s *discordtest.Server, b *bus.Bus, q IdentifyQueue, clusters ...ClusterPlan) Config {
	cfg := testConfig(s)
	cfg.Shards, cfg.Bus, cfg.IdentifyQueue = 4, b, q
	cfg.Member = &Member{Clusters: clusters}
	return cfg
}

// memberShared is what the members of a fleet on s share: a bus, closed
// when the test ends, and an identify queue.
func memberShared(t *testing.T, s *discordtest.Server) (*bus.Bus, IdentifyQueue) {
	t.Helper()
	b := bus.New(bus.Options{})
	t.Cleanup(b.Close)
	q, err := NewLocalIdentifyQueue(1, s.IdentifyWindow())
	if err != nil {
		t.Fatal(err)
	}
	return b, q
}

func TestMemberValidation(t *testing.T) {
	s := smallServer()
	defer s.Close()
	b, q := memberShared(t, s)
	ok := memberConfig(s, b, q, ClusterPlan{ID: 3, Shards: []int{2, 3}})
	if _, err := New(ok); err != nil {
		t.Fatalf("valid member: %v", err)
	}
	cases := []struct {
		edit func(*Config)
		want string
	}{
		{func(c *Config) { c.Member.Clusters = nil }, "Member.Clusters is empty"},
		{func(c *Config) { c.Shards = 0 }, "Config.Shards"},
		{func(c *Config) { c.GatewayURL = "" }, "GatewayURL"},
		{func(c *Config) { c.IdentifyQueue = nil }, "IdentifyQueue"},
		{func(c *Config) { c.Bus = nil }, "Config.Bus"},
		{func(c *Config) { c.Clusters = 2 }, "leave those at 0"},
		{func(c *Config) { c.Member.Clusters = append(c.Member.Clusters, ClusterPlan{ID: 3, Shards: []int{0}}) }, "repeated"},
		{func(c *Config) { c.Member.Clusters = []ClusterPlan{{ID: 0, Shards: []int{4}}} }, "outside 0..3"},
		{func(c *Config) {
			c.Member.Clusters = []ClusterPlan{{ID: 0, Shards: []int{1}}, {ID: 1, Shards: []int{1}}}
		}, "repeated"},
		{func(c *Config) { c.Member.Clusters = []ClusterPlan{{ID: 0}} }, "has no shards"},
	}
	for i, tc := range cases {
		cfg := ok
		cfg.Member = &Member{Clusters: slices.Clone(ok.Member.Clusters)}
		tc.edit(&cfg)
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("case %d: %v, want an error containing %q", i, err, tc.want)
		}
	}
}

// Two members share one bus and one identify queue: each runs its own
// clusters under their fleet-wide IDs, the operations act on those only,
// and neither serves the admiral, the store or a reshard.
func TestMembersRunTheirClusters(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	b, q := memberShared(t, s)
	a, err := New(memberConfig(s, b, q, ClusterPlan{ID: 0, Shards: []int{0, 1}}))
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(memberConfig(s, b, q, ClusterPlan{ID: 5, Shards: []int{2}}, ClusterPlan{ID: 7, Shards: []int{3}}))
	if err != nil {
		t.Fatal(err)
	}
	stopA, stopC := runUntil(t, a), runUntil(t, c)
	waitReady(t, a)
	waitReady(t, c)
	var ids []int
	for _, cs := range c.Clusters() {
		ids = append(ids, cs.ID)
	}
	if !slices.Equal(ids, []int{5, 7}) {
		t.Errorf("member clusters %v, want [5 7]", ids)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.SoftRestart(ctx, 7); err != nil {
		t.Errorf("soft restart of the member's cluster 7: %v", err)
	}
	if err := c.SoftRestart(ctx, 0); !errors.Is(err, ErrUnknownCluster) {
		t.Errorf("soft restart of another member's cluster: %v, want ErrUnknownCluster", err)
	}
	if err := c.Reshard(ctx, ReshardOptions{Shards: 8}); !errors.Is(err, ErrMemberReshard) {
		t.Errorf("member reshard: %v, want ErrMemberReshard", err)
	}
	if _, err := c.StartReshard(ctx, ReshardOptions{Shards: 8}); !errors.Is(err, ErrMemberReshard) {
		t.Errorf("member StartReshard: %v, want ErrMemberReshard", err)
	}
	if got := c.Services(); len(got) != 0 {
		t.Errorf("member serves services %v, want none", got)
	}
	for _, addr := range []bus.Address{bus.Admiral, bus.Service("store")} {
		if err := bus.Send(ctx, b, addr, "ping", 0); !errors.Is(err, bus.ErrUnknownAddress) {
			t.Errorf("%s on the shared bus: %v, want ErrUnknownAddress", addr, err)
		}
	}
	if err := stopC(); err != nil {
		t.Errorf("member 5,7: %v", err)
	}
	if err := stopA(); err != nil {
		t.Errorf("member 0: %v", err)
	}
	if n := len(s.Identifies()); n != 4 {
		t.Errorf("%d IDENTIFYs, want 4 (one per shard; the soft restart resumes)", n)
	}
}

// A member's Resume hands a cluster the sessions another runtime stopped
// with: its shards RESUME them and none identifies.
func TestMemberResumeHandsSessionsOver(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	b, q := memberShared(t, s)
	store := &MemorySessionStore{}
	cfg := memberConfig(s, b, q, ClusterPlan{ID: 1, Shards: []int{0, 1, 2, 3}})
	cfg.SessionStore = store
	old, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop := runUntil(t, old)
	waitReady(t, old)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	saved, _ := store.Load(context.Background())
	if len(saved) != 4 {
		t.Fatalf("%d sessions saved at stop, want 4", len(saved))
	}
	handed := map[int]shardgroup.Session{}
	for _, sess := range saved {
		handed[sess.ShardID] = sess
	}
	var mu sync.Mutex
	var asked []int
	cfg = memberConfig(s, b, q, ClusterPlan{ID: 1, Shards: []int{0, 1, 2, 3}})
	cfg.Member.Resume = func(_ context.Context, cluster int) (map[int]shardgroup.Session, error) {
		mu.Lock()
		asked = append(asked, cluster)
		mu.Unlock()
		return handed, nil
	}
	next, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop = runUntil(t, next)
	waitReady(t, next)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(asked, []int{1}) {
		t.Errorf("Resume asked for %v, want [1]", asked)
	}
	if n := len(s.Identifies()); n != 4 {
		t.Errorf("%d IDENTIFYs, want 4: the handed-over sessions must be resumed", n)
	}
}

// notifyingStore is a MemorySessionStore that reports each Save.
type notifyingStore struct {
	MemorySessionStore
	saves chan []shardgroup.Session
}

func (n *notifyingStore) Save(ctx context.Context, sessions []shardgroup.Session) error {
	select {
	case n.saves <- slices.Clone(sessions):
	default:
	}
	return n.MemorySessionStore.Save(ctx, sessions)
}

// A running fleet checkpoints its live sessions, each with the sequence of
// the last event its listeners received; CheckpointOff saves only at stop.
func TestCheckpointSavesDeliveredSequences(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(2), discordtest.WithRecommendedShards(2), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	store := &notifyingStore{saves: make(chan []shardgroup.Session, 1)}
	c := newCounter()
	cfg := testConfig(s)
	cfg.Bot, cfg.SessionStore, cfg.CheckpointInterval = c.bot, store, 5*time.Millisecond
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop := runUntil(t, rt)
	waitReady(t, rt)
	// a checkpoint with both sessions
	var first []shardgroup.Session
	for len(first) < 2 {
		first = waitEvent(t, store.saves)
	}
	before := map[int]int{}
	for _, sess := range first {
		if sess.SessionID == "" || sess.SavedAt.IsZero() {
			t.Fatalf("checkpointed session %+v lacks its ID or time", sess)
		}
		before[sess.ShardID] = sess.Sequence
	}
	g := s.GuildID(0)
	if _, err := s.Dispatch(g, "MESSAGE_CREATE", s.MessageCreate(g, "hi", 1)); err != nil {
		t.Fatal(err)
	}
	c.wait(t, "1")
	// a later checkpoint carries the delivered event's sequence
	deadline := time.After(10 * time.Second)
	for moved := false; !moved; {
		select {
		case got := <-store.saves:
			for _, sess := range got {
				moved = moved || sess.Sequence > before[sess.ShardID]
			}
		case <-deadline:
			t.Fatal("no checkpoint after the event carried a later sequence")
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// CheckpointOff: the only save is the one at stop.
	s2 := smallServer()
	defer s2.Close()
	store2 := &notifyingStore{saves: make(chan []shardgroup.Session, 8)}
	cfg = testConfig(s2)
	cfg.SessionStore, cfg.CheckpointInterval = store2, CheckpointOff
	rt, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop = runUntil(t, rt)
	waitReady(t, rt)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := len(store2.saves); n != 1 {
		t.Errorf("CheckpointOff: %d saves, want 1 (at stop)", n)
	}
}

// A Resume that waits for sessions nobody hands over ends with the fleet's
// stop: Shutdown does not wait for it, and the cluster never connects.
func TestShutdownEndsABlockedResume(t *testing.T) {
	s := smallServer()
	defer s.Close()
	b, q := memberShared(t, s)
	cfg := memberConfig(s, b, q, ClusterPlan{ID: 0, Shards: []int{0, 1, 2, 3}})
	waiting := make(chan struct{})
	cfg.Member.Resume = func(ctx context.Context, _ int) (map[int]shardgroup.Session, error) {
		close(waiting)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop := runUntil(t, rt)
	select {
	case <-waiting:
	case <-time.After(10 * time.Second):
		t.Fatal("Resume never called")
	}
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	if n := len(s.Identifies()); n != 0 {
		t.Errorf("%d IDENTIFYs from a cluster whose Resume never returned, want 0", n)
	}
}
