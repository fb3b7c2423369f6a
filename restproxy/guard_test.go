package restproxy

import (
	"testing"
	"time"
)

func TestRestSlidingCount(t *testing.T) {
	c := newSlidingCount(100 * time.Millisecond) // 1 ms slots
	t0 := time.Unix(1000, 0)
	for i := range 10 {
		c.add(t0.Add(time.Duration(i) * 10 * time.Millisecond)) // one every 10 ms
	}
	for _, step := range []struct {
		at   time.Duration
		want int
	}{
		{90 * time.Millisecond, 10},
		{100 * time.Millisecond, 9}, // the first has left the window
		{155 * time.Millisecond, 4},
		{time.Hour, 0},
	} {
		if got := c.count(t0.Add(step.at)); got != step.want {
			t.Errorf("count at %s = %d, want %d", step.at, got, step.want)
		}
	}
}
