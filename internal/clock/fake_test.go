package clock

import (
	"context"
	"slices"
	"testing"
	"time"
)

func fired(t Timer) bool {
	select {
	case <-t.C():
		return true
	default:
		return false
	}
}

func TestFakeFiresAtDeadlines(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := NewFake(t0)
	a, b := f.NewTimer(2*time.Second), f.NewTimer(time.Second)
	if got := f.Timers(); !slices.Equal(got, []time.Duration{time.Second, 2 * time.Second}) {
		t.Fatalf("Timers = %v", got)
	}
	f.Advance(time.Second - 1)
	if fired(a) || fired(b) {
		t.Fatal("a timer fired before its deadline")
	}
	f.Advance(1)
	if fired(a) || !fired(b) {
		t.Fatal("at 1s: want only the 1s timer fired")
	}
	if a.Reset(time.Second) != true || f.Now() != t0.Add(time.Second) {
		t.Fatal("Reset of a pending timer")
	}
	f.Advance(time.Second)
	if !fired(a) || len(f.Timers()) != 0 {
		t.Fatal("a reset timer did not fire at its new deadline")
	}
	c := f.NewTimer(time.Second)
	f.Advance(time.Second)
	if c.Stop() || fired(c) {
		t.Fatal("Stop after firing must drain the channel and report false")
	}
	if !fired(f.NewTimer(0)) {
		t.Fatal("a timer of 0 did not fire at once")
	}
}

func TestFakeWaitTimers(t *testing.T) {
	f := NewFake(time.Time{})
	done := make(chan []time.Duration)
	go func() {
		got, _ := f.WaitTimers(context.Background(), 2)
		done <- got
	}()
	f.NewTimer(time.Minute)
	f.NewTimer(time.Hour)
	if got := <-done; !slices.Equal(got, []time.Duration{time.Minute, time.Hour}) {
		t.Fatalf("WaitTimers = %v", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := f.WaitTimers(ctx, 3); err == nil {
		t.Fatal("WaitTimers ignored its ctx")
	}
}
