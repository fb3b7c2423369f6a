package services

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/gofleet/fleet/bus"
)

// StoreBackend keeps the central store's data outside the Store, for
// instance in a key-value bucket that several processes share. Values
// are JSON documents. Its methods are called from the store's handlers
// with the caller's context.
type StoreBackend interface {
	Get(ctx context.Context, key string) (json.RawMessage, bool, error)
	Set(ctx context.Context, key string, value json.RawMessage) error
	Delete(ctx context.Context, key string) (bool, error)
	// Keys returns the keys, sorted.
	Keys(ctx context.Context) ([]string, error)
	Clear(ctx context.Context) (int, error)
}

// StoreIncrementer is a StoreBackend that can add to an integer value in
// one atomic step; [StoreIncrement] needs it.
type StoreIncrementer interface {
	Increment(ctx context.Context, key string, delta int64) (int64, error)
}

// NewStoreOn returns a Store whose data lives in b: [StoreGet] and the
// other helpers reach it through the bus as they reach a Store in memory.
func NewStoreOn(b StoreBackend) *Store {
	return &Store{backend: b}
}

// handleBackend registers the store's commands on ep, served by the backend.
func (s *Store) handleBackend(ep bus.Handlers) {
	b := s.backend
	bus.Handle(ep, storeGet, func(ctx context.Context, key string) (storeValue, error) {
		v, ok, err := b.Get(ctx, key)
		return storeValue{Value: v, Found: ok}, err
	})
	bus.Handle(ep, storeSet, func(ctx context.Context, e storeEntry) (struct{}, error) {
		if !json.Valid(e.Value) {
			return struct{}{}, fmt.Errorf("store: set %q: the value is not JSON", e.Key)
		}
		return struct{}{}, b.Set(ctx, e.Key, e.Value)
	})
	bus.Handle(ep, storeDelete, b.Delete)
	bus.Handle(ep, storeHas, func(ctx context.Context, key string) (bool, error) {
		_, ok, err := b.Get(ctx, key)
		return ok, err
	})
	bus.Handle(ep, storeKeys, func(ctx context.Context, _ struct{}) ([]string, error) { return b.Keys(ctx) })
	bus.Handle(ep, storeClear, func(ctx context.Context, _ struct{}) (int, error) { return b.Clear(ctx) })
	bus.Handle(ep, storeIncr, func(ctx context.Context, d storeDelta) (int64, error) {
		inc, ok := b.(StoreIncrementer)
		if !ok {
			return 0, fmt.Errorf("store: increment %q: the store's backend (%T) has no atomic increment", d.Key, b)
		}
		return inc.Increment(ctx, d.Key, d.Delta)
	})
}
