package clock

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Fake is a Clock whose time moves only when Advance or Set is called;
// a timer fires when the time reaches its deadline. It is safe for
// concurrent use.
type Fake struct {
	mu      sync.Mutex    // guards the fields below
	now     time.Time     // the current made-up time
	timers  []*fakeTimer  // pending, in no order
	changed chan struct{} // closed and replaced when timers changes
}

// NewFake returns a Fake clock set at t.
func NewFake(t time.Time) *Fake { return &Fake{now: t, changed: make(chan struct{})} }

// Now returns the made-up time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// NewTimer returns a timer that fires once the clock has advanced by d;
// at once if d <= 0.
func (f *Fake) NewTimer(d time.Duration) Timer {
	t := &fakeTimer{f: f, c: make(chan time.Time, 1)}
	t.Reset(d)
	return t
}

// Advance moves the time forward by d, firing every timer whose deadline
// it reaches, earliest first.
func (f *Fake) Advance(d time.Duration) { f.Set(f.Now().Add(d)) }

// Set moves the time to t (never backwards), firing every timer whose
// deadline it reaches, earliest first.
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t.After(f.now) {
		f.now = t
	}
	slices.SortStableFunc(f.timers, func(a, b *fakeTimer) int { return a.at.Compare(b.at) })
	fired := 0
	for _, ft := range f.timers {
		if ft.at.After(f.now) {
			break
		}
		ft.c <- ft.at // capacity 1, emptied by Reset and Stop: never blocks
		fired++
	}
	if fired > 0 {
		f.timers = slices.Delete(f.timers, 0, fired)
		f.notifyLocked()
	}
}

// Timers returns how long from now each pending timer fires, soonest
// first.
func (f *Fake) Timers() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]time.Duration, 0, len(f.timers))
	for _, t := range f.timers {
		out = append(out, t.at.Sub(f.now))
	}
	slices.Sort(out)
	return out
}

// WaitTimers waits until n timers are pending, or ctx ends; it returns
// how long from now each fires, soonest first. A test uses it to know
// that the code under test has begun to wait.
func (f *Fake) WaitTimers(ctx context.Context, n int) ([]time.Duration, error) {
	for {
		f.mu.Lock()
		have, changed := len(f.timers), f.changed
		f.mu.Unlock()
		if have == n {
			return f.Timers(), nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return f.Timers(), context.Cause(ctx)
		}
	}
}

func (f *Fake) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

type fakeTimer struct {
	f  *Fake
	c  chan time.Time
	at time.Time // guarded by f.mu
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

// Stop removes the timer and drains its channel; it reports whether the
// timer was pending.
func (t *fakeTimer) Stop() bool {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	return t.stopLocked()
}

func (t *fakeTimer) stopLocked() bool {
	select {
	case <-t.c:
	default:
	}
	i := slices.Index(t.f.timers, t)
	if i < 0 {
		return false
	}
	t.f.timers = slices.Delete(t.f.timers, i, i+1)
	t.f.notifyLocked()
	return true
}

// Reset makes the timer fire d from now; it reports whether it was
// pending.
func (t *fakeTimer) Reset(d time.Duration) bool {
	f := t.f
	f.mu.Lock()
	defer f.mu.Unlock()
	was := t.stopLocked()
	t.at = f.now.Add(d)
	if d <= 0 {
		t.c <- t.at
		return was
	}
	f.timers = append(f.timers, t)
	f.notifyLocked()
	return was
}
