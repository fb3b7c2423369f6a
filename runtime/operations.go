package runtime

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// OperationState is where a long operation is.
type OperationState string

// The operation states.
const (
	OperationRunning OperationState = "running"
	OperationDone    OperationState = "done"
	OperationFailed  OperationState = "failed"
)

// Operation kinds.
const (
	OperationReshard        = "reshard"
	OperationSoftRestartAll = "soft_restart_all"
	OperationRestartAll     = "restart_all"
)

const (
	maxFinishedOperations   = 64              // finished operations kept for polling
	maxOperationWaitOverBus = 5 * time.Second // the longest an operation query over the bus waits
	operationBusWait        = time.Second     // how long Client.WaitOperation asks to wait per query
)

// Operation is a long operation (a reshard, a rolling restart) started
// for a caller that does not wait for it: with a Start method of Fleet,
// over the bus or the admin API. It runs on the runtime's own context, so
// it outlives the request that started it; it ends when it is done,
// fails, or the fleet stops. Poll it with Fleet.Operation, or wait for it
// with Fleet.WaitOperation.
type Operation struct {
	ID    string         `json:"id"`
	Kind  string         `json:"kind"`
	State OperationState `json:"state"`
	// Done of Of steps: new shards ready with their guilds (reshard),
	// clusters restarted (rolling restart). Of is 0 until known.
	Done int `json:"done"`
	Of   int `json:"of"`
	// Result says what a finished operation did when "done" does not say
	// it all: a reshard to the current shard count changed nothing.
	Result  string    `json:"result,omitempty"`
	Err     string    `json:"error,omitempty"` // why it failed
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended,omitzero"`
}

// operations tracks the long operations. Guarded by Runtime.mu.
type operations struct {
	wg     sync.WaitGroup // counts the operations' goroutines
	closed bool           // set by joinOperations: no new operation starts
	byID   map[string]*opRecord
	order  []string // IDs, oldest first
	next   int
}

type opRecord struct {
	op   Operation
	err  error
	done chan struct{} // closed when the operation ended
}

// StartReshard starts Reshard as an operation on the runtime's own
// context and returns it at once. It returns ErrNotRunning before Run and
// ErrReshardInProgress while a reshard runs. A reshard to the current
// shard and cluster counts is returned done at once, its Result saying
// that nothing changed.
func (r *Runtime) StartReshard(ctx context.Context, opts ReshardOptions) (Operation, error) {
	if err := opts.check(); err != nil {
		return Operation{}, err
	}
	if r.cfg.Member != nil {
		return Operation{}, ErrMemberReshard
	}
	if r.reshardBusy.Load() || !r.reshardOp.CompareAndSwap(false, true) {
		return Operation{}, ErrReshardInProgress
	}
	// What cannot work, or changes nothing, is answered now; the
	// operation then runs the counts resolved here.
	planned := false
	if shards, clusters, ok := r.shape(); ok {
		total, n, note, err := r.planReshard(ctx, opts, shards, clusters)
		if err != nil || note != "" {
			r.reshardOp.Store(false)
			if err != nil {
				return Operation{}, err
			}
			return r.finishedOperation(ctx, OperationReshard, note)
		}
		opts, planned = ReshardOptions{Shards: total, Clusters: n}, true
	}
	op, err := r.startOperation(ctx, OperationReshard, func(ctx context.Context, progress func(done, of int)) (string, error) {
		defer r.reshardOp.Store(false)
		unsub := r.Subscribe(func(e Event) {
			switch e := e.(type) {
			case ReshardStarted:
				progress(0, e.To)
			case ReshardProgress:
				progress(e.Loaded, e.Of)
			}
		})
		defer unsub()
		return r.reshard(ctx, opts, planned)
	})
	if err != nil {
		r.reshardOp.Store(false)
	}
	return op, err
}

// StartSoftRestartAll starts SoftRestartAll as an operation on the
// runtime's own context and returns it at once.
func (r *Runtime) StartSoftRestartAll(ctx context.Context) (Operation, error) {
	return r.startOperation(ctx, OperationSoftRestartAll, func(ctx context.Context, progress func(done, of int)) (string, error) {
		return "", r.restartAll(ctx, false, progress)
	})
}

// StartRestartAll starts RestartAll as an operation on the runtime's own
// context and returns it at once.
func (r *Runtime) StartRestartAll(ctx context.Context) (Operation, error) {
	return r.startOperation(ctx, OperationRestartAll, func(ctx context.Context, progress func(done, of int)) (string, error) {
		return "", r.restartAll(ctx, true, progress)
	})
}

// startOperation records an operation and runs it on the fleet's life.
func (r *Runtime) startOperation(ctx context.Context, kind string, run func(ctx context.Context, progress func(done, of int)) (string, error)) (Operation, error) {
	rec, err := r.newOperation(ctx, kind)
	if err != nil {
		return Operation{}, err
	}
	life := r.lifeContext()
	r.mu.Lock()
	op := rec.op
	r.mu.Unlock()
	go func() {
		defer r.ops.wg.Done()
		result, err := run(life, func(done, of int) {
			r.mu.Lock()
			rec.op.Done, rec.op.Of = done, of
			r.mu.Unlock()
		})
		if err != nil && life.Err() != nil && !errors.Is(err, ErrNotRunning) {
			err = fmt.Errorf("%w: the fleet stopped first (%v)", ErrNotRunning, err)
		}
		r.endOperation(rec, result, err)
	}()
	return op, nil
}

// finishedOperation records an operation that had nothing to do.
func (r *Runtime) finishedOperation(ctx context.Context, kind, result string) (Operation, error) {
	rec, err := r.newOperation(ctx, kind)
	if err != nil {
		return Operation{}, err
	}
	r.endOperation(rec, result, nil)
	r.ops.wg.Done()
	r.mu.Lock()
	defer r.mu.Unlock()
	return rec.op, nil
}

// newOperation records a running operation, counted in r.ops.wg.
func (r *Runtime) newOperation(ctx context.Context, kind string) (*opRecord, error) {
	if err := r.checkRunning(ctx); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	o := &r.ops
	if o.closed { // joinOperations is waiting: start nothing
		return nil, ErrNotRunning
	}
	if o.byID == nil {
		o.byID = map[string]*opRecord{}
	}
	o.next++
	rec := &opRecord{done: make(chan struct{}), op: Operation{ID: kind + "-" + strconv.Itoa(o.next), Kind: kind,
		State: OperationRunning, Started: time.Now()}}
	o.byID[rec.op.ID] = rec
	o.order = append(o.order, rec.op.ID)
	r.forgetOperationsLocked()
	o.wg.Add(1)
	return rec, nil
}

// endOperation records how an operation ended.
func (r *Runtime) endOperation(rec *opRecord, result string, err error) {
	r.mu.Lock()
	rec.op.Ended, rec.op.Result, rec.err = time.Now(), result, err
	rec.op.State = OperationDone
	if err != nil {
		rec.op.State, rec.op.Err = OperationFailed, wireError(err).Error() // names its sentinels, for a Client
	}
	r.mu.Unlock()
	close(rec.done)
}

// forgetOperationsLocked drops the oldest finished operations beyond
// maxFinishedOperations. The caller holds r.mu.
func (r *Runtime) forgetOperationsLocked() {
	o := &r.ops
	finished := 0
	for _, id := range o.order {
		if o.byID[id].op.State != OperationRunning {
			finished++
		}
	}
	kept := o.order[:0]
	for _, id := range o.order {
		if finished > maxFinishedOperations && o.byID[id].op.State != OperationRunning {
			delete(o.byID, id)
			finished--
			continue
		}
		kept = append(kept, id)
	}
	o.order = kept
}

// ErrUnknownOperation is returned for an operation ID the runtime does not
// know (never started, or long finished).
var ErrUnknownOperation = errors.New("runtime: unknown operation")

// Operation returns an operation by ID, or an error wrapping
// ErrUnknownOperation.
func (r *Runtime) Operation(ctx context.Context, id string) (Operation, error) {
	if err := ctx.Err(); err != nil {
		return Operation{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	rec, ok := r.ops.byID[id]
	if !ok {
		return Operation{}, fmt.Errorf("%w %q", ErrUnknownOperation, id)
	}
	return rec.op, nil
}

// WaitOperation waits until an operation has ended, or ctx ends, and
// returns it with its error (nil once done).
func (r *Runtime) WaitOperation(ctx context.Context, id string) (Operation, error) {
	r.mu.Lock()
	rec, ok := r.ops.byID[id]
	r.mu.Unlock()
	if !ok {
		return Operation{}, fmt.Errorf("%w %q", ErrUnknownOperation, id)
	}
	select {
	case <-rec.done:
	case <-ctx.Done():
		r.mu.Lock()
		defer r.mu.Unlock()
		return rec.op, ctx.Err()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return rec.op, rec.err
}

// joinOperations waits for the operations' goroutines, or ctx: they end
// with the runtime's context, which the stop has cancelled.
func (r *Runtime) joinOperations(ctx context.Context) {
	r.mu.Lock() // every operation started before this has been counted
	r.ops.closed = true
	r.mu.Unlock()
	done := make(chan struct{})
	go func() {
		r.ops.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}
