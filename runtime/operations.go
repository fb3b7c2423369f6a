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
	OperationHardRestartAll = "restart_all"
)

const (
	maxFinishedOperations   = 64              // finished operations kept for polling
	maxOperationWaitOverBus = 5 * time.Second // the longest a CmdOperation query waits
	operationBusWait        = time.Second     // how long the bus helpers ask to wait per query
)

// Operation is a long operation (a reshard, a rolling restart) started
// for a caller that does not wait for it: over the bus or the admin API.
// It runs on the runtime's own context, so it outlives the request that
// started it; it ends when it is done, fails, or the fleet stops. Poll it
// with Runtime.Operation (or the bus command CmdOperation), or wait for it
// with Runtime.WaitOperation.
type Operation struct {
	ID    string         `json:"id"`
	Kind  string         `json:"kind"`
	State OperationState `json:"state"`
	// Done of Of steps: new shards ready with their guilds (reshard),
	// clusters restarted (rolling restart). Of is 0 until known.
	Done    int       `json:"done"`
	Of      int       `json:"of"`
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
// ErrReshardInProgress while a reshard runs.
func (r *Runtime) StartReshard(opts ReshardOptions) (Operation, error) {
	if r.reshardBusy.Load() || !r.reshardOp.CompareAndSwap(false, true) {
		return Operation{}, ErrReshardInProgress
	}
	op, err := r.startOperation(OperationReshard, func(ctx context.Context, progress func(done, of int)) error {
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
		return r.Reshard(ctx, opts)
	})
	if err != nil {
		r.reshardOp.Store(false)
	}
	return op, err
}

// StartRestartAll starts a rolling restart of every cluster (soft, or
// hard with hard) as an operation on the runtime's own context and
// returns it at once.
func (r *Runtime) StartRestartAll(hard bool) (Operation, error) {
	kind := OperationSoftRestartAll
	if hard {
		kind = OperationHardRestartAll
	}
	return r.startOperation(kind, func(ctx context.Context, progress func(done, of int)) error {
		return r.restartAll(ctx, hard, progress)
	})
}

func (r *Runtime) startOperation(kind string, run func(ctx context.Context, progress func(done, of int)) error) (Operation, error) {
	if err := r.checkRunning(context.Background()); err != nil {
		return Operation{}, err
	}
	life := r.lifeContext()
	r.mu.Lock()
	o := &r.ops
	if o.closed { // joinOperations is waiting: start nothing
		r.mu.Unlock()
		return Operation{}, ErrNotRunning
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
	op := rec.op
	r.mu.Unlock()
	go func() {
		defer o.wg.Done()
		err := run(life, func(done, of int) {
			r.mu.Lock()
			rec.op.Done, rec.op.Of = done, of
			r.mu.Unlock()
		})
		if err != nil && life.Err() != nil && !errors.Is(err, ErrNotRunning) {
			err = fmt.Errorf("%w: the fleet stopped first (%v)", ErrNotRunning, err)
		}
		r.mu.Lock()
		rec.op.Ended, rec.err = time.Now(), err
		rec.op.State = OperationDone
		if err != nil {
			rec.op.State, rec.op.Err = OperationFailed, err.Error()
		}
		r.mu.Unlock()
		close(rec.done)
	}()
	return op, nil
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

// Operation returns an operation by ID.
func (r *Runtime) Operation(id string) (Operation, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec, ok := r.ops.byID[id]
	if !ok {
		return Operation{}, false
	}
	return rec.op, true
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
		op, _ := r.Operation(id)
		return op, ctx.Err()
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
