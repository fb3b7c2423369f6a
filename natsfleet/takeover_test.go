package natsfleet_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/natsfleet"
)

// TestTakeOverLosesNothing: a process takes an address over from another
// while a third calls it without pause: every call is answered once, by
// the old endpoint or the new one, and the two never run at once; over
// NATS, and with the calls on direct links (TransportConfig.Direct).
func TestTakeOverLosesNothing(t *testing.T) {
	t.Parallel()
	t.Run("NATS", func(t *testing.T) { t.Parallel(); takeOverLosesNothing(t, false) })
	t.Run("Direct", func(t *testing.T) { t.Parallel(); takeOverLosesNothing(t, true) })
}

func takeOverLosesNothing(t *testing.T, direct bool) {
	prefix := newPrefix()
	ctx := testCtx(t)
	addr := bus.Service("store")

	var oldEP *bus.Endpoint
	var handedOver sync.WaitGroup
	handedOver.Add(1)
	oldTr, err := natsfleet.NewTransport(connect(t), natsfleet.TransportConfig{Prefix: prefix, Logger: quiet, Direct: direct,
		OnHandover: func(a bus.Address) {
			defer handedOver.Done()
			if err := oldEP.Close(ctx); err != nil {
				t.Errorf("closing the old endpoint: %v", err)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(oldTr.Close)
	newTr := newTransportWith(t, natsfleet.TransportConfig{Prefix: prefix, Direct: direct})
	callTr := newTransportWith(t, natsfleet.TransportConfig{Prefix: prefix, Direct: direct})
	oldBus := newBus(t, bus.Options{}, oldTr)
	newBus_ := newBus(t, bus.Options{}, newTr)
	caller := newBus(t, bus.Options{}, callTr)

	var running, maxRunning atomic.Int32
	track := func(version string) func(context.Context, int) (string, error) {
		return func(_ context.Context, n int) (string, error) {
			r := running.Add(1)
			for {
				m := maxRunning.Load()
				if r <= m || maxRunning.CompareAndSwap(m, r) {
					break
				}
			}
			defer running.Add(-1)
			return fmt.Sprintf("%s:%d", version, n), nil
		}
	}
	oldEP, err = oldBus.Register(addr)
	if err != nil {
		t.Fatal(err)
	}
	bus.Handle(oldEP, "get", track("v1"))

	// Without TakeOver the address is in use.
	if _, err := newBus_.Register(addr); !errors.Is(err, bus.ErrAddressInUse) {
		t.Fatalf("Register of a served address: %v, want ErrAddressInUse", err)
	}
	if direct {
		if err := natsfleet.WaitDirect(ctx, callTr, addr); err != nil {
			t.Fatal(err)
		}
	}

	var (
		wg       sync.WaitGroup
		stop     = make(chan struct{})
		mu       sync.Mutex // guards counts, errs
		counts   = map[string]int{}
		errs     []error
		sent     atomic.Int64
		v1Seen   = make(chan struct{})
		v2Seen   = make(chan struct{})
		v1, v2   sync.Once
		deadline = ctx
	)
	for c := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				n := c*1_000_000 + i
				sent.Add(1)
				got, err := bus.Request[int, string](deadline, caller, addr, "get", n)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					version, num, _ := strings.Cut(got, ":")
					if num != fmt.Sprint(n) {
						errs = append(errs, fmt.Errorf("request %d answered %q", n, got))
					}
					counts[version]++
					if counts["v1"] >= 50 {
						v1.Do(func() { close(v1Seen) })
					}
					if counts["v2"] >= 50 {
						v2.Do(func() { close(v2Seen) })
					}
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		})
	}
	wait := func(ch chan struct{}, what string) {
		select {
		case <-ch:
		case <-deadline.Done():
			close(stop)
			wg.Wait()
			t.Fatalf("waiting for %s: %v", what, errs)
		}
	}
	wait(v1Seen, "answers from the old process")
	start := newTr.TakeOver(addr)
	newEP, err := newBus_.Register(addr)
	if err != nil {
		t.Fatal(err)
	}
	bus.Handle(newEP, "get", track("v2"))
	start()
	wait(v2Seen, "answers from the new process")
	close(stop)
	wg.Wait()
	handedOver.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d calls failed, first: %v", len(errs), errs[0])
	}
	if total := int64(counts["v1"] + counts["v2"]); total != sent.Load() {
		t.Errorf("%d calls sent, %d answered", sent.Load(), total)
	}
	if direct && callTr.Stats().DirectCalls == 0 {
		t.Error("no call went over the direct link")
	}
	if m := maxRunning.Load(); m != 1 {
		t.Errorf("up to %d handlers ran at once across the two processes, want 1", m)
	}
}
