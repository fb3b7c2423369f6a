package restproxy

import "time"

// slots is how finely the invalid-request window is counted.
const slots = 100

// slidingCount counts events in a sliding window split into slots, so it
// takes constant memory whatever the count; events leave the count one
// slot at a time. It advances lazily, when it is used.
type slidingCount struct {
	slot    time.Duration
	counts  [slots]int
	head    int       // the slot being filled
	headEnd time.Time // when the head slot ends
	total   int
}

func newSlidingCount(window time.Duration) slidingCount {
	return slidingCount{slot: max(window/slots, 1)}
}

func (c *slidingCount) advance(now time.Time) {
	if c.headEnd.IsZero() {
		c.headEnd = now.Add(c.slot)
		return
	}
	for step := 0; !now.Before(c.headEnd); step++ {
		if step == slots {
			*c = slidingCount{slot: c.slot, headEnd: now.Add(c.slot)}
			return
		}
		c.head = (c.head + 1) % slots
		c.total -= c.counts[c.head]
		c.counts[c.head] = 0
		c.headEnd = c.headEnd.Add(c.slot)
	}
}

func (c *slidingCount) add(now time.Time) int {
	c.advance(now)
	c.counts[c.head]++
	c.total++
	return c.total
}

func (c *slidingCount) count(now time.Time) int {
	c.advance(now)
	return c.total
}
