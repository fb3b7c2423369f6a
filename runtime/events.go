package runtime

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/gofleet/fleet/services"
)

// EventKind names a lifecycle event; the names are WhatToLog's keys.
type EventKind string

// The event kinds.
const (
	EventShardIdentify     EventKind = "shard_identify"
	EventShardReady        EventKind = "shard_ready"
	EventShardResumed      EventKind = "shard_resumed"
	EventShardDisconnected EventKind = "shard_disconnected"
	EventClusterReady      EventKind = "cluster_ready"
	EventClusterRestarted  EventKind = "cluster_restarted"
	EventClusterFailed     EventKind = "cluster_failed"
	EventClusterShutdown   EventKind = "cluster_shutdown"
	EventFleetReady        EventKind = "fleet_ready"
	EventFatal             EventKind = "fatal"

	EventSoftRestartStarted    EventKind = "soft_restart_started"
	EventSoftRestartHandedOver EventKind = "soft_restart_handed_over" // Duration: the pause
	EventSoftRestartDone       EventKind = "soft_restart_done"

	// Service events, as the services package names them.
	EventServiceReady         = EventKind(services.EventReady)
	EventServiceStartingError = EventKind(services.EventStartingError)
	EventServiceRestarted     = EventKind(services.EventRestarted)
	EventServiceFailed        = EventKind(services.EventFailed)
	EventServiceShutdown      = EventKind(services.EventShutdown)

	EventReshardStarted  EventKind = "reshard_started"  // N: old shard count, Of: new
	EventReshardProgress EventKind = "reshard_progress" // N of Of new shards ready with their guilds
	EventReshardCutOver  EventKind = "reshard_cut_over" // Duration: since the start
	EventReshardDone     EventKind = "reshard_done"
	EventShutdown        EventKind = "shutdown"
)

// Event is a typed lifecycle event.
type Event struct {
	Kind     EventKind
	Time     time.Time
	Cluster  int           // -1 when not about one cluster
	Service  string        // for service events
	Shard    int           // -1 when not about one shard
	N, Of    int           // progress: n of N shards ready
	Duration time.Duration // time since Run started, for ready events; the back-off, for cluster_restarted
	Err      error         // why, for cluster_restarted (the Setup error or timeout), cluster_failed, fatal
	Stats    *Stats        // EventStats: the snapshot
}

// level is the slog level of an event's record.
func (e Event) level() slog.Level {
	switch e.Kind {
	case EventStats:
		return slog.LevelDebug
	case EventClusterFailed, EventFatal, EventServiceFailed:
		return slog.LevelError
	case EventShardDisconnected, EventClusterRestarted, EventServiceStartingError, EventServiceRestarted:
		return slog.LevelWarn
	}
	return slog.LevelInfo
}

// events fans lifecycle events out to subscribers and the logger.
type events struct {
	log   *slog.Logger
	allow map[EventKind]bool
	deny  map[EventKind]bool

	mu   sync.Mutex // guards subs, next
	subs map[int]func(Event)
	next int
}

func newEvents(log *slog.Logger, w WhatToLog) *events {
	e := &events{log: log, subs: map[int]func(Event){}}
	if len(w.Allow) > 0 {
		e.allow = map[EventKind]bool{}
		for _, k := range w.Allow {
			e.allow[k] = true
		}
	}
	e.deny = map[EventKind]bool{}
	for _, k := range w.Deny {
		e.deny[k] = true
	}
	return e
}

func (e *events) logged(ev Event) bool {
	if ev.level() >= slog.LevelWarn {
		return true
	}
	if e.deny[ev.Kind] {
		return false
	}
	return e.allow == nil || e.allow[ev.Kind]
}

func (e *events) emit(ev Event) {
	ev.Time = time.Now()
	if e.logged(ev) {
		attrs := []any{"event", string(ev.Kind)}
		if ev.Cluster >= 0 {
			attrs = append(attrs, "cluster", ev.Cluster)
		}
		if ev.Shard >= 0 {
			attrs = append(attrs, "shard", ev.Shard)
		}
		if ev.Service != "" {
			attrs = append(attrs, "service", ev.Service)
		}
		if ev.Of > 0 {
			attrs = append(attrs, "n", ev.N, "of", ev.Of)
		}
		if ev.Duration > 0 {
			attrs = append(attrs, "duration", ev.Duration)
		}
		if ev.Err != nil {
			attrs = append(attrs, "err", ev.Err.Error())
		}
		e.log.Log(context.Background(), ev.level(), "fleet "+string(ev.Kind), attrs...)
	}
	e.mu.Lock()
	fns := make([]func(Event), 0, len(e.subs))
	keys := make([]int, 0, len(e.subs))
	for k := range e.subs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fns = append(fns, e.subs[k])
	}
	e.mu.Unlock()
	for _, fn := range fns {
		fn(ev)
	}
}

// Subscribe calls fn for every lifecycle event, on the goroutine that
// caused it: fn must not block. The returned func removes exactly this
// subscription.
func (r *Runtime) Subscribe(fn func(Event)) (unsubscribe func()) {
	e := r.events
	e.mu.Lock()
	id := e.next
	e.next++
	e.subs[id] = fn
	e.mu.Unlock()
	return func() {
		e.mu.Lock()
		delete(e.subs, id)
		e.mu.Unlock()
	}
}
