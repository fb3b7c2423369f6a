package runtime

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gofleet/fleet/services"
)

// EventKind names a lifecycle event; the names are WhatToLog's keys. The
// services package's events share the type.
type EventKind = services.EventKind

// The event kinds, each with the type of its events.
const (
	EventShardIdentify     EventKind = "shard_identify"     // ShardIdentify
	EventShardReady        EventKind = "shard_ready"        // ShardReady
	EventShardResumed      EventKind = "shard_resumed"      // ShardResumed
	EventShardDisconnected EventKind = "shard_disconnected" // ShardDisconnected
	EventShardClosed       EventKind = "shard_closed"       // ShardClosed
	EventShardZombie       EventKind = "shard_zombie"       // ShardZombie
	EventListenerPanic     EventKind = "listener_panic"     // ListenerPanic
	EventClusterReady      EventKind = "cluster_ready"      // ClusterReady
	EventClusterRestarted  EventKind = "cluster_restarted"  // ClusterRestarted
	EventClusterFailed     EventKind = "cluster_failed"     // ClusterFailed
	EventClusterShutdown   EventKind = "cluster_shutdown"   // ClusterShutdown
	EventStartupProgress   EventKind = "startup_progress"   // StartupProgress
	EventFleetReady        EventKind = "fleet_ready"        // FleetReady
	EventFatal             EventKind = "fatal"              // Fatal

	EventSoftRestartStarted    EventKind = "soft_restart_started"     // SoftRestartStarted
	EventSoftRestartHandedOver EventKind = "soft_restart_handed_over" // SoftRestartHandedOver
	EventSoftRestartDone       EventKind = "soft_restart_done"        // SoftRestartDone

	// Service events, as the services package names them (its types:
	// services.Ready, StartingError, Restarted, Failed, Stopped).
	EventServiceReady         = services.EventReady
	EventServiceStartingError = services.EventStartingError
	EventServiceRestarted     = services.EventRestarted
	EventServiceFailed        = services.EventFailed
	EventServiceShutdown      = services.EventShutdown

	EventReshardStarted  EventKind = "reshard_started"  // ReshardStarted
	EventReshardProgress EventKind = "reshard_progress" // ReshardProgress
	EventReshardCutOver  EventKind = "reshard_cut_over" // ReshardCutOver
	EventReshardDone     EventKind = "reshard_done"     // ReshardDone
	EventShutdown        EventKind = "shutdown"         // FleetShutdown
	EventStats           EventKind = "stats"            // StatsReport
)

// Event is a typed lifecycle event: one of the types below, or a service
// event of the services package (services.Ready and its kin). Switch on
// its type to read its fields:
//
//	rt.Subscribe(func(e runtime.Event) {
//		switch e := e.(type) {
//		case runtime.StartupProgress:
//			fmt.Printf("%d of %d shards ready, about %s left\n", e.Ready, e.Shards, e.ETA)
//		case runtime.ClusterFailed:
//			alert(e.Cluster, e.Err)
//		}
//	})
//
// Subscribers run when the event happens, on the goroutine that caused
// it: time.Now() is the event's time. It is the services package's Event:
// Kind, String (the event on one line) and LogValue (its fields as a log
// group).
type Event = services.Event

// ShardIdentify is a shard sending IDENTIFY, after Waited in the identify
// queue. Logged at Debug: StartupProgress and the cluster events cover it.
type ShardIdentify struct {
	Cluster, Shard int
	Waited         time.Duration
}

// ShardReady is a shard of the first generation ready for the first time
// since Run: Ready of the Of shards this runtime runs have been. Logged at
// Debug: StartupProgress covers it.
type ShardReady struct {
	Cluster, Shard int
	Ready, Of      int
	Elapsed        time.Duration // since Run began
}

// ShardResumed is a shard whose session was resumed.
type ShardResumed struct{ Cluster, Shard int }

// ShardDisconnected is a ready shard that lost its connection.
type ShardDisconnected struct{ Cluster, Shard int }

// ShardClosed is the gateway closing a shard's connection with Code.
// Logged at Debug: ShardDisconnected says what it means for the fleet.
type ShardClosed struct{ Cluster, Shard, Code int }

// ShardZombie is a shard closing a connection whose heartbeats the
// gateway stopped acknowledging. Logged at Debug.
type ShardZombie struct{ Cluster, Shard int }

// ListenerPanic is a panic recovered from an event listener; the shard
// goes on. Logged at Debug: the cluster logs it with its stack.
type ListenerPanic struct {
	Cluster, Shard int
	Value          any // what the listener panicked with
}

// ClusterReady is a cluster instance whose every shard is ready.
type ClusterReady struct {
	Cluster int
	Took    time.Duration // since this instance started, its Setup included
}

// ClusterRestarted is a cluster started again: by Restart (Hard), or by
// its supervisor after Err, the Setup error or the ClusterTimeout, waiting
// Backoff first; Restarts of MaxRestarts are used in RestartWindow
// (MaxRestarts 0: without limit).
type ClusterRestarted struct {
	Cluster     int
	Hard        bool
	Restarts    int
	MaxRestarts int
	Backoff     time.Duration
	Err         error
}

// ClusterFailed is a cluster given up on after MaxRestarts restarts.
type ClusterFailed struct {
	Cluster int
	Err     error
}

// ClusterShutdown is a cluster stopped for good by ShutdownCluster.
type ClusterShutdown struct{ Cluster int }

// FleetReady is every shard of the first generation ready.
type FleetReady struct {
	Shards  int
	Elapsed time.Duration // since Run began
}

// Fatal is what stops the fleet: a fatal gateway close, a Setup error
// wrapping ErrFatal, or every cluster failed.
type Fatal struct{ Err error }

// SoftRestartStarted is a soft restart of Cluster beginning.
type SoftRestartStarted struct{ Cluster int }

// SoftRestartHandedOver is a soft restart's hand-over done: Sessions of
// the cluster's Shards were handed over to the new instance.
type SoftRestartHandedOver struct {
	Cluster          int
	Sessions, Shards int
	// Pause is from the old shards' stop to the new ones ready: the time
	// the cluster's events waited.
	Pause time.Duration
}

// SoftRestartDone is a soft restart finished, the old instance's Shutdown
// hook included.
type SoftRestartDone struct {
	Cluster int
	Took    time.Duration // from SoftRestartStarted
}

// ReshardStarted is a reshard beginning, From shards To shards.
type ReshardStarted struct{ From, To int }

// ReshardProgress is a new shard of a reshard ready with its guilds:
// Loaded of Of are.
type ReshardProgress struct {
	Shard      int
	Loaded, Of int
	Elapsed    time.Duration // since the reshard started
}

// ReshardCutOver is the new generation serving in place of the old one.
type ReshardCutOver struct {
	From, To int
	// StartUp is from the reshard's start to the cut-over: the time the
	// new generation took to identify and load its guilds.
	StartUp time.Duration
}

// ReshardDone is a reshard finished, the old generation stopped.
type ReshardDone struct {
	From, To int
	Took     time.Duration // from ReshardStarted
}

// FleetShutdown is Run stopping, once everything has stopped.
type FleetShutdown struct{}

// StatsReport carries a Stats snapshot, every Config.StatsInterval.
// Logged at Debug.
type StatsReport struct{ Stats *Stats }

func (ShardIdentify) Kind() EventKind         { return EventShardIdentify }
func (ShardReady) Kind() EventKind            { return EventShardReady }
func (ShardResumed) Kind() EventKind          { return EventShardResumed }
func (ShardDisconnected) Kind() EventKind     { return EventShardDisconnected }
func (ShardClosed) Kind() EventKind           { return EventShardClosed }
func (ShardZombie) Kind() EventKind           { return EventShardZombie }
func (ListenerPanic) Kind() EventKind         { return EventListenerPanic }
func (ClusterReady) Kind() EventKind          { return EventClusterReady }
func (ClusterRestarted) Kind() EventKind      { return EventClusterRestarted }
func (ClusterFailed) Kind() EventKind         { return EventClusterFailed }
func (ClusterShutdown) Kind() EventKind       { return EventClusterShutdown }
func (FleetReady) Kind() EventKind            { return EventFleetReady }
func (Fatal) Kind() EventKind                 { return EventFatal }
func (SoftRestartStarted) Kind() EventKind    { return EventSoftRestartStarted }
func (SoftRestartHandedOver) Kind() EventKind { return EventSoftRestartHandedOver }
func (SoftRestartDone) Kind() EventKind       { return EventSoftRestartDone }
func (ReshardStarted) Kind() EventKind        { return EventReshardStarted }
func (ReshardProgress) Kind() EventKind       { return EventReshardProgress }
func (ReshardCutOver) Kind() EventKind        { return EventReshardCutOver }
func (ReshardDone) Kind() EventKind           { return EventReshardDone }
func (FleetShutdown) Kind() EventKind         { return EventShutdown }
func (StatsReport) Kind() EventKind           { return EventStats }

func (e ShardIdentify) LogValue() slog.Value {
	return group(clusterShard(e.Cluster, e.Shard), slog.Duration("waited", e.Waited))
}
func (e ShardReady) LogValue() slog.Value {
	return group(clusterShard(e.Cluster, e.Shard), slog.Int("n", e.Ready), slog.Int("of", e.Of), slog.Duration("elapsed", e.Elapsed))
}
func (e ShardResumed) LogValue() slog.Value      { return group(clusterShard(e.Cluster, e.Shard)) }
func (e ShardDisconnected) LogValue() slog.Value { return group(clusterShard(e.Cluster, e.Shard)) }
func (e ShardClosed) LogValue() slog.Value {
	return group(clusterShard(e.Cluster, e.Shard), slog.Int("code", e.Code))
}
func (e ShardZombie) LogValue() slog.Value { return group(clusterShard(e.Cluster, e.Shard)) }
func (e ListenerPanic) LogValue() slog.Value {
	return group(clusterShard(e.Cluster, e.Shard), slog.String("panic", fmt.Sprint(e.Value)))
}
func (e ClusterReady) LogValue() slog.Value {
	return group(nil, slog.Int("cluster", e.Cluster), slog.Duration("took", e.Took))
}
func (e ClusterRestarted) LogValue() slog.Value {
	as := []slog.Attr{slog.Int("cluster", e.Cluster)}
	if e.Hard {
		as = append(as, slog.Bool("hard", true))
	} else {
		as = append(as, slog.Int("n", e.Restarts), slog.Int("of", e.MaxRestarts), slog.Duration("backoff", e.Backoff))
	}
	return group(as, errAttr(e.Err)...)
}
func (e ClusterFailed) LogValue() slog.Value {
	return group([]slog.Attr{slog.Int("cluster", e.Cluster)}, errAttr(e.Err)...)
}
func (e ClusterShutdown) LogValue() slog.Value { return group(nil, slog.Int("cluster", e.Cluster)) }
func (e FleetReady) LogValue() slog.Value {
	return group(nil, slog.Int("shards", e.Shards), slog.Duration("elapsed", e.Elapsed))
}
func (e Fatal) LogValue() slog.Value              { return group(nil, errAttr(e.Err)...) }
func (e SoftRestartStarted) LogValue() slog.Value { return group(nil, slog.Int("cluster", e.Cluster)) }
func (e SoftRestartHandedOver) LogValue() slog.Value {
	return group(nil, slog.Int("cluster", e.Cluster), slog.Int("n", e.Sessions), slog.Int("of", e.Shards), slog.Duration("pause", e.Pause))
}
func (e SoftRestartDone) LogValue() slog.Value {
	return group(nil, slog.Int("cluster", e.Cluster), slog.Duration("took", e.Took))
}
func (e ReshardStarted) LogValue() slog.Value {
	return group(nil, slog.Int("from", e.From), slog.Int("to", e.To))
}
func (e ReshardProgress) LogValue() slog.Value {
	return group(nil, slog.Int("shard", e.Shard), slog.Int("n", e.Loaded), slog.Int("of", e.Of), slog.Duration("elapsed", e.Elapsed))
}
func (e ReshardCutOver) LogValue() slog.Value {
	return group(nil, slog.Int("from", e.From), slog.Int("to", e.To), slog.Duration("start_up", e.StartUp))
}
func (e ReshardDone) LogValue() slog.Value {
	return group(nil, slog.Int("from", e.From), slog.Int("to", e.To), slog.Duration("took", e.Took))
}
func (FleetShutdown) LogValue() slog.Value { return group(nil) }
func (e StatsReport) LogValue() slog.Value {
	if e.Stats == nil {
		return group(nil)
	}
	return group(nil, slog.Int("shards_ready", e.Stats.ShardsReady), slog.Int("shards", e.Stats.Shards), slog.Int("guilds", e.Stats.Guilds))
}

func (e ShardIdentify) String() string         { return eventString(e) }
func (e ShardReady) String() string            { return eventString(e) }
func (e ShardResumed) String() string          { return eventString(e) }
func (e ShardDisconnected) String() string     { return eventString(e) }
func (e ShardClosed) String() string           { return eventString(e) }
func (e ShardZombie) String() string           { return eventString(e) }
func (e ListenerPanic) String() string         { return eventString(e) }
func (e ClusterReady) String() string          { return eventString(e) }
func (e ClusterRestarted) String() string      { return eventString(e) }
func (e ClusterFailed) String() string         { return eventString(e) }
func (e ClusterShutdown) String() string       { return eventString(e) }
func (e FleetReady) String() string            { return eventString(e) }
func (e Fatal) String() string                 { return eventString(e) }
func (e SoftRestartStarted) String() string    { return eventString(e) }
func (e SoftRestartHandedOver) String() string { return eventString(e) }
func (e SoftRestartDone) String() string       { return eventString(e) }
func (e ReshardStarted) String() string        { return eventString(e) }
func (e ReshardProgress) String() string       { return eventString(e) }
func (e ReshardCutOver) String() string        { return eventString(e) }
func (e ReshardDone) String() string           { return eventString(e) }
func (e FleetShutdown) String() string         { return eventString(e) }
func (e StatsReport) String() string           { return eventString(e) }

func clusterShard(cluster, shard int) []slog.Attr {
	return []slog.Attr{slog.Int("cluster", cluster), slog.Int("shard", shard)}
}

func group(as []slog.Attr, more ...slog.Attr) slog.Value {
	return slog.GroupValue(append(as, more...)...)
}

func errAttr(err error) []slog.Attr {
	if err == nil {
		return nil
	}
	return []slog.Attr{slog.String("err", err.Error())}
}

// eventString is an event on one line: its kind, then its fields as
// key=value.
func eventString(e Event) string {
	var b strings.Builder
	b.WriteString(string(e.Kind()))
	for _, a := range e.LogValue().Group() {
		v := a.Value.Resolve()
		if v.Kind() == slog.KindString {
			fmt.Fprintf(&b, " %s=%q", a.Key, v.String())
		} else {
			fmt.Fprintf(&b, " %s=%v", a.Key, v)
		}
	}
	return b.String()
}

// level is the slog level of an event's record.
func level(e Event) slog.Level {
	switch e := e.(type) {
	case ShardIdentify, ShardReady, ShardClosed, ShardZombie, ListenerPanic, StatsReport:
		return slog.LevelDebug
	case ClusterFailed, Fatal, services.Failed:
		return slog.LevelError
	case ClusterRestarted:
		if !e.Hard {
			return slog.LevelWarn
		}
	case ShardDisconnected, services.StartingError, services.Restarted:
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

func (e *events) logged(ev Event, lvl slog.Level) bool {
	if lvl >= slog.LevelWarn {
		return true
	}
	if e.deny[ev.Kind()] {
		return false
	}
	return e.allow == nil || e.allow[ev.Kind()]
}

func (e *events) emit(ev Event) {
	lvl := level(ev)
	if e.logged(ev, lvl) && e.log.Enabled(context.Background(), lvl) {
		attrs := append([]slog.Attr{slog.String("event", string(ev.Kind()))}, ev.LogValue().Group()...)
		e.log.LogAttrs(context.Background(), lvl, "fleet "+string(ev.Kind()), attrs...)
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
