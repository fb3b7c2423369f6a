package services

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// EventKind names a lifecycle event. The runtime's events share the type
// (runtime.EventKind), so that one filter (runtime.WhatToLog) covers both.
type EventKind string

// The event kinds, eris-fleet's service events.
const (
	EventReady         EventKind = "service_ready"          // Ready
	EventStartingError EventKind = "service_starting_error" // StartingError
	EventRestarted     EventKind = "service_restarted"      // Restarted
	EventFailed        EventKind = "service_failed"         // Failed
	EventShutdown      EventKind = "service_shutdown"       // Stopped
)

// Event is a typed lifecycle event, given to [ManagerConfig.OnEvent] and
// logged: one of Ready, StartingError, Restarted, Failed and Stopped.
// Switch on its type to read its fields.
type Event interface {
	Kind() EventKind
	// String is the event on one line: its kind, then its fields as
	// key=value.
	String() string
	// LogValue is the event's fields as a group, under the names its log
	// record uses.
	LogValue() slog.Value
}

// Ready is an instance whose Start returned nil; it now receives commands
// (eris-fleet's serviceReady).
type Ready struct {
	Service string
	Attempt int // the start that became ready, counted from 1 in this start-up
}

// StartingError is an instance whose Start failed, panicked or timed out
// (serviceStartingError).
type StartingError struct {
	Service string
	Attempt int // the start that failed, from 1
	Err     error
}

// Restarted is a service being started again: after a starting error
// (Err is that error, Backoff the wait before attempt Attempt) or by
// Restart or SoftRestart (Err is nil, Backoff 0).
type Restarted struct {
	Service string
	Attempt int // the start about to be made, from 1
	Backoff time.Duration
	Err     error
}

// Failed is a service given up on, after MaxRestarts restarts within
// RestartWindow or because its address could not be registered.
type Failed struct {
	Service string
	Attempt int // the last start made
	Err     error
}

// Stopped is a service stopped by Shutdown or Close (serviceShutdown); Err
// says what did not stop cleanly.
type Stopped struct {
	Service string
	Err     error
}

func (Ready) Kind() EventKind         { return EventReady }
func (StartingError) Kind() EventKind { return EventStartingError }
func (Restarted) Kind() EventKind     { return EventRestarted }
func (Failed) Kind() EventKind        { return EventFailed }
func (Stopped) Kind() EventKind       { return EventShutdown }

func (e Ready) LogValue() slog.Value {
	return slog.GroupValue(slog.String("service", e.Service), slog.Int("attempt", e.Attempt))
}

func (e StartingError) LogValue() slog.Value {
	return slog.GroupValue(append([]slog.Attr{slog.String("service", e.Service), slog.Int("attempt", e.Attempt)}, errAttrs(e.Err)...)...)
}

func (e Restarted) LogValue() slog.Value {
	as := []slog.Attr{slog.String("service", e.Service), slog.Int("attempt", e.Attempt)}
	if e.Backoff > 0 {
		as = append(as, slog.Duration("backoff", e.Backoff))
	}
	return slog.GroupValue(append(as, errAttrs(e.Err)...)...)
}

func (e Failed) LogValue() slog.Value {
	return slog.GroupValue(append([]slog.Attr{slog.String("service", e.Service), slog.Int("attempt", e.Attempt)}, errAttrs(e.Err)...)...)
}

func (e Stopped) LogValue() slog.Value {
	return slog.GroupValue(append([]slog.Attr{slog.String("service", e.Service)}, errAttrs(e.Err)...)...)
}

func (e Ready) String() string         { return eventString(e) }
func (e StartingError) String() string { return eventString(e) }
func (e Restarted) String() string     { return eventString(e) }
func (e Failed) String() string        { return eventString(e) }
func (e Stopped) String() string       { return eventString(e) }

// errAttrs is err as log attributes: "err" with its message, and "stack"
// when it is a recovered panic; none for a nil err.
func errAttrs(err error) []slog.Attr {
	if err == nil {
		return nil
	}
	as := []slog.Attr{slog.String("err", err.Error())}
	if pe, ok := errors.AsType[*PanicError](err); ok {
		as = append(as, slog.String("stack", string(pe.Stack)))
	}
	return as
}

// eventString formats an event as its kind followed by its fields as
// key=value, the stack of a panic left out.
func eventString(e Event) string {
	var b strings.Builder
	b.WriteString(string(e.Kind()))
	for _, a := range e.LogValue().Group() {
		if a.Key == "stack" {
			continue
		}
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
	case Failed:
		return slog.LevelError
	case StartingError, Restarted:
		return slog.LevelWarn
	case Stopped:
		if e.Err != nil {
			return slog.LevelWarn
		}
	}
	return slog.LevelInfo
}

// emit logs ev and gives it to OnEvent.
func (m *Manager) emit(ev Event) {
	attrs := append([]slog.Attr{slog.String("event", string(ev.Kind()))}, ev.LogValue().Group()...)
	m.log.LogAttrs(context.Background(), level(ev), string(ev.Kind()), attrs...)
	if m.cfg.OnEvent != nil {
		m.cfg.OnEvent(ev)
	}
}
