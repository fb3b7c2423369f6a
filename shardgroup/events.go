package shardgroup

import (
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/disgoorg/disgo/bot"
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
	listeners atomic.Pointer[[]bot.EventListener]
}

var _ bot.EventManager = (*eventManager)(nil)

func newEventManager(g *Group, cfg *bot.EventManagerConfig) *eventManager {
	m := &eventManager{g: g, log: g.log, handlers: cfg.GatewayHandlers, http: cfg.HTTPServerHandler}
	ls := append([]bot.EventListener(nil), cfg.EventListeners...)
	m.listeners.Store(&ls)
	if cfg.AsyncEventsEnabled {
		g.log.Warn("disgo's async events are not used: listeners run in order on their shard's goroutine; start goroutines in a listener if it needs them")
	}
	return m
}

// AddEventListeners adds listeners; they hear events from the next one on.
func (m *eventManager) AddEventListeners(ls ...bot.EventListener) {
	m.mu.Lock()
	defer m.mu.Unlock()
	next := append(append([]bot.EventListener(nil), *m.listeners.Load()...), ls...)
	m.listeners.Store(&next)
}

// RemoveEventListeners removes listeners.
func (m *eventManager) RemoveEventListeners(ls ...bot.EventListener) {
	m.mu.Lock()
	defer m.mu.Unlock()
	next := append([]bot.EventListener(nil), *m.listeners.Load()...)
	for _, l := range ls {
		for i := range next {
			if next[i] == l {
				next = append(next[:i], next[i+1:]...)
				break
			}
		}
	}
	m.listeners.Store(&next)
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
	for _, l := range *m.listeners.Load() {
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
