package services_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/services"
)

// newStore runs a central store on a new bus.
func newStore(t *testing.T, opts bus.Options) (*bus.Bus, *services.Manager) {
	t.Helper()
	b := newBus(t, opts)
	m, _ := newManager(t, b, services.ManagerConfig{Specs: []services.Spec{services.NewStore().Spec()}})
	if err := m.Start(testContext(t)); err != nil {
		t.Fatal(err)
	}
	return b, m
}

type prefs struct {
	Prefix string   `json:"prefix"`
	Admins []uint64 `json:"admins"`
}

func TestStore(t *testing.T) {
	t.Parallel()
	for _, strict := range []bool{false, true} {
		t.Run(fmt.Sprint("strict=", strict), func(t *testing.T) {
			t.Parallel()
			b, _ := newStore(t, bus.Options{Strict: strict})
			ctx := testContext(t)
			must := func(err error) {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
			}

			want := prefs{Prefix: "!", Admins: []uint64{1, 2}}
			must(services.StoreSet(ctx, b, "guild/1", want))
			must(services.StoreSet(ctx, b, "guild/2", prefs{Prefix: "?"}))
			must(services.StoreSet(ctx, b, "count", 41))
			must(services.StoreSet(ctx, b, "count", 42)) // overwrites

			got, ok, err := services.StoreGet[prefs](ctx, b, "guild/1")
			if err != nil || !ok || got.Prefix != want.Prefix || !slices.Equal(got.Admins, want.Admins) {
				t.Errorf("get guild/1 = %+v, %v, %v; want %+v", got, ok, err, want)
			}
			if n, ok, err := services.StoreGet[int](ctx, b, "count"); n != 42 || !ok || err != nil {
				t.Errorf("get count = %d, %v, %v; want 42", n, ok, err)
			}
			if v, ok, err := services.StoreGet[string](ctx, b, "missing"); v != "" || ok || err != nil {
				t.Errorf("get missing = %q, %v, %v; want not found", v, ok, err)
			}
			if _, ok, err := services.StoreGet[int](ctx, b, "guild/1"); !ok || err == nil {
				t.Errorf("get guild/1 as int: %v, %v; want found with a decoding error", ok, err)
			}
			if keys, err := services.StoreKeys(ctx, b); err != nil || !slices.Equal(keys, []string{"count", "guild/1", "guild/2"}) {
				t.Errorf("keys = %v, %v", keys, err)
			}

			// Delete removes the key it is given, and only it (eris-fleet
			// never sent the key).
			if ok, err := services.StoreDelete(ctx, b, "guild/1"); !ok || err != nil {
				t.Errorf("delete guild/1 = %v, %v; want true", ok, err)
			}
			if ok, err := services.StoreDelete(ctx, b, "guild/1"); ok || err != nil {
				t.Errorf("delete guild/1 again = %v, %v; want false", ok, err)
			}
			if ok, err := services.StoreHas(ctx, b, "guild/1"); ok || err != nil {
				t.Errorf("has guild/1 = %v, %v; want false", ok, err)
			}
			if ok, err := services.StoreHas(ctx, b, "guild/2"); !ok || err != nil {
				t.Errorf("has guild/2 = %v, %v; want true", ok, err)
			}
			if keys, err := services.StoreKeys(ctx, b); err != nil || !slices.Equal(keys, []string{"count", "guild/2"}) {
				t.Errorf("keys after delete = %v, %v", keys, err)
			}

			if n, err := services.StoreClear(ctx, b); n != 2 || err != nil {
				t.Errorf("clear = %d, %v; want 2", n, err)
			}
			if keys, err := services.StoreKeys(ctx, b); err != nil || len(keys) != 0 {
				t.Errorf("keys after clear = %v, %v", keys, err)
			}
			if err := services.StoreSet(ctx, b, "bad", func() {}); err == nil {
				t.Error("set of a func succeeded")
			}
		})
	}
}

// Eight clusters use the store at once; the final state is what each one
// left.
func TestStoreConcurrentClusters(t *testing.T) {
	t.Parallel()
	b, _ := newStore(t, bus.Options{})
	ctx := testContext(t)
	const clusters, keys = 8, 40
	errs := make(chan error, clusters)
	var wg sync.WaitGroup
	for c := range clusters {
		wg.Go(func() {
			for k := range keys {
				key := fmt.Sprintf("cluster/%d/%02d", c, k)
				if err := services.StoreSet(ctx, b, key, c*1000+k); err != nil {
					errs <- err
					return
				}
				if err := services.StoreSet(ctx, b, "last", c); err != nil {
					errs <- err
					return
				}
				if k%2 == 1 {
					if ok, err := services.StoreDelete(ctx, b, key); !ok || err != nil {
						errs <- fmt.Errorf("delete %s = %v, %v", key, ok, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	var want []string
	for c := range clusters {
		for k := 0; k < keys; k += 2 {
			want = append(want, fmt.Sprintf("cluster/%d/%02d", c, k))
		}
	}
	want = append(want, "last")
	slices.Sort(want)
	got, err := services.StoreKeys(ctx, b)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("keys = %v (%v), want %v", got, err, want)
	}
	for c := range clusters {
		key := fmt.Sprintf("cluster/%d/%02d", c, 2)
		if v, ok, err := services.StoreGet[int](ctx, b, key); v != c*1000+2 || !ok || err != nil {
			t.Errorf("get %s = %d, %v, %v", key, v, ok, err)
		}
	}
	if last, ok, err := services.StoreGet[int](ctx, b, "last"); !ok || err != nil || last < 0 || last >= clusters {
		t.Errorf("last = %d, %v, %v", last, ok, err)
	}
}

func TestStoreKeepsDataAcrossRestarts(t *testing.T) {
	t.Parallel()
	b, m := newStore(t, bus.Options{})
	ctx := testContext(t)
	if err := services.StoreSet(ctx, b, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := m.SoftRestart(ctx, services.StoreName); err != nil {
		t.Fatal(err)
	}
	if err := m.Restart(ctx, services.StoreName); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := services.StoreGet[string](ctx, b, "k"); v != "v" || !ok || err != nil {
		t.Errorf("get k = %q, %v, %v; want v", v, ok, err)
	}
}

func TestStoreNotRunning(t *testing.T) {
	t.Parallel()
	b := newBus(t, bus.Options{})
	ctx := testContext(t)
	if err := services.StoreSet(ctx, b, "k", 1); !errors.Is(err, bus.ErrUnknownAddress) {
		t.Errorf("set without a store = %v, want ErrUnknownAddress", err)
	}
	if _, _, err := services.StoreGet[int](context.Background(), b, "k"); !errors.Is(err, bus.ErrUnknownAddress) {
		t.Errorf("get without a store = %v, want ErrUnknownAddress", err)
	}
}

// Increments from many goroutines at once lose no update; a value that is
// not an integer is refused and left as it was.
func TestStoreIncrement(t *testing.T) {
	t.Parallel()
	b, _ := newStore(t, bus.Options{Strict: true})
	ctx := testContext(t)
	const writers, each = 8, 50
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for range each {
				if _, err := services.StoreIncrement(ctx, b, "count", 1); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n, _, err := services.StoreGet[int64](ctx, b, "count"); err != nil || n != writers*each {
		t.Fatalf("count = %d, %v; want %d", n, err, writers*each)
	}
	if n, err := services.StoreIncrement(ctx, b, "count", -10); err != nil || n != writers*each-10 {
		t.Fatalf("increment by -10 = %d, %v; want %d", n, err, writers*each-10)
	}
	if err := services.StoreSet(ctx, b, "name", "fleet"); err != nil {
		t.Fatal(err)
	}
	if _, err := services.StoreIncrement(ctx, b, "name", 1); err == nil || !strings.Contains(err.Error(), "not an integer") {
		t.Fatalf("increment of a string = %v, want an error saying it is not an integer", err)
	}
	if v, _, _ := services.StoreGet[string](ctx, b, "name"); v != "fleet" {
		t.Fatalf("name = %q after a refused increment, want it unchanged", v)
	}
}
