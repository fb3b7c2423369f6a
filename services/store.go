package services

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"

	"github.com/gofleet/fleet/bus"
)

// StoreName is the name of the central store service.
const StoreName = "store"

// storeAddr is the store's address, built once.
var storeAddr = bus.Service(StoreName)

// The store's commands and their payloads. Values are JSON documents, so
// that they pass strict mode and can cross processes.
const (
	storeGet    = "get"    // string → storeValue
	storeSet    = "set"    // storeEntry → struct{}
	storeDelete = "delete" // string → bool (whether the key was there)
	storeHas    = "has"    // string → bool
	storeKeys   = "keys"   // struct{} → []string, sorted
	storeClear  = "clear"  // struct{} → int (how many keys were removed)
	storeIncr   = "incr"   // storeDelta → int64 (the new value)
)

type storeDelta struct {
	Key   string `json:"key"`
	Delta int64  `json:"delta"`
}

type storeEntry struct {
	Key   string          `json:"key"`
	Value json.RawMessage `json:"value"`
}

type storeValue struct {
	Value json.RawMessage `json:"value,omitempty"`
	Found bool            `json:"found"`
}

// Store is the central store: a key-value map that every cluster and
// service reaches through the bus (eris-fleet's centralStore). Run it
// with the Manager from [Store.Spec] and use it from anywhere with
// [StoreSet], [StoreGet], [StoreHas], [StoreDelete], [StoreKeys] and
// [StoreClear].
//
// Its data lives in the Store, not in an instance: it survives Restart
// and SoftRestart, and is lost with the process.
type Store struct {
	mu   sync.Mutex // guards data
	data map[string]json.RawMessage

	backend StoreBackend // if set, holds the data instead of data (NewStoreOn)
}

// NewStore returns an empty Store.
func NewStore() *Store {
	return &Store{data: map[string]json.RawMessage{}}
}

// Spec returns the Spec of the service named [StoreName] that serves s.
// Every instance it starts is s itself, so the data is kept across
// restarts.
func (s *Store) Spec() Spec {
	return Spec{Name: StoreName, New: func() Service { return s }}
}

// Start registers the store's commands on sc's endpoint.
func (s *Store) Start(_ context.Context, sc *Context) error {
	ep := sc.Endpoint()
	if s.backend != nil {
		s.handleBackend(ep)
		return nil
	}
	bus.Handle(ep, storeGet, func(_ context.Context, key string) (storeValue, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		v, ok := s.data[key]
		return storeValue{Value: v, Found: ok}, nil
	})
	bus.Handle(ep, storeSet, func(_ context.Context, e storeEntry) (struct{}, error) {
		if !json.Valid(e.Value) {
			return struct{}{}, fmt.Errorf("store: set %q: the value is not JSON", e.Key)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.data[e.Key] = e.Value
		return struct{}{}, nil
	})
	bus.Handle(ep, storeDelete, func(_ context.Context, key string) (bool, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		_, ok := s.data[key]
		delete(s.data, key)
		return ok, nil
	})
	bus.Handle(ep, storeHas, func(_ context.Context, key string) (bool, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		_, ok := s.data[key]
		return ok, nil
	})
	bus.Handle(ep, storeKeys, func(context.Context, struct{}) ([]string, error) {
		s.mu.Lock()
		keys := make([]string, 0, len(s.data))
		for k := range s.data {
			keys = append(keys, k)
		}
		s.mu.Unlock()
		slices.Sort(keys)
		return keys, nil
	})
	bus.Handle(ep, storeClear, func(context.Context, struct{}) (int, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		n := len(s.data)
		clear(s.data)
		return n, nil
	})
	bus.Handle(ep, storeIncr, func(_ context.Context, d storeDelta) (int64, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		var n int64
		if old, ok := s.data[d.Key]; ok {
			if err := json.Unmarshal(old, &n); err != nil {
				return 0, fmt.Errorf("store: increment %q: the value is not an integer", d.Key)
			}
		}
		n += d.Delta
		s.data[d.Key] = strconv.AppendInt(nil, n, 10)
		return n, nil
	})
	return nil
}

// StoreSet stores v, encoded as JSON, under key in the central store.
func StoreSet[V any](ctx context.Context, b bus.Client, key string, v V) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("services: store set %q: %w", key, err)
	}
	_, err = bus.Request[storeEntry, struct{}](ctx, b, storeAddr, storeSet, storeEntry{Key: key, Value: raw})
	return err
}

// StoreIncrement adds delta to the integer stored under key (a missing
// key counts as 0) and returns the new value, in one step: two callers
// never lose an update, as a StoreGet followed by a StoreSet can.
func StoreIncrement(ctx context.Context, b bus.Client, key string, delta int64) (int64, error) {
	return bus.Request[storeDelta, int64](ctx, b, storeAddr, storeIncr, storeDelta{Key: key, Delta: delta})
}

// StoreGet returns the value stored under key, decoded into a V, and
// whether there was one.
func StoreGet[V any](ctx context.Context, b bus.Client, key string) (V, bool, error) {
	var v V
	r, err := bus.Request[string, storeValue](ctx, b, storeAddr, storeGet, key)
	if err != nil || !r.Found {
		return v, false, err
	}
	if err := json.Unmarshal(r.Value, &v); err != nil {
		return v, true, fmt.Errorf("services: store get %q: %w", key, err)
	}
	return v, true, nil
}

// StoreHas reports whether a value is stored under key.
func StoreHas(ctx context.Context, b bus.Client, key string) (bool, error) {
	return bus.Request[string, bool](ctx, b, storeAddr, storeHas, key)
}

// StoreDelete removes key and reports whether it was there.
func StoreDelete(ctx context.Context, b bus.Client, key string) (bool, error) {
	return bus.Request[string, bool](ctx, b, storeAddr, storeDelete, key)
}

// StoreKeys returns the stored keys, sorted. The caller owns the slice.
func StoreKeys(ctx context.Context, b bus.Client) ([]string, error) {
	return bus.Request[struct{}, []string](ctx, b, storeAddr, storeKeys, struct{}{})
}

// StoreClear removes every key and returns how many there were.
func StoreClear(ctx context.Context, b bus.Client) (int, error) {
	return bus.Request[struct{}, int](ctx, b, storeAddr, storeClear, struct{}{})
}
