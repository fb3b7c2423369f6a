// Package restart is the restart budget the runtime's cluster supervisors
// and the services manager share: how many restarts a window allows, and
// how long to wait before each one.
package restart

import (
	"math/rand/v2"
	"time"
)

// Budget counts failures of one supervised thing and spaces its restarts:
// at most Max restarts within Window, each after a back-off that doubles
// from Base up to Cap, plus up to Jitter of itself at random, so that
// things failing together do not restart together. Once the thing has
// been up for StableAfter, the back-off starts again from Base.
//
// Like x/time/rate, it runs no goroutine and reads no clock of its own:
// the caller passes the time, so tests step through it in made-up time.
// The zero value allows no restart (Max 0); it is not safe for
// simultaneous use.
type Budget struct {
	Max         int           // restarts allowed within Window; -1: no limit
	Window      time.Duration // 0: the restarts are counted forever
	Base, Cap   time.Duration // first back-off, and its ceiling (0: no ceiling)
	Jitter      float64       // fraction of the back-off added at random, in [0, 1]
	StableAfter time.Duration // up this long resets the back-off (0: never)

	// Rand returns a number in [0, 1) for the jitter (nil: math/rand/v2).
	Rand func() float64

	restarts []time.Time // within Window, oldest first
	next     time.Duration
	upSince  time.Time
}

// Up records that the thing became healthy at t (a cluster ready, a
// service started).
func (b *Budget) Up(t time.Time) { b.upSince = t }

// Fail records a failure at t. It reports whether a restart is allowed
// and, if so, how long to wait before it; a restart allowed is counted.
func (b *Budget) Fail(t time.Time) (wait time.Duration, ok bool) {
	if !b.count(t) {
		return 0, false
	}
	if b.next == 0 {
		b.next = b.Base
	}
	wait = b.next
	b.next *= 2
	if b.Cap > 0 {
		b.next = min(b.next, b.Cap)
		wait = min(wait, b.Cap)
	}
	if b.Jitter > 0 && wait > 0 {
		r := b.Rand
		if r == nil {
			r = rand.Float64
		}
		wait += time.Duration(b.Jitter * r() * float64(wait))
	}
	return wait, true
}

// FailNow records at t the failure of a thing that was up and restarts at
// once (a crashed process whose work resumes): it is counted like Fail's
// and reports whether the budget allows it, but it neither waits nor
// lengthens the next back-off.
func (b *Budget) FailNow(t time.Time) bool { return b.count(t) }

// count records a failure at t and reports whether a restart is allowed.
func (b *Budget) count(t time.Time) bool {
	if !b.upSince.IsZero() {
		if b.StableAfter > 0 && t.Sub(b.upSince) >= b.StableAfter {
			b.next = 0
		}
		b.upSince = time.Time{}
	}
	if b.Window > 0 {
		i := 0
		for i < len(b.restarts) && t.Sub(b.restarts[i]) >= b.Window {
			i++
		}
		b.restarts = b.restarts[i:]
	}
	if b.Max >= 0 && len(b.restarts) >= b.Max {
		return false
	}
	if b.Max >= 0 || b.Window > 0 { // unlimited and windowless: nothing to count
		b.restarts = append(b.restarts, t)
	}
	return true
}

// Used is how many restarts count within the window at t.
func (b *Budget) Used(t time.Time) int {
	n := 0
	for _, r := range b.restarts {
		if b.Window == 0 || t.Sub(r) < b.Window {
			n++
		}
	}
	return n
}
