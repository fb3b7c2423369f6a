package shardgroup

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/events"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/discordtest"
)

// TestGroupHasNoLifecycle: the Group user code gets has none of the
// methods that start, stop or record; the Runner has them all.
func TestGroupHasNoLifecycle(t *testing.T) {
	group, runner := reflect.TypeFor[*Group](), reflect.TypeFor[*Runner]()
	for _, name := range []string{"Start", "StartResuming", "Stop", "Done", "Record", "EndRecording"} {
		if _, ok := group.MethodByName(name); ok {
			t.Errorf("Group has %s: user code could run its own group's lifecycle", name)
		}
		if _, ok := runner.MethodByName(name); !ok {
			t.Errorf("Runner has no %s", name)
		}
	}
	m, ok := group.MethodByName("Bus")
	if !ok || m.Type.NumOut() != 1 || m.Type.Out(0) != reflect.TypeFor[bus.Client]() {
		t.Errorf("Group.Bus is %v, want a func returning bus.Client", m.Type)
	}
}

// TestListenerClosingThroughTheClient: a listener that closes its client,
// its shard manager and its shard, which disgo offers, neither waits for
// its own shard nor stops the group: the call returns, the group goes on
// delivering every event, and only the Runner stops it.
func TestListenerClosingThroughTheClient(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithMaxConcurrency(2),
		discordtest.WithIdentifyWindow(time.Nanosecond))
	defer srv.Close()
	sn := newSeen()
	closed := make(chan struct{}, 1)
	closer := bot.WithEventListenerFunc(func(e *events.MessageCreate) {
		if e.Message.Content != "close" {
			return
		}
		ctx := context.Background() // no deadline: a close that waited for this shard would never return
		c := e.Client()
		c.Close(ctx)
		m := c.ShardManager()
		m.Close(ctx)
		m.CloseShard(ctx, e.ShardID())
		m.Shard(e.ShardID()).Close(ctx)
		m.Shard(e.ShardID()).CloseWithCode(ctx, 4000, "")
		closed <- struct{}{}
	})
	r := newGroup(t, srv, []int{0, 1}, 2, nil, closer, sn.listener())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.Start(ctx)
	waitReady(t, r)

	gid := srv.GuildID(0)
	if _, err := srv.Dispatch(gid, "MESSAGE_CREATE", srv.MessageCreate(gid, "close", 1000)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the listener's close calls did not return")
	}
	dispatch(t, srv, 0, 20)
	exactlyOnce(t, sn.waitN(t, 21), 20)
	for _, sh := range r.Group().Shards() {
		if sh.State != StateReady {
			t.Fatalf("shard %d is %s after the listener's close calls, want ready", sh.ID, sh.State)
		}
	}
	if st := srv.Stats(); st.OpenConnections != 2 {
		t.Fatalf("%d connections open, want the group's 2", st.OpenConnections)
	}

	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if _, err := r.Stop(sctx, false); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	for _, sh := range r.Group().Shards() {
		if sh.State != StateStopped {
			t.Fatalf("shard %d is %s after Stop", sh.ID, sh.State)
		}
	}
}
