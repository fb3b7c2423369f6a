package runtime

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	devents "github.com/disgoorg/disgo/events"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/shardgroup"
)

// delivery is one event as user code saw it.
type delivery struct {
	shards, shard int // of the delivering group
	guild         uint64
}

type deliveries struct {
	mu  sync.Mutex
	all []delivery
}

func (d *deliveries) bot(int) Bot {
	return BotFunc(func(_ context.Context, g *shardgroup.Group) error {
		g.Client().AddEventListeners(bot.NewListenerFunc(func(e *devents.MessageCreate) {
			gid, _ := strconv.ParseUint(e.GuildID.String(), 10, 64)
			d.mu.Lock()
			d.all = append(d.all, delivery{g.ShardCount(), e.ShardID(), gid})
			d.mu.Unlock()
		}))
		return nil
	})
}

func TestReshardUnderLoad(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(64), discordtest.WithRecommendedShards(8),
		discordtest.WithMaxConcurrency(8), discordtest.WithIdentifyWindow(20*time.Millisecond))
	defer s.Close()
	d := &deliveries{}
	cfg := testConfig(s)
	cfg.Bot, cfg.Clusters = d.bot, 2
	rt, stop, _ := startFleet(t, cfg)
	defer stop()
	oldGroups := rt.Groups()

	var mu sync.Mutex
	var progress []Event
	var cutAt int // deliveries seen before the cut-over
	rt.Subscribe(func(e Event) {
		switch e.Kind {
		case EventReshardProgress, EventReshardDone:
			mu.Lock()
			progress = append(progress, e)
			mu.Unlock()
		case EventReshardCutOver:
			d.mu.Lock()
			cutAt = len(d.all)
			d.mu.Unlock()
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	loaded := make(chan error, 1)
	go func() {
		_, err := s.Load(ctx, discordtest.Load{Events: 1 << 30, Rate: 2000})
		loaded <- err
	}()

	// A second reshard while the first runs is refused.
	second := make(chan error, 1)
	rt.Subscribe(func(e Event) {
		if e.Kind == EventReshardStarted {
			go func() { second <- rt.Reshard(context.Background(), ReshardOptions{Shards: 16}) }()
		}
	})
	if err := rt.Reshard(context.Background(), ReshardOptions{Shards: 16, Clusters: 4}); err != nil {
		t.Fatal(err)
	}
	if err := <-second; !errors.Is(err, ErrReshardInProgress) {
		t.Fatalf("concurrent Reshard: %v, want ErrReshardInProgress", err)
	}
	// Let the new generation serve a while, then stop the load.
	d.mu.Lock()
	after := len(d.all)
	d.mu.Unlock()
	waitFor(t, func() bool { d.mu.Lock(); defer d.mu.Unlock(); return len(d.all) > after+200 })
	cancel()
	<-loaded

	if v := s.Stats().Violations; len(v) != 0 {
		t.Fatalf("violations %v", v)
	}
	d.mu.Lock()
	all := append([]delivery(nil), d.all...)
	cut := cutAt
	d.mu.Unlock()
	// Before the cut-over only the old generation delivers, after it only
	// the new one: the generations never interleave.
	first := len(all)
	for i, dl := range all {
		if dl.shards == 16 {
			first = i
			break
		}
	}
	if first == 0 || first == len(all) || first > cut {
		t.Fatalf("first delivery of the new generation at %d of %d (cut-over event at %d)", first, len(all), cut)
	}
	for i, dl := range all {
		want := 8
		if i >= first {
			want = 16
		}
		if dl.shards != want {
			t.Fatalf("delivery %d of %d came from the %d-shard generation after the cut-over at %d", i, len(all), dl.shards, first)
		}
		if discordtest.ShardFor(dl.guild, dl.shards) != dl.shard {
			t.Fatalf("guild %d delivered by shard %d of %d", dl.guild, dl.shard, dl.shards)
		}
	}
	for _, g := range oldGroups {
		if g.State() != shardgroup.StateStopped {
			t.Fatalf("old cluster %d is %s", g.ID(), g.State())
		}
	}
	groups := rt.Groups()
	if len(groups) != 4 || groups[0].ShardCount() != 16 {
		t.Fatalf("after reshard: %d groups of %d shards", len(groups), groups[0].ShardCount())
	}
	mu.Lock()
	defer mu.Unlock()
	if last := progress[len(progress)-1]; last.Kind != EventReshardDone || len(progress) != 17 {
		t.Fatalf("progress events: %d, last %s", len(progress), last.Kind)
	}
}

func TestShutdownDuringReshard(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(16), discordtest.WithRecommendedShards(2),
		discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	rt, stop, _ := startFleet(t, testConfig(s))
	s.HoldShard(3) // one shard of the new generation never gets READY
	defer s.ReleaseShard(3)
	started := make(chan struct{})
	rt.Subscribe(func(e Event) {
		if e.Kind == EventReshardStarted {
			close(started)
		}
	})
	resharded := make(chan error, 1)
	go func() { resharded <- rt.Reshard(context.Background(), ReshardOptions{Shards: 4}) }()
	<-started
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := <-resharded; !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Reshard: %v, want ErrNotRunning", err)
	}
}
