package main

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/gofleet/fleet/bus"
)

// busFigures are the measurements of one bus configuration.
type busFigures struct {
	SeqP50us      float64 `json:"seq_p50_us"`     // one requester, median round trip
	SeqP99us      float64 `json:"seq_p99_us"`     // one requester, 99th percentile
	ConcurrentRPS float64 `json:"concurrent_rps"` // round trips per second with busRequesters requesters
	AllocsPerReq  float64 `json:"allocs_per_req"` // heap allocations per sequential request
}

// busResult is what the "bus" scenario prints.
type busResult struct {
	Scenario string `json:"scenario"`
	busFigures
	Strict     busFigures `json:"strict"`
	Payload10k busFigures `json:"payload_10k"`
	// AllocsNoDeadline is allocs_per_req when the caller's context has no
	// deadline and the bus's DefaultTimeout applies.
	AllocsNoDeadline float64 `json:"allocs_per_req_no_deadline"`
	SeqRequests      int     `json:"seq_requests"`
	Requesters       int     `json:"concurrent_requesters"`
	GOMAXPROCS       int     `json:"gomaxprocs"`
}

const (
	busSeqRequests    = 200_000
	busRequesters     = 64
	busPerRequester   = 10_000
	busWarmupRequests = 20_000
)

// runBus measures request/reply between a cluster and a service on the
// in-memory bus: latency of one requester, throughput of 64, allocations.
func runBus() (any, error) {
	res := busResult{Scenario: "bus", SeqRequests: busSeqRequests, Requesters: busRequesters, GOMAXPROCS: runtime.GOMAXPROCS(0)}
	var err error
	if res.busFigures, err = measureBus(false, 100, true); err != nil {
		return nil, err
	}
	if res.Strict, err = measureBus(true, 100, true); err != nil {
		return nil, fmt.Errorf("strict: %w", err)
	}
	if res.Payload10k, err = measureBus(false, 10_000, true); err != nil {
		return nil, fmt.Errorf("payload 10k: %w", err)
	}
	noDeadline, err := measureBus(false, 100, false)
	if err != nil {
		return nil, fmt.Errorf("no deadline: %w", err)
	}
	res.AllocsNoDeadline = noDeadline.AllocsPerReq
	return res, nil
}

// measureBus runs the sequential and the concurrent measurement on a new
// bus. The sequential requests are made by a handler of cluster/0, so a
// cluster's worker calls the service as it would in a fleet.
func measureBus(strict bool, size int, deadline bool) (busFigures, error) {
	var f busFigures
	b := bus.New(bus.Options{Strict: strict, Logger: slog.New(slog.DiscardHandler)})
	defer b.Close()
	svcAddr := bus.Service("bench")
	svc, err := b.Register(svcAddr)
	if err != nil {
		return f, err
	}
	bus.Handle(svc, "echo", func(ctx context.Context, p []byte) ([]byte, error) { return p, nil })

	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i)
	}
	callCtx := context.Background()
	if deadline {
		var cancel context.CancelFunc
		callCtx, cancel = context.WithTimeout(callCtx, time.Hour)
		defer cancel()
	}

	cluster, err := b.Register(bus.Cluster(0))
	if err != nil {
		return f, err
	}
	// The handler leaves its measurements here rather than in its reply,
	// which strict mode would encode.
	var (
		lat     []time.Duration
		mallocs uint64
	)
	bus.Handle(cluster, "run", func(ctx context.Context, n int) (struct{}, error) {
		for range busWarmupRequests {
			if _, err := bus.Request[[]byte, []byte](callCtx, b, svcAddr, "echo", payload); err != nil {
				return struct{}{}, err
			}
		}
		lat = make([]time.Duration, n)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i := range lat {
			start := time.Now()
			if _, err := bus.Request[[]byte, []byte](callCtx, b, svcAddr, "echo", payload); err != nil {
				return struct{}{}, err
			}
			lat[i] = time.Since(start)
		}
		runtime.ReadMemStats(&after)
		mallocs = after.Mallocs - before.Mallocs
		return struct{}{}, nil
	})
	runCtx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := bus.Request[int, struct{}](runCtx, b, bus.Cluster(0), "run", busSeqRequests); err != nil {
		return f, err
	}
	slices.Sort(lat)
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	f.SeqP50us = us(lat[len(lat)/2])
	f.SeqP99us = us(lat[len(lat)*99/100])
	f.AllocsPerReq = float64(mallocs) / float64(len(lat))

	// Concurrent: busRequesters goroutines, each with its own requests.
	var wg sync.WaitGroup
	errs := make(chan error, busRequesters)
	startGate := make(chan struct{})
	for range busRequesters {
		wg.Go(func() {
			<-startGate
			for range busPerRequester {
				if _, err := bus.Request[[]byte, []byte](callCtx, b, svcAddr, "echo", payload); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	start := time.Now()
	close(startGate)
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return f, err
	}
	f.ConcurrentRPS = float64(busRequesters*busPerRequester) / elapsed.Seconds()
	return f, nil
}
