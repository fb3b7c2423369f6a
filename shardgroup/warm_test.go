package shardgroup

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/cache"
	"github.com/disgoorg/disgo/events"
	"github.com/disgoorg/disgo/gateway"

	"github.com/gofleet/fleet/discordtest"
)

// opened is a session a StopAtReady group opened.
type opened struct {
	sess  Session
	ready []byte
}

// openSessions runs a group that opens the shards' sessions and stops at
// their READYs, and returns what it opened.
func openSessions(t *testing.T, srv *discordtest.Server, ids []int, count int) map[int]opened {
	t.Helper()
	got := make(chan opened, len(ids))
	delivered := atomic.Int64{}
	r, err := New(Config{
		ShardIDs: ids, ShardCount: count, Token: Token(srv.Token()), GatewayURL: srv.GatewayURL(),
		Intents: gateway.IntentGuilds | gateway.IntentGuildMessages, IdentifyLimiter: noLimit{},
		ClientOptions: []bot.ConfigOpt{quietREST, bot.WithEventListenerFunc(func(bot.Event) { delivered.Add(1) })},
		Deliver:       func() bool { return false },
		StopAtReady:   func(sess Session, ready []byte) { got <- opened{sess, ready} },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.Start(ctx)
	out := map[int]opened{}
	timeout := time.After(10 * time.Second)
	for range ids {
		select {
		case o := <-got:
			out[o.sess.ShardID] = o
		case <-timeout:
			t.Fatalf("opened %d of %d sessions", len(out), len(ids))
		}
	}
	select {
	case <-r.Done(): // every shard stopped on its own once it had its READY
	case <-timeout:
		t.Fatal("the opening group's shards did not stop at their READYs")
	}
	if n := delivered.Load(); n != 0 {
		t.Errorf("the opening group delivered %d events, want none", n)
	}
	for id, o := range out {
		if o.sess.SessionID == "" || o.sess.Sequence != 1 || len(o.ready) == 0 {
			t.Errorf("shard %d: opened %+v with a READY of %d bytes, want a session at the READY's sequence 1 and its payload", id, o.sess, len(o.ready))
		}
	}
	return out
}

// TestStopAtReadyAwait: sessions opened by one group and resumed by
// another: each shard identifies once; events sent in between are
// replayed once; the resuming client sees each READY and its guilds as
// after an IDENTIFY (GuildReady, not GuildJoin; its self user cached).
func TestStopAtReadyAwait(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(2), discordtest.WithMaxConcurrency(2))
	defer srv.Close()
	ids := []int{0, 1}
	sessions := openSessions(t, srv, ids, 2)
	dispatch(t, srv, 0, 20) // nobody is connected: the RESUMEs replay them

	s := newSeen()
	var readies, guildReady, guildJoin, awaited atomic.Int64
	r, err := New(Config{
		ShardIDs: ids, ShardCount: 2, Token: Token(srv.Token()), GatewayURL: srv.GatewayURL(),
		Intents: gateway.IntentGuilds | gateway.IntentGuildMessages, IdentifyLimiter: noLimit{},
		ClientOptions: []bot.ConfigOpt{quietREST, s.listener(), bot.WithCacheConfigOpts(cache.WithCaches(cache.FlagGuilds)),
			bot.WithEventListenerFunc(func(*events.Ready) { readies.Add(1) }),
			bot.WithEventListenerFunc(func(*events.GuildReady) { guildReady.Add(1) }),
			bot.WithEventListenerFunc(func(*events.GuildJoin) { guildJoin.Add(1) }),
		},
		Await: func(_ context.Context, shard int) (Session, []byte, bool) {
			awaited.Add(1)
			o := sessions[shard]
			return o.sess, o.ready, true
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.Start(ctx)
	defer func() {
		if _, err := r.Stop(context.Background(), false); err != nil {
			t.Error(err)
		}
	}()
	waitReady(t, r)
	exactlyOnce(t, s.waitN(t, 20), 20)
	st := srv.Stats()
	if st.Identifies != 2 || st.Resumes != 2 {
		t.Errorf("identifies %d, resumes %d; want 2 and 2", st.Identifies, st.Resumes)
	}
	if awaited.Load() != 2 {
		t.Errorf("Await called %d times, want once per shard", awaited.Load())
	}
	c := r.Group().Client()
	if readies.Load() != 2 || guildReady.Load() != 8 || guildJoin.Load() != 0 {
		t.Errorf("listeners saw %d READYs, %d GuildReady, %d GuildJoin; want 2, 8, 0", readies.Load(), guildReady.Load(), guildJoin.Load())
	}
	if n := c.Caches().GuildsLen(); n != 8 {
		t.Errorf("cache holds %d guilds, want 8", n)
	}
	if _, ok := c.Caches().SelfUser(); !ok {
		t.Error("the self user of the READY is not cached")
	}
	if !r.Group().Loaded() {
		t.Error("the group does not report its guilds loaded")
	}
}

// TestAwaitRefused: a shard whose session will not come identifies; a
// shard stopped while it waits stops without connecting.
func TestAwaitRefused(t *testing.T) {
	srv := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithRecommendedShards(2), discordtest.WithMaxConcurrency(2))
	defer srv.Close()
	r, err := New(Config{
		ShardIDs: []int{0, 1}, ShardCount: 2, Token: Token(srv.Token()), GatewayURL: srv.GatewayURL(),
		IdentifyLimiter: noLimit{}, ClientOptions: []bot.ConfigOpt{quietREST},
		Await: func(ctx context.Context, shard int) (Session, []byte, bool) {
			if shard == 1 {
				<-ctx.Done() // never comes: ends with the stop
			}
			return Session{}, nil, false
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.Start(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for r.Group().Shards()[0].State != StateReady {
		if time.Now().After(deadline) {
			t.Fatalf("shard 0 not ready: %+v", r.Group().Shards())
		}
		time.Sleep(time.Millisecond)
	}
	sessions, err := r.Stop(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := sessions[1]; ok || len(sessions) != 1 {
		t.Errorf("sessions after the stop: %+v, want shard 0's only", sessions)
	}
	if st := srv.Stats(); st.Identifies != 1 {
		t.Errorf("identifies %d, want 1 (shard 1 waited, then stopped)", st.Identifies)
	}
}
