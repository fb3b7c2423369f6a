package runtime

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/gofleet/fleet/internal/restart"
)

// ErrFatal, returned (or wrapped) by a Bot's Setup, stops the whole fleet:
// Run returns the error. Any other Setup error, and a panic, counts
// against the cluster's MaxRestarts like a cluster that never becomes
// ready.
var ErrFatal = errors.New("runtime: fatal error in user code")

// PanicError is the error of a Bot factory, Setup or Shutdown hook that
// panicked: the panic value and the stack where it was recovered.
type PanicError struct {
	Value any
	Stack []byte
}

// Error returns "runtime: panic: <value>".
func (e *PanicError) Error() string { return fmt.Sprintf("runtime: panic: %v", e.Value) }

// stableAfter is how long a cluster must have been ready for its restart
// back-off to start again from Config.RestartBackoff.
const stableAfter = time.Minute

// restartJitter is the fraction of a back-off added at random, so that
// clusters failing together do not restart together.
const restartJitter = 0.25

// budget is a new restart budget for one cluster.
func (r *Runtime) budget() *restart.Budget {
	return &restart.Budget{Max: r.cfg.MaxRestarts, Window: r.cfg.RestartWindow, Base: r.cfg.RestartBackoff,
		Cap: time.Minute, Jitter: restartJitter, StableAfter: stableAfter}
}

// userCalls tracks the goroutines running the user's code (the Bot
// factory, Setup, Shutdown hooks). Each call is waited for only until its
// ctx ends; one that outlives it finishes on its own goroutine, counted
// here, and is named in Shutdown's report if it is still running then.
type userCalls struct {
	wg      sync.WaitGroup
	mu      sync.Mutex // guards running
	running map[*userCall]struct{}
}

type userCall struct{ what string }

// callUser runs fn, recovering a panic into a *PanicError, and waits for
// it until ctx ends. If ctx ends first it returns an error naming what did
// not return, and late (if not nil) later gets fn's result on fn's
// goroutine.
func (r *Runtime) callUser(ctx context.Context, what string, fn func() error, late func(error)) error {
	u := &r.user
	call := &userCall{what: what}
	u.mu.Lock()
	if u.running == nil {
		u.running = map[*userCall]struct{}{}
	}
	u.running[call] = struct{}{}
	u.mu.Unlock()
	res := make(chan error)
	abandon := make(chan struct{})
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		defer func() {
			u.mu.Lock()
			delete(u.running, call)
			u.mu.Unlock()
		}()
		err := func() (err error) {
			defer func() {
				if p := recover(); p != nil {
					err = &PanicError{Value: p, Stack: debug.Stack()}
				}
			}()
			return fn()
		}()
		select {
		case res <- err:
		case <-abandon:
			if late != nil {
				late(err)
			}
		}
	}()
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		close(abandon)
		return fmt.Errorf("%s did not return: %w", what, context.Cause(ctx))
	}
}

// stuckUserCalls names the user calls still running, sorted.
func (r *Runtime) stuckUserCalls() []string {
	r.user.mu.Lock()
	defer r.user.mu.Unlock()
	out := make([]string, 0, len(r.user.running))
	for c := range r.user.running {
		out = append(out, c.what)
	}
	slices.Sort(out)
	return out
}

// waitUserCalls waits until no user call runs, or ctx ends.
func (r *Runtime) waitUserCalls(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		r.user.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		// The waiter ends with the last user call; it is counted in no
		// group, as the calls it waits for have outlived their contexts.
	}
}

// defaultClusterTimeout is the bound on a cluster becoming ready when
// Config.ClusterTimeout is 0: the identify windows ahead of the cluster's
// last shard in the identify queue, plus its own, times IdentifyInterval,
// plus readyGrace for Setup, the handshake and the guilds. Every shard of
// the runtime is assumed to queue at once (a start, or a reshard), so a
// healthy cluster waiting its turn is never cut short.
func (r *Runtime) defaultClusterTimeout(c *cluster, env *fleetEnv) time.Duration {
	mc := 1
	if q, ok := env.queue.(interface{ MaxConcurrency() int }); ok {
		mc = max(q.MaxConcurrency(), 1)
	}
	first := 0
	if r.cfg.TotalShards > 0 {
		first = r.cfg.FirstShardID
	}
	// The shards first..s-1 of a shard's bucket identify before it: one
	// window each. The cluster's last shard waits longest.
	ahead := 0
	if n := len(c.shards); n > 0 && c.shards[n-1] > first {
		ahead = (c.shards[n-1] - first) / mc
	}
	return time.Duration(ahead+1)*r.cfg.IdentifyInterval + readyGrace
}

// readyGrace is the part of the default ClusterTimeout that is not the
// identify queue: Setup, the handshake and the READY's guilds.
const readyGrace = 30 * time.Second

// clusterTimeout is the bound on a cluster becoming ready, Setup included.
func (r *Runtime) clusterTimeout(c *cluster, env *fleetEnv) time.Duration {
	if r.cfg.ClusterTimeout > 0 {
		return r.cfg.ClusterTimeout
	}
	return r.defaultClusterTimeout(c, env)
}
