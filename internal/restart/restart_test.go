package restart

import (
	"testing"
	"time"
)

// step is one call in a step table: an Up at, or a Fail at that must
// answer wait and ok.
type step struct {
	at   time.Duration // since t0
	up   bool
	wait time.Duration
	ok   bool
}

func run(t *testing.T, b *Budget, steps []step) {
	t.Helper()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, s := range steps {
		at := t0.Add(s.at)
		if s.up {
			b.Up(at)
			continue
		}
		wait, ok := b.Fail(at)
		if wait != s.wait || ok != s.ok {
			t.Fatalf("step %d (at %v): Fail = %v, %v; want %v, %v", i, s.at, wait, ok, s.wait, s.ok)
		}
	}
}

func TestBudgetDoublesAndRunsOut(t *testing.T) {
	b := &Budget{Max: 3, Window: time.Minute, Base: time.Second, Cap: 3 * time.Second}
	run(t, b, []step{
		{at: 0, wait: time.Second, ok: true},
		{at: time.Second, wait: 2 * time.Second, ok: true},
		{at: 3 * time.Second, wait: 3 * time.Second, ok: true},  // capped
		{at: 6 * time.Second, ok: false},                        // fourth within the minute
		{at: 61 * time.Second, wait: 3 * time.Second, ok: true}, // the first has left the window
	})
}

func TestBudgetStableResetsBackoff(t *testing.T) {
	b := &Budget{Max: -1, Window: time.Hour, Base: time.Second, Cap: time.Minute, StableAfter: 10 * time.Second}
	run(t, b, []step{
		{at: 0, wait: time.Second, ok: true},
		{at: time.Second, wait: 2 * time.Second, ok: true},
		{at: 3 * time.Second, up: true},
		{at: 5 * time.Second, wait: 4 * time.Second, ok: true}, // up 2 s: not stable, keeps doubling
		{at: 9 * time.Second, up: true},
		{at: 19 * time.Second, wait: time.Second, ok: true}, // up 10 s: from Base again
	})
}

func TestBudgetZeroAllowsNothing(t *testing.T) {
	run(t, &Budget{}, []step{{at: 0, ok: false}})
}

func TestBudgetJitter(t *testing.T) {
	b := &Budget{Max: -1, Base: time.Second, Jitter: 0.5, Rand: func() float64 { return 0.5 }}
	run(t, b, []step{
		{at: 0, wait: 1250 * time.Millisecond, ok: true},
		{at: time.Second, wait: 2500 * time.Millisecond, ok: true},
	})
	if len(b.restarts) != 0 {
		t.Fatalf("an unlimited windowless budget keeps %d times", len(b.restarts))
	}
}

// TestBudgetFailNow: a restart at once counts in the window but leaves
// the back-off as it was.
func TestBudgetFailNow(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b := &Budget{Max: 3, Window: time.Minute, Base: time.Second}
	if wait, ok := b.Fail(t0); !ok || wait != time.Second {
		t.Fatalf("Fail = %v, %v; want 1s, true", wait, ok)
	}
	if !b.FailNow(t0.Add(2 * time.Second)) {
		t.Fatal("FailNow refused the second restart of three")
	}
	if wait, ok := b.Fail(t0.Add(3 * time.Second)); !ok || wait != 2*time.Second {
		t.Fatalf("Fail after FailNow = %v, %v; want 2s (not lengthened by FailNow), true", wait, ok)
	}
	if b.FailNow(t0.Add(4 * time.Second)) {
		t.Fatal("FailNow allowed a fourth restart within the window")
	}
	if n := b.Used(t0.Add(4 * time.Second)); n != 3 {
		t.Fatalf("Used = %d, want 3", n)
	}
}
