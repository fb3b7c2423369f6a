package services

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// EventKind names a lifecycle event of a service.
type EventKind string

// The event kinds, eris-fleet's service events.
const (
	// EventReady: an instance's Start returned nil; it now receives
	// commands (serviceReady).
	EventReady EventKind = "service_ready"
	// EventStartingError: an instance's Start failed, panicked or timed
	// out (serviceStartingError).
	EventStartingError EventKind = "service_starting_error"
	// EventRestarted: the service is being restarted, after a starting
	// error (Err is that error, Backoff the wait before attempt Attempt)
	// or by Restart or SoftRestart (Err is nil).
	EventRestarted EventKind = "service_restarted"
	// EventFailed: the service was given up on, after MaxRestarts
	// restarts within RestartWindow or because its address could not be
	// registered.
	EventFailed EventKind = "service_failed"
	// EventShutdown: the service was stopped by Shutdown or Close
	// (serviceShutdown); Err says what did not stop cleanly.
	EventShutdown EventKind = "service_shutdown"
)

// Event is a typed lifecycle event, given to [ManagerConfig.OnEvent] and
// logged.
type Event struct {
	Kind    EventKind
	Time    time.Time
	Service string
	// Attempt counts the starts of the current start-up, from 1: the one
	// that became ready or failed, or the next one for EventRestarted.
	Attempt int
	// Backoff is the wait before the next attempt, for EventRestarted
	// after a starting error.
	Backoff time.Duration
	Err     error
}

// level is the slog level of an event's record.
func (e Event) level() slog.Level {
	switch e.Kind {
	case EventFailed:
		return slog.LevelError
	case EventStartingError, EventRestarted:
		return slog.LevelWarn
	case EventShutdown:
		if e.Err != nil {
			return slog.LevelWarn
		}
	}
	return slog.LevelInfo
}

// emit logs ev and gives it to OnEvent.
func (m *Manager) emit(ev Event) {
	ev.Time = time.Now()
	attrs := []any{"event", string(ev.Kind), "service", ev.Service}
	if ev.Attempt > 0 {
		attrs = append(attrs, "attempt", ev.Attempt)
	}
	if ev.Backoff > 0 {
		attrs = append(attrs, "backoff", ev.Backoff)
	}
	if ev.Err != nil {
		attrs = append(attrs, "err", ev.Err.Error())
		if pe, ok := errors.AsType[*PanicError](ev.Err); ok {
			attrs = append(attrs, "stack", string(pe.Stack))
		}
	}
	m.log.Log(context.Background(), ev.level(), string(ev.Kind), attrs...)
	if m.cfg.OnEvent != nil {
		m.cfg.OnEvent(ev)
	}
}
