package runtime

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/disgoorg/disgo/sharding"
	"github.com/disgoorg/snowflake/v2"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/services"
	"github.com/gofleet/fleet/shardgroup"
)

// workerStates lists the clusters' states, in order.
func workerStates(w Workers) []string {
	out := make([]string, 0, len(w.Clusters))
	for _, c := range w.Clusters {
		out = append(out, c.State)
	}
	return out
}

// serviceInfo finds a service in a list; ok is false when it is absent.
func serviceInfo(list []services.Info, name string) (services.Info, bool) {
	for _, in := range list {
		if in.Name == name {
			return in, true
		}
	}
	return services.Info{}, false
}

// TestEveryCommandOverAStrictBus drives the fleet with every command of
// the admiral through a Client on a strict bus (every payload and reply
// round-trips through JSON, errors keep only their message), while a
// service is failing and a cluster is parked after using up its
// restarts, and checks what each command answers and does.
func TestEveryCommandOverAStrictBus(t *testing.T) {
	const guilds, shards = 12, 3
	s := discordtest.NewServer(discordtest.WithGuilds(guilds), discordtest.WithRecommendedShards(shards),
		discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	var clusterBroken, serviceBroken atomic.Bool
	var starts atomic.Int32 // the flaky service's successful starts
	clusterBroken.Store(true)
	cfg := testConfig(s)
	cfg.Clusters, cfg.StrictBus, cfg.MaxRestarts, cfg.RestartBackoff = shards, true, 1, time.Millisecond
	cfg.Bot = func(id int) Bot {
		if id == 2 && clusterBroken.Load() {
			return BotFunc(func(context.Context, *shardgroup.Group) error { return errors.New("broken setup") })
		}
		return nopBot(id)
	}
	cfg.Services = []services.Spec{{Name: "flaky", New: func() services.Service {
		return services.Func(func(context.Context, *services.Context) error {
			if serviceBroken.Load() {
				return errors.New("flaky start")
			}
			starts.Add(1)
			return nil
		})
	}}}
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop := runUntil(t, rt)
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()
	f := NewClient(rt.Bus())
	ctx := t.Context()

	// Clusters 0 and 1 serve with every guild of their shards; cluster 2
	// is parked.
	served := 0
	for i := range guilds {
		if sharding.ShardIDByGuild(snowflake.ID(s.GuildID(i)), shards) != 2 {
			served++
		}
	}
	waitFor(t, func() bool {
		return slices.Equal(workerStates(rt.Workers()), []string{"ready", "ready", "failed"}) && rt.Stats().Guilds == served
	})
	// The service fails: its new instances cannot start.
	serviceBroken.Store(true)
	if err := f.RestartService(ctx, "flaky"); !errors.Is(err, services.ErrFailed) || !strings.Contains(err.Error(), "flaky start") {
		t.Fatalf("RestartService of a service that cannot start = %v, want services.ErrFailed with its error", err)
	}

	t.Run("workers and stats while failing and parked", func(t *testing.T) {
		w, err := f.Workers(ctx)
		if err != nil {
			t.Fatalf("Workers: %v", err)
		}
		if got := workerStates(w); !slices.Equal(got, []string{"ready", "ready", "failed"}) {
			t.Errorf("cluster states %v, want ready, ready, failed", got)
		}
		for i, c := range w.Clusters {
			if c.ID != i || !slices.Equal(c.Shards, []int{i}) {
				t.Errorf("cluster %d: %+v, want ID %d with shard %d", i, c, i, i)
			}
		}
		in, ok := serviceInfo(w.Services, "flaky")
		if !ok || in.State != services.StateFailed || !strings.Contains(in.Err, "flaky start") || in.MailboxDepth != -1 {
			t.Errorf("flaky: %+v, want failed with its starting error and no mailbox", in)
		}
		if in, ok := serviceInfo(w.Services, services.StoreName); !ok || in.State != services.StateReady || in.Err != "" || in.MailboxDepth != 0 {
			t.Errorf("store: %+v, want ready with an empty mailbox", in)
		}
		st, err := f.Stats(ctx)
		if err != nil {
			t.Fatalf("Stats: %v", err)
		}
		if st.Shards != shards || len(st.Clusters) != shards || !st.Clusters[2].Failed || st.Clusters[0].Failed || st.Guilds != served {
			t.Errorf("stats: %d shards, %d clusters, failed %v, %d guilds; want %d, %d, only cluster 2, %d",
				st.Shards, len(st.Clusters), []bool{st.Clusters[0].Failed, st.Clusters[1].Failed, st.Clusters[2].Failed}, st.Guilds, shards, shards, served)
		}
		if len(st.Services) != 2 || st.Services[0].Name != "flaky" || st.Services[0].State != string(services.StateFailed) {
			t.Errorf("stats services: %+v", st.Services)
		}
	})

	t.Run("fetch", func(t *testing.T) {
		var onServed, onParked snowflake.ID
		var servedIndex int
		for i := range guilds {
			id := snowflake.ID(s.GuildID(i))
			if sharding.ShardIDByGuild(id, shards) == 2 {
				onParked = id
			} else {
				onServed, servedIndex = id, i
			}
		}
		g, err := f.FetchGuild(ctx, onServed)
		if err != nil || g == nil || g.ID != onServed {
			t.Errorf("FetchGuild(%d) = %+v, %v; want the guild", onServed, g, err)
		}
		if g, err := f.FetchGuild(ctx, onParked); g != nil || err == nil || !strings.Contains(err.Error(), "cluster 2") {
			t.Errorf("FetchGuild of a guild on the parked cluster = %+v, %v; want an error naming cluster 2", g, err)
		}
		app := snowflake.ID(s.ApplicationID())
		if m, err := f.FetchMember(ctx, onServed, app); err != nil || m == nil || m.User.ID != app {
			t.Errorf("FetchMember = %+v, %v; want the bot's member", m, err)
		}
		if u, err := f.FetchUser(ctx, app); err != nil || u == nil || u.ID != app {
			t.Errorf("FetchUser = %+v, %v; want the bot's user", u, err)
		}
		if u, err := f.FetchUser(ctx, 42); err != nil || u != nil {
			t.Errorf("FetchUser of nobody = %+v, %v; want nil, nil", u, err)
		}
		ch := snowflake.ID(s.ChannelID(servedIndex, 0))
		if c, err := f.FetchChannel(ctx, ch); err != nil || c == nil || c.ID() != ch {
			t.Errorf("FetchChannel(%d) = %+v, %v; want the channel", ch, c, err)
		}
		if c, err := f.FetchChannel(ctx, 42); err != nil || c != nil {
			t.Errorf("FetchChannel of nothing = %+v, %v; want nil, nil", c, err)
		}
	})

	t.Run("cluster operations", func(t *testing.T) {
		before := s.Stats().Identifies
		if err := f.SoftRestart(ctx, 0); err != nil {
			t.Fatalf("SoftRestart(0): %v", err)
		}
		if n := s.Stats().Identifies; n != before {
			t.Fatalf("a soft restart over the bus identified %d times", n-before)
		}
		if err := f.Restart(ctx, 1); err != nil {
			t.Fatalf("Restart(1): %v", err)
		}
		waitFor(t, func() bool { return s.Stats().Identifies == before+1 && rt.Workers().Clusters[1].State == "ready" })
		for name, do := range map[string]func(context.Context, int) error{
			"SoftRestart": f.SoftRestart, "Restart": f.Restart, "ShutdownCluster": f.ShutdownCluster,
		} {
			if err := do(ctx, 2); err == nil || !strings.Contains(err.Error(), "cluster 2 is failed") {
				t.Errorf("%s of the parked cluster = %v, want an error saying it failed", name, err)
			}
			if err := do(ctx, 9); !errors.Is(err, ErrUnknownCluster) {
				t.Errorf("%s of cluster 9 = %v, want ErrUnknownCluster", name, err)
			}
		}
		// A rolling restart goes through clusters 0 and 1, then stops at
		// the parked one and says so.
		for name, do := range map[string]func(context.Context) error{"SoftRestartAll": f.SoftRestartAll, "RestartAll": f.RestartAll} {
			if err := do(ctx); err == nil || !strings.Contains(err.Error(), "cluster 2 is failed") {
				t.Errorf("%s with a parked cluster = %v, want the failure of cluster 2", name, err)
			}
		}
		op, err := f.StartSoftRestartAll(ctx)
		if err != nil || op.Kind != OperationSoftRestartAll || op.State != OperationRunning {
			t.Fatalf("StartSoftRestartAll = %+v, %v", op, err)
		}
		done, err := f.WaitOperation(ctx, op.ID)
		if err == nil || done.State != OperationFailed || done.Done != 2 || done.Of != 3 || !strings.Contains(done.Err, "cluster 2 is failed") {
			t.Errorf("WaitOperation = %+v, %v; want failed after 2 of 3 clusters", done, err)
		}
		if polled, err := f.Operation(ctx, op.ID); err != nil || polled.ID != op.ID || polled.State != OperationFailed {
			t.Errorf("Operation = %+v, %v", polled, err)
		}
		if op, err := f.StartRestartAll(ctx); err != nil || op.Kind != OperationRestartAll {
			t.Errorf("StartRestartAll = %+v, %v", op, err)
		} else if _, err := f.WaitOperation(ctx, op.ID); err == nil {
			t.Error("a rolling restart over a parked cluster succeeded")
		}
		if _, err := f.Operation(ctx, "reshard-99"); !errors.Is(err, ErrUnknownOperation) {
			t.Errorf("Operation of an unknown ID = %v, want ErrUnknownOperation", err)
		}
		if _, err := f.WaitOperation(ctx, "reshard-99"); !errors.Is(err, ErrUnknownOperation) {
			t.Errorf("WaitOperation of an unknown ID = %v, want ErrUnknownOperation", err)
		}
	})

	t.Run("reshard", func(t *testing.T) {
		waitFor(t, func() bool { return slices.Equal(workerStates(rt.Workers()), []string{"ready", "ready", "failed"}) })
		before := s.Stats().Identifies
		if err := f.Reshard(ctx, ReshardOptions{Shards: shards}); err != nil {
			t.Fatalf("Reshard to the current count: %v", err)
		}
		op, err := f.StartReshard(ctx, ReshardOptions{Shards: shards, Clusters: shards})
		if err != nil || op.State != OperationDone || !strings.Contains(op.Result, "unchanged") {
			t.Fatalf("StartReshard to the current count = %+v, %v; want done at once, saying unchanged", op, err)
		}
		if n := s.Stats().Identifies; n != before {
			t.Fatalf("a reshard to the current count identified %d times", n-before)
		}
		if err := f.Reshard(ctx, ReshardOptions{Shards: shards, Clusters: 5}); !errors.Is(err, ErrCannotReshard) || !strings.Contains(err.Error(), "Clusters (5) > Shards (3)") {
			t.Fatalf("Reshard to more clusters than shards = %v, want ErrCannotReshard saying why", err)
		}
		if err := f.Reshard(ctx, ReshardOptions{Shards: -1}); !errors.Is(err, ErrCannotReshard) {
			t.Fatalf("Reshard to -1 shards = %v, want ErrCannotReshard", err)
		}
		// A reshard replaces the parked cluster.
		clusterBroken.Store(false)
		if err := f.Reshard(ctx, ReshardOptions{Shards: 6}); err != nil {
			t.Fatalf("Reshard to 6: %v", err)
		}
		w, err := f.Workers(ctx)
		if err != nil || !slices.Equal(workerStates(w), []string{"ready", "ready", "ready"}) {
			t.Fatalf("after the reshard: %v, %v; want three ready clusters", workerStates(w), err)
		}
		if st, err := f.Stats(ctx); err != nil || st.TotalShards != 6 {
			t.Fatalf("after the reshard: %d shards, %v", st.TotalShards, err)
		}
		if err := f.ShutdownCluster(ctx, 0); err != nil {
			t.Fatalf("ShutdownCluster(0): %v", err)
		}
		if w, err := f.Workers(ctx); err != nil || w.Clusters[0].State != "stopped" {
			t.Fatalf("after ShutdownCluster: %v, %v", workerStates(w), err)
		}
	})

	t.Run("service operations", func(t *testing.T) {
		if err := f.SoftRestartService(ctx, "flaky"); !errors.Is(err, services.ErrNotReady) {
			t.Errorf("SoftRestartService of a failed service = %v, want services.ErrNotReady", err)
		}
		serviceBroken.Store(false)
		if err := f.RestartService(ctx, "flaky"); err != nil {
			t.Fatalf("RestartService: %v", err)
		}
		store := func() services.Info {
			t.Helper()
			w, err := f.Workers(ctx)
			if err != nil {
				t.Fatal(err)
			}
			in, _ := serviceInfo(w.Services, services.StoreName)
			return in
		}
		restarts, n := store().Restarts, starts.Load()
		if err := f.SoftRestartService(ctx, "flaky"); err != nil {
			t.Fatalf("SoftRestartService: %v", err)
		}
		if err := f.SoftRestartAllServices(ctx); err != nil {
			t.Fatalf("SoftRestartAllServices: %v", err)
		}
		if err := f.RestartAllServices(ctx); err != nil {
			t.Fatalf("RestartAllServices: %v", err)
		}
		if got := starts.Load() - n; got != 3 {
			t.Errorf("flaky started %d times, want 3", got)
		}
		if got := store().Restarts - restarts; got != 2 {
			t.Errorf("the store restarted %d times, want 2", got)
		}
		if err := f.ShutdownService(ctx, "flaky"); err != nil {
			t.Fatalf("ShutdownService: %v", err)
		}
		late := services.Spec{Name: "late", New: func() services.Service {
			return services.Func(func(context.Context, *services.Context) error { return nil })
		}}
		if err := rt.CreateService(ctx, late); err != nil {
			t.Fatalf("CreateService: %v", err)
		}
		if err := rt.CreateService(ctx, late); err == nil {
			t.Fatal("a second service named late was created")
		}
		w, err := f.Workers(ctx)
		if err != nil || len(w.Services) != 2 {
			t.Fatalf("services after ShutdownService and CreateService: %+v, %v", w.Services, err)
		}
		if in, ok := serviceInfo(w.Services, "late"); !ok || in.State != services.StateReady {
			t.Fatalf("late: %+v, want ready", in)
		}
		for name, do := range map[string]func(context.Context, string) error{
			"SoftRestartService": f.SoftRestartService, "RestartService": f.RestartService, "ShutdownService": f.ShutdownService,
		} {
			if err := do(ctx, "flaky"); !errors.Is(err, services.ErrUnknownService) {
				t.Errorf("%s of a removed service = %v, want services.ErrUnknownService", name, err)
			}
		}
	})

	if err := f.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	stopped = true
	if err := stop(); err != nil {
		t.Fatalf("Run after Shutdown over the bus: %v", err)
	}
	if _, err := f.Workers(ctx); !errors.Is(err, bus.ErrClosed) && !errors.Is(err, bus.ErrUnknownAddress) {
		t.Fatalf("Workers after the shutdown = %v, want the bus closed", err)
	}
}

// quietError wraps a sentinel without saying its text, as an error that
// names each package once may.
type quietError struct{ sentinel error }

func (e quietError) Error() string { return `"flaky" failed after 3 attempts` }
func (e quietError) Unwrap() error { return e.sentinel }

// A sentinel an error wraps without naming it still reaches a Client
// across a strict bus: the admiral names it in the message.
func TestSentinelsCrossAStrictBus(t *testing.T) {
	b := bus.New(bus.Options{Strict: true})
	defer b.Close()
	ep, err := b.Register(bus.Admiral)
	if err != nil {
		t.Fatal(err)
	}
	handle(ep, cmdRestartService, func(_ context.Context, q serviceRequest) (none, error) {
		return none{}, quietError{services.ErrFailed}
	})
	handle(ep, cmdSoftRestart, func(_ context.Context, q clusterRequest) (none, error) {
		return none{}, fmt.Errorf("%w %d", ErrUnknownCluster, q.Cluster)
	})
	f := NewClient(b)
	err = f.RestartService(t.Context(), "flaky")
	if !errors.Is(err, services.ErrFailed) || !strings.Contains(err.Error(), `"flaky" failed after 3 attempts`) {
		t.Errorf("RestartService = %v, want services.ErrFailed with the handler's message", err)
	}
	if errors.Is(err, services.ErrUnknownService) {
		t.Errorf("RestartService = %v matches a sentinel it does not wrap", err)
	}
	err = f.SoftRestart(t.Context(), 9)
	if !errors.Is(err, ErrUnknownCluster) || strings.Count(err.Error(), ErrUnknownCluster.Error()) != 1 {
		t.Errorf("SoftRestart = %v, want ErrUnknownCluster, named once", err)
	}
}
