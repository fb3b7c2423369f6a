// Package clock is the time source of the fleet's timing rules (the
// identify queue, the REST limiter, the gateway command limit, restart
// back-off): the real clock in production, a Fake one in tests, which
// step through those rules in made-up time without sleeping.
//
// A component keeps its Clock in an unexported field that its package's
// tests may replace, as suture keeps getNow and getAfterChan; no package
// variable holds one.
package clock

import "time"

// Clock tells the time and makes timers.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is a time.Timer made by a Clock. As with time.Timer since Go
// 1.23, no stale value is received from C after Stop or Reset returns.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
	Reset(d time.Duration) bool
}

// Real is the system clock. Its zero value is ready to use.
type Real struct{}

// Now is time.Now.
func (Real) Now() time.Time { return time.Now() }

// NewTimer is time.NewTimer.
func (Real) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.Timer.C }
