package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/gofleet/fleet/internal/multihost"
)

func init() {
	register("failover", runFailover)
	childKinds["failover-host"] = func([]string) error { return multihost.RunHostFromEnv() }
}

type failoverResult struct {
	Scenario           string `json:"scenario"`
	Hosts              int    `json:"hosts"`
	Shards             int    `json:"shards"`
	Clusters           int    `json:"clusters"`
	Rate               int    `json:"events_per_sec"`
	RecoveredMS        int64  `json:"recovered_ms"`
	Identifies         int    `json:"identifies"`
	LostEvents         int64  `json:"lost_events"`
	DuplicateEvents    int64  `json:"duplicate_events"`
	IdentifyViolations int    `json:"identify_violations"`
	OwnedTwice         int    `json:"owned_twice"`
	DrainLost          int64  `json:"drain_lost"`
	DrainIdentifies    int    `json:"drain_identifies"`
}

// runFailover runs three host processes on a three-node embedded NATS
// cluster under 2,000 MESSAGE_CREATE/s, kills one with SIGKILL, then
// drains another. recovered_ms runs from the kill until every shard the
// dead host owned has delivered an event on another host; identifies,
// lost and duplicate events count from the fleet's readiness to the end;
// the drain's lost events and identifies count from the drain's request
// until its clusters deliver elsewhere.
func runFailover() (any, error) {
	const rate = 2000
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cfg := multihost.Config{Exe: exe, Args: []string{"-child", "failover-host"}, LeaseTTL: 2 * time.Second,
		Checkpoint: 250 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	step := func(d time.Duration) (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, d) }

	sctx, scancel := step(60 * time.Second)
	f, err := multihost.Start(sctx, cfg)
	scancel()
	if err != nil {
		return nil, fmt.Errorf("start the fleet: %w", err)
	}
	defer f.Close()
	cfg = f.Cfg
	out := failoverResult{Scenario: "failover", Hosts: cfg.Hosts, Shards: cfg.Shards, Clusters: cfg.Clusters, Rate: rate}
	startIdentifies := f.Discord.Stats().Identifies

	send := multihost.NewSender(f.Discord, rate)
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var sendErr error
	wg.Go(func() { sendErr = send.Run(loadCtx) })
	wg.Go(func() { // the simulator's view of two live sessions for one shard
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-loadCtx.Done():
				return
			case <-t.C:
				f.Tally.SampleSimulator(f.Discord)
			}
		}
	})
	finish := func(err error) (any, error) {
		stopLoad()
		wg.Wait()
		return nil, errors.Join(err, sendErr)
	}
	wait := func(d time.Duration, what string, fn func(context.Context) error) error {
		wctx, wcancel := step(d)
		defer wcancel()
		if err := fn(wctx); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}
	steady := func(d time.Duration) error { // let events flow for d, checking they arrive
		from := send.Mark()
		time.Sleep(d)
		return wait(10*time.Second, "events reaching the hosts", func(c context.Context) error {
			return f.Tally.Await(c, send.Sent(from, -1))
		})
	}
	if err := steady(2 * time.Second); err != nil {
		return finish(err)
	}

	// SIGKILL host 0.
	dead := f.ShardsOf(0)
	if len(dead) == 0 {
		return finish(fmt.Errorf("host 0 owns no cluster (owners %v)", f.Tally.Owners()))
	}
	killed := time.Now()
	f.Kill(0)
	var recovered time.Time
	if err := wait(cfg.LeaseTTL+30*time.Second, fmt.Sprintf("shards %v of the killed host delivering elsewhere", dead), func(c context.Context) error {
		var err error
		recovered, err = f.Tally.AwaitDelivered(c, dead, f.IDs[0], killed)
		return err
	}); err != nil {
		return finish(err)
	}
	out.RecoveredMS = recovered.Sub(killed).Milliseconds()
	if err := wait(30*time.Second, "the fleet settled after the kill", f.AwaitSettled); err != nil {
		return finish(err)
	}
	if err := steady(time.Second); err != nil {
		return finish(err)
	}

	// Drain host 1.
	drained := f.ShardsOf(1)
	drainFrom := send.Mark()
	drainIdentifies := f.Discord.Stats().Identifies
	drainStart := time.Now()
	if err := wait(30*time.Second, "host 1's drain", func(c context.Context) error { return f.Drain(c, 1) }); err != nil {
		return finish(err)
	}
	if err := wait(30*time.Second, fmt.Sprintf("shards %v of the drained host delivering elsewhere", drained), func(c context.Context) error {
		_, err := f.Tally.AwaitDelivered(c, drained, f.IDs[1], drainStart)
		return err
	}); err != nil {
		return finish(err)
	}
	if err := steady(time.Second); err != nil {
		return finish(err)
	}
	drainTo := send.Mark()
	out.DrainIdentifies = f.Discord.Stats().Identifies - drainIdentifies

	stopLoad()
	wg.Wait()
	if sendErr != nil {
		return nil, sendErr
	}
	all := send.Sent(0, -1)
	_ = wait(10*time.Second, "every event reported", func(c context.Context) error { return f.Tally.Await(c, all) })
	out.LostEvents, out.DuplicateEvents = f.Tally.Count(all)
	out.DrainLost, _ = f.Tally.Count(send.Sent(drainFrom, drainTo))
	st := f.Discord.Stats()
	out.Identifies = st.Identifies - startIdentifies
	out.IdentifyViolations = st.Violations["identify_concurrency"] + st.Violations["session_start_limit"]
	out.OwnedTwice = f.Tally.OwnedTwice()
	if out.OwnedTwice > 0 {
		fmt.Fprintln(os.Stderr, "bench failover: shards owned twice:", f.Tally.OwnedTwiceWhy())
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return out, nil
}
