package natsfleet_test

import (
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gofleet/fleet/natsfleet"
)

func TestMemoryGuardTripsOnlyWhenOverForLongEnough(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	const mib = 1 << 20
	steps := []struct {
		ms   int
		rss  uint64
		trip bool
	}{
		{0, 100 * mib, false},   // under
		{100, 300 * mib, false}, // over since 100
		{500, 300 * mib, false}, // 400 ms over
		{700, 200 * mib, false}, // at the limit: under, the run ends
		{800, 300 * mib, false}, // over since 800
		{1700, 250 * mib, false},
		{1800, 251 * mib, true}, // 1 s over
	}
	g := natsfleet.MemoryGuard{Limit: 200 * mib, For: time.Second}
	for _, s := range steps {
		if got := g.Observe(at(s.ms), s.rss); got != s.trip {
			t.Fatalf("at %d ms, RSS %d MiB: Observe = %v, want %v", s.ms, s.rss/mib, got, s.trip)
		}
	}
	if !g.Since().Equal(at(800)) {
		t.Errorf("Since() = %v, want the run's start %v", g.Since(), at(800))
	}
	var zero natsfleet.MemoryGuard
	if zero.Observe(t0, 1<<40) {
		t.Error("the zero MemoryGuard tripped")
	}
}

func TestReadRSS(t *testing.T) {
	rss, ok := natsfleet.ReadRSS(os.Getpid())
	if runtime.GOOS != "linux" {
		if ok {
			t.Fatal("ReadRSS answered without /proc")
		}
		return
	}
	if !ok || rss < 1<<20 {
		t.Fatalf("ReadRSS(self) = %d, %v: want at least 1 MiB", rss, ok)
	}
	if _, ok := natsfleet.ReadRSS(-1); ok {
		t.Error("ReadRSS(-1) answered")
	}
}

func TestMemoryLimitErrorSaysWhatToChange(t *testing.T) {
	err := &natsfleet.MemoryLimitError{PID: 42, RSS: 600 << 20, Limit: 512 << 20, For: time.Second}
	for _, want := range []string{"42", "600 MiB", "512 MiB", "ProcessConfig.MaxRSS", "1s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not say %q", err, want)
		}
	}
}
