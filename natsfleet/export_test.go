package natsfleet

import (
	"context"
	"errors"
	"fmt"

	"github.com/gofleet/fleet/bus"
)

// WaitDirect waits until t has a direct link open to the process that
// serves addr, or ctx ends.
func WaitDirect(ctx context.Context, t *Transport, addr bus.Address) error {
	for {
		if t.pickLink(addr) != nil {
			return nil
		}
		t.mu.Lock()
		changed := t.changed
		t.mu.Unlock()
		o, ok := (*t.owners.Load())[addr]
		if !ok {
			select {
			case <-changed:
				continue
			case <-ctx.Done():
				return fmt.Errorf("no process of this host serves %s with a direct link: %w", addr, ctx.Err())
			}
		}
		t.lmu.Lock()
		l := t.links[o.id]
		t.lmu.Unlock()
		if l == nil {
			continue
		}
		select {
		case <-l.opened:
		case <-ctx.Done():
			return fmt.Errorf("the direct link to %s did not open: %w", addr, ctx.Err())
		}
		t.lmu.Lock()
		failed := !l.ready
		t.lmu.Unlock()
		if failed {
			return errors.New("the direct link failed to open")
		}
	}
}

// BreakDirect closes every direct link of t, as a dropped connection
// would.
func BreakDirect(t *Transport) {
	t.lmu.Lock()
	defer t.lmu.Unlock()
	for c := range t.linkConns {
		_ = c.Close()
	}
}

// IssuedTickets is the number of tickets of bucket k that q has seen
// issued.
func IssuedTickets(q *IdentifyQueue, k int) uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.view[k].issued
}
