package natsfleet

import (
	"context"
	"fmt"
	"sync"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/services"
)

// storeConcurrency is how many store commands a host handles at once:
// the bucket takes concurrent writes, and an increment is a
// compare-and-set that retries on a conflict.
const storeConcurrency = 16

// serveStore starts the central store's endpoint (services.StoreName) on
// b, backed by the fleet's store bucket, so that the usual helpers
// (services.StoreGet, StoreSet, StoreIncrement...) called by cluster code
// on this host reach the data every host shares. Close the returned
// Manager to stop it.
func serveStore(ctx context.Context, b *bus.Bus, store *KVStore, cfg services.ManagerConfig) (*services.Manager, error) {
	sp := services.NewStoreOn(store).Spec()
	sp.Concurrency = storeConcurrency
	cfg.Specs = []services.Spec{sp}
	m, err := services.NewManager(b, cfg)
	if err != nil {
		return nil, err
	}
	if err := m.Start(ctx); err != nil {
		_ = m.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("natsfleet: serve the central store: %w", err)
	}
	return m, nil
}

// localFirst is the fleet's Transport, except for the addresses in only:
// those are bound and delivered in this process alone, so that every
// host can serve them to its own callers (the central store, whose data
// is in the fleet's bucket and whose endpoint keeps no state) instead of
// one host serving the whole fleet.
type localFirst struct {
	*Transport
	only map[bus.Address]bool // set once, read only

	mu    sync.Mutex // guards local
	local map[bus.Address]bus.Receiver
}

func newLocalFirst(tr *Transport, only ...bus.Address) *localFirst {
	t := &localFirst{Transport: tr, only: map[bus.Address]bool{}, local: map[bus.Address]bus.Receiver{}}
	for _, a := range only {
		t.only[a] = true
	}
	return t
}

// Bind binds addr in this process only if it is one of only, otherwise
// on the fleet's Transport.
func (t *localFirst) Bind(addr bus.Address, r bus.Receiver) error {
	if !t.only[addr] {
		return t.Transport.Bind(addr, r)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.local[addr]; ok {
		return fmt.Errorf("%w: %s", bus.ErrAddressInUse, addr)
	}
	t.local[addr] = r
	return nil
}

// Unbind undoes Bind.
func (t *localFirst) Unbind(addr bus.Address, r bus.Receiver) {
	if !t.only[addr] {
		t.Transport.Unbind(addr, r)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.local[addr] == r {
		delete(t.local, addr)
	}
}

// Deliver delivers a message for one of only in this process, and any
// other through the fleet's Transport.
func (t *localFirst) Deliver(ctx context.Context, m bus.Message) error {
	if !t.only[m.To] {
		return t.Transport.Deliver(ctx, m)
	}
	t.mu.Lock()
	r := t.local[m.To]
	t.mu.Unlock()
	if r == nil {
		return fmt.Errorf("%w: %s (this host's store is not running)", bus.ErrUnknownAddress, m.To)
	}
	return r.Receive(ctx, m)
}
