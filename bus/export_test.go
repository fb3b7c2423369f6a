package bus

import "testing"

// DefaultTransport returns a new in-memory Transport, for tests that wrap it.
func DefaultTransport(testing.TB) Transport { return newMemTransport() }

// QueueLen returns the number of messages queued at addr.
func QueueLen(b *Bus, addr Address) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if r, ok := b.routes[addr]; ok {
		return len(r.mailbox)
	}
	return 0
}
