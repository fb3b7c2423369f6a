package shardgroup

import (
	"log/slog"
	"maps"
	"reflect"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/events"
	"github.com/disgoorg/disgo/gateway"
	"github.com/disgoorg/disgo/httpserver"
)

// eventManager is the group's disgo event manager. Unlike disgo's, it
// holds no lock around events: each shard turns its gateway events into
// disgo events and delivers them on its own goroutine, in order, so a
// listener that blocks on one shard delays no other shard. Every listener
// runs under its own recover: a panic is counted and the listeners after
// it still get the event.
type eventManager struct {
	g        *Group
	client   bot.Client // set once, after disgo.New
	log      *slog.Logger
	handlers map[gateway.EventType]bot.GatewayEventHandler
	http     bot.HTTPServerEventHandler

	mu        sync.Mutex // serialises listener changes
	listeners atomic.Pointer[listenerSet]
}

// listenerSet is the listeners, and which of the events made of a
// MESSAGE_CREATE some of them may take (see messageCreateHandler).
type listenerSet struct {
	ls                []bot.EventListener
	create, guild, dm bool
}

func newListenerSet(ls []bot.EventListener) *listenerSet {
	set := &listenerSet{ls: ls}
	for _, l := range ls {
		set.create = set.create || takes(l, messageCreateType)
		set.guild = set.guild || takes(l, guildMessageCreateType)
		set.dm = set.dm || takes(l, dmMessageCreateType)
	}
	return set
}

var (
	messageCreateType      = reflect.TypeFor[*events.MessageCreate]()
	guildMessageCreateType = reflect.TypeFor[*events.GuildMessageCreate]()
	dmMessageCreateType    = reflect.TypeFor[*events.DMMessageCreate]()
)

// takes reports whether l may take events of type t (a pointer to an
// event struct). The listeners of disgo's NewListenerFunc and
// NewListenerChan take the events their type parameter holds; a
// ListenerAdapter the message creates whose function it has; any other
// listener may take anything.
func takes(l bot.EventListener, t reflect.Type) bool {
	if a, ok := l.(*events.ListenerAdapter); ok && a != nil {
		switch t {
		case messageCreateType:
			return a.OnMessageCreate != nil
		case guildMessageCreateType:
			return a.OnGuildMessageCreate != nil
		case dmMessageCreateType:
			return a.OnDMMessageCreate != nil
		}
		return true
	}
	lt := reflect.TypeOf(l)
	if lt == nil || lt.Kind() != reflect.Pointer || lt.Elem().Kind() != reflect.Struct {
		return true
	}
	st := lt.Elem()
	if st.PkgPath() != "github.com/disgoorg/disgo/bot" || st.NumField() != 1 {
		return true
	}
	f := st.Field(0).Type
	switch {
	case strings.HasPrefix(st.Name(), "listenerFunc[") && f.Kind() == reflect.Func && f.NumIn() == 1:
		return t.AssignableTo(f.In(0))
	case strings.HasPrefix(st.Name(), "listenerChan[") && f.Kind() == reflect.Chan:
		return t.AssignableTo(f.Elem())
	}
	return true
}

var _ bot.EventManager = (*eventManager)(nil)

// newEventManager builds the event manager. Where cfg keeps disgo's own
// MESSAGE_CREATE handler (one of defaults), messageCreateHandler takes
// its place.
func newEventManager(g *Group, cfg *bot.EventManagerConfig, defaults map[gateway.EventType]bot.GatewayEventHandler) *eventManager {
	m := &eventManager{g: g, log: g.log, handlers: cfg.GatewayHandlers, http: cfg.HTTPServerHandler}
	if h, ok := m.handlers[gateway.EventTypeMessageCreate]; ok && h == defaults[gateway.EventTypeMessageCreate] {
		m.handlers = maps.Clone(m.handlers)
		m.handlers[gateway.EventTypeMessageCreate] = messageCreateHandler{m}
	}
	m.listeners.Store(newListenerSet(append([]bot.EventListener(nil), cfg.EventListeners...)))
	if cfg.AsyncEventsEnabled {
		g.log.Warn("disgo's async events are not used: listeners run in order on their shard's goroutine; start goroutines in a listener if it needs them")
	}
	return m
}

// AddEventListeners adds listeners; they hear events from the next one on.
func (m *eventManager) AddEventListeners(ls ...bot.EventListener) {
	m.mu.Lock()
	defer m.mu.Unlock()
	next := append(append([]bot.EventListener(nil), m.listeners.Load().ls...), ls...)
	m.listeners.Store(newListenerSet(next))
}

// RemoveEventListeners removes listeners.
func (m *eventManager) RemoveEventListeners(ls ...bot.EventListener) {
	m.mu.Lock()
	defer m.mu.Unlock()
	next := append([]bot.EventListener(nil), m.listeners.Load().ls...)
	for _, l := range ls {
		for i := range next {
			if next[i] == l {
				next = append(next[:i], next[i+1:]...)
				break
			}
		}
	}
	m.listeners.Store(newListenerSet(next))
}

// HandleGatewayEvent runs disgo's handler for the event (caches are
// updated there); the disgo events it produces go through DispatchEvent.
func (m *eventManager) HandleGatewayEvent(t gateway.EventType, seq, shardID int, ev gateway.EventData) {
	h, ok := m.handlers[t]
	if !ok {
		m.log.Debug("no handler for gateway event", "event", t)
		return
	}
	h.HandleGatewayEvent(m.client, seq, shardID, ev)
}

// HandleHTTPEvent runs disgo's HTTP interaction handler.
func (m *eventManager) HandleHTTPEvent(respond httpserver.RespondFunc, ev httpserver.EventInteractionCreate) {
	if m.http != nil {
		m.http.HandleHTTPEvent(m.client, respond, ev)
	}
}

// DispatchEvent delivers an event to the listeners. While a shard handles
// a gateway event, the events disgo makes of it are collected instead, so
// that the shard decides when they are delivered (see Group.deliver).
func (m *eventManager) DispatchEvent(e bot.Event) {
	shard := -1
	if se, ok := e.(interface{ ShardID() int }); ok {
		shard = se.ShardID()
		if d := m.g.deliv[shard]; d != nil && d.collect(e) {
			return
		}
	}
	m.deliver(shard, e)
}

// deliver runs every listener on e, each under its own recover.
func (m *eventManager) deliver(shard int, e bot.Event) {
	for _, l := range m.listeners.Load().ls {
		m.call(shard, l, e)
	}
}

func (m *eventManager) call(shard int, l bot.EventListener, e bot.Event) {
	defer func() {
		if v := recover(); v != nil {
			m.g.panics.Add(1)
			m.log.Error("recovered panic in event listener", "shard", shard, "panic", v, "stack", string(debug.Stack()))
			if h := m.g.cfg.Hooks.ListenerPanic; h != nil {
				h(m.g, shard, v)
			}
		}
	}()
	l.OnEvent(e)
}

// messageCreateHandler is disgo's MESSAGE_CREATE handler
// (handlers.gatewayHandlerMessageCreate) made lazy: it updates the caches
// alike and dispatches the same events, except those that no listener
// may take, which it does not build. That holds only while the events
// reach the listeners at once: for events a reshard's new generation
// holds back, every event is built, for the listeners there will be.
type messageCreateHandler struct{ m *eventManager }

func (messageCreateHandler) EventType() gateway.EventType { return gateway.EventTypeMessageCreate }

func (h messageCreateHandler) HandleGatewayEvent(client bot.Client, seq, shardID int, data gateway.EventData) {
	event, ok := data.(gateway.EventMessageCreate)
	if !ok {
		return
	}
	if event.Flags.Has(discord.MessageFlagEphemeral) {
		return // ephemeral messages have no guild_id and no member
	}
	if event.Member != nil {
		event.Member.User = event.Author
	}
	caches := client.Caches()
	caches.AddMessage(event.Message)
	if channel, ok := caches.GuildMessageChannel(event.ChannelID); ok {
		caches.AddChannel(discord.ApplyLastMessageIDToChannel(channel, event.ID))
	}
	if thread, ok := caches.GuildThread(event.ChannelID); ok {
		thread.TotalMessageSent++
		thread.MessageCount++
		caches.AddChannel(thread)
	}

	create, guild, dm := true, true, true
	if d := h.m.g.deliv[shardID]; d != nil && d.liveNow() {
		set := h.m.listeners.Load()
		create, guild, dm = set.create, set.guild, set.dm
	}
	generic := events.NewGenericEvent(client, seq, shardID)
	em := client.EventManager()
	if create {
		em.DispatchEvent(&events.MessageCreate{GenericMessage: &events.GenericMessage{
			GenericEvent: generic, MessageID: event.ID, Message: event.Message, ChannelID: event.ChannelID, GuildID: event.GuildID,
		}})
	}
	if event.GuildID == nil {
		if dm {
			em.DispatchEvent(&events.DMMessageCreate{GenericDMMessage: &events.GenericDMMessage{
				GenericEvent: generic, MessageID: event.ID, Message: event.Message, ChannelID: event.ChannelID,
			}})
		}
	} else if guild {
		em.DispatchEvent(&events.GuildMessageCreate{GenericGuildMessage: &events.GenericGuildMessage{
			GenericEvent: generic, MessageID: event.ID, Message: event.Message, ChannelID: event.ChannelID, GuildID: *event.GuildID,
		}})
	}
}
