package shardgroup

import (
	"context"
	"reflect"
	"sync"
	"testing"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/events"
)

type anyListener struct{}

func (anyListener) OnEvent(bot.Event) {}

func TestTakes(t *testing.T) {
	for _, c := range []struct {
		name              string
		l                 bot.EventListener
		create, guild, dm bool
	}{
		{"func MessageCreate", bot.NewListenerFunc(func(*events.MessageCreate) {}), true, false, false},
		{"func GuildMessageCreate", bot.NewListenerFunc(func(*events.GuildMessageCreate) {}), false, true, false},
		{"func GuildReady", bot.NewListenerFunc(func(*events.GuildReady) {}), false, false, false},
		{"func Event", bot.NewListenerFunc(func(bot.Event) {}), true, true, true},
		{"chan DMMessageCreate", bot.NewListenerChan(make(chan *events.DMMessageCreate)), false, false, true},
		{"adapter", &events.ListenerAdapter{OnGuildMessageCreate: func(*events.GuildMessageCreate) {}}, false, true, false},
		{"empty adapter", &events.ListenerAdapter{}, false, false, false},
		{"other", anyListener{}, true, true, true},
	} {
		set := newListenerSet([]bot.EventListener{c.l})
		if set.create != c.create || set.guild != c.guild || set.dm != c.dm {
			t.Errorf("%s: takes MessageCreate %v, GuildMessageCreate %v, DMMessageCreate %v; want %v, %v, %v",
				c.name, set.create, set.guild, set.dm, c.create, c.guild, c.dm)
		}
	}
}

// messageFrames are a MESSAGE_CREATE in a guild and one in a DM.
var messageFrames = []string{
	`{"op":0,"s":1,"t":"MESSAGE_CREATE","d":{"id":"10","channel_id":"20","guild_id":"30","member":{"roles":[],"joined_at":"2024-01-01T00:00:00Z","flags":0},"author":{"id":"40","username":"u","discriminator":"0","avatar":null},"content":"in a guild","timestamp":"2024-01-01T00:00:00Z","edited_timestamp":null,"tts":false,"mention_everyone":false,"mentions":[],"mention_roles":[],"attachments":[],"embeds":[],"pinned":false,"type":0,"nonce":"1"}}`,
	`{"op":0,"s":2,"t":"MESSAGE_CREATE","d":{"id":"11","channel_id":"21","author":{"id":"40","username":"u","discriminator":"0","avatar":null},"content":"in a DM","timestamp":"2024-01-01T00:00:00Z","edited_timestamp":null,"tts":false,"mention_everyone":false,"mentions":[],"mention_roles":[],"attachments":[],"embeds":[],"pinned":false,"type":0,"nonce":"2"}}`,
}

// collector records the events its listeners take.
type collector struct {
	mu  sync.Mutex
	got []bot.Event
}

func (c *collector) add(e bot.Event) {
	c.mu.Lock()
	c.got = append(c.got, e)
	c.mu.Unlock()
}

func (c *collector) types() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ts []string
	for _, e := range c.got {
		ts = append(ts, reflect.TypeOf(e).Elem().Name())
	}
	return ts
}

func feed(t *testing.T, g *Group, frames []string) {
	t.Helper()
	s := g.shards[g.ids[0]]
	for _, f := range frames {
		m, err := decodeMessage([]byte(f))
		if err != nil {
			t.Fatal(err)
		}
		s.dispatch(context.Background(), m, []byte(f))
	}
}

func offlineGroup(t *testing.T, cfg Config) *Group {
	t.Helper()
	cfg.ShardIDs, cfg.ShardCount, cfg.IdentifyLimiter = []int{0}, 1, noLimit{}
	cfg.Token = "MTIzNDU2Nzg5MDEyMzQ1Njc4.G1.x" // application ID 123456789012345678
	cfg.ClientOptions = append([]bot.ConfigOpt{quietREST}, cfg.ClientOptions...)
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r.Group()
}

// TestMessageCreateEvents wants each listener to get the events made of a
// MESSAGE_CREATE that it takes, with the message, whichever other
// listeners there are.
func TestMessageCreateEvents(t *testing.T) {
	var guild, dm, create, all collector
	g := offlineGroup(t, Config{ClientOptions: []bot.ConfigOpt{bot.WithEventListeners(
		bot.NewListenerFunc(func(e *events.GuildMessageCreate) { guild.add(e) }),
		&events.ListenerAdapter{OnDMMessageCreate: func(e *events.DMMessageCreate) { dm.add(e) }},
	)}})
	feed(t, g, messageFrames)
	g.Client().AddEventListeners(bot.NewListenerFunc(func(e *events.MessageCreate) { create.add(e) }))
	feed(t, g, messageFrames)
	g.Client().AddEventListeners(bot.NewListenerFunc(func(e bot.Event) { all.add(e) }))
	feed(t, g, messageFrames)

	if got := guild.types(); len(got) != 3 {
		t.Errorf("GuildMessageCreate listener got %v, want 3", got)
	}
	if got := dm.types(); len(got) != 3 {
		t.Errorf("DMMessageCreate listener got %v, want 3", got)
	}
	if got := create.types(); len(got) != 4 {
		t.Errorf("MessageCreate listener got %v, want 4", got)
	}
	want := []string{"MessageCreate", "GuildMessageCreate", "MessageCreate", "DMMessageCreate"}
	if got := all.types(); !reflect.DeepEqual(got, want) {
		t.Errorf("listener of every event got %v, want %v", got, want)
	}
	e := guild.got[0].(*events.GuildMessageCreate)
	if e.Message.Content != "in a guild" || e.GuildID != 30 || e.ChannelID != 20 || e.MessageID != 10 || e.ShardID() != 0 || e.SequenceNumber() != 1 {
		t.Errorf("GuildMessageCreate %+v", e.GenericGuildMessage)
	}
	if e.Message.Member == nil || e.Message.Member.User.ID != 40 {
		t.Errorf("the member's user is not the author: %+v", e.Message.Member)
	}
	if d := dm.got[0].(*events.DMMessageCreate); d.Message.Content != "in a DM" || d.ChannelID != 21 {
		t.Errorf("DMMessageCreate %+v", d.GenericDMMessage)
	}
}

// TestMessageCreateHeldInFull: a reshard's new generation holds every
// event made of a MESSAGE_CREATE, whatever its listeners take now: those
// there will be at the cut-over get them.
func TestMessageCreateHeldInFull(t *testing.T) {
	var gate Gate
	g := offlineGroup(t, Config{Gate: &gate, Generation: 1, ClientOptions: []bot.ConfigOpt{
		bot.WithEventListeners(bot.NewListenerFunc(func(*events.MessageCreate) {})),
	}})
	feed(t, g, messageFrames)
	d := g.deliv[0]
	d.mu.Lock()
	defer d.mu.Unlock()
	var got []string
	for _, h := range d.held {
		for _, e := range h.evs {
			got = append(got, reflect.TypeOf(e).Elem().Name())
		}
	}
	if want := []string{"MessageCreate", "GuildMessageCreate", "MessageCreate", "DMMessageCreate"}; !reflect.DeepEqual(got, want) {
		t.Errorf("held %v, want %v", got, want)
	}
}
