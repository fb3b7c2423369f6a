package natsfleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gofleet/fleet/runtime"
)

// In process mode the parent serves the fleet's identify queue: one
// runtime.LocalIdentifyQueue, which the warm start's groups use directly
// and the children through request/reply on <prefix>.proc.identify. All
// of a child's messages go to that one subject, so that the parent reads
// them in the order the child sent them: an ask, then what ends it.
//
// A child asks for a turn ("wait", with an ID of its own). The parent
// waits for the bucket on the child's behalf, at most the time the ask
// names, and answers: granted, or not yet (the child asks again). A
// grant is held in the parent until the child says it is done with it
// ("done": the READY came, the connection ended, or the child gave up
// waiting, whether or not the grant reached it), until the child's
// process exits, or for the lease at most; then the bucket's next turn
// counts the interval from that moment. A lost or late message therefore
// holds a bucket for the lease at the longest.

// identifySubject is where the children ask the parent for identify turns.
func identifySubject(prefix string) string { return prefix + ".proc.identify" }

// identifyAsk is a child's message to the parent's identify queue.
type identifyAsk struct {
	Op    string        `json:"op"` // "wait", "done" (with ID), "gone" (every ask of Child)
	Child string        `json:"child"`
	ID    uint64        `json:"id,omitempty"`
	Shard int           `json:"shard,omitempty"`
	Wait  time.Duration `json:"wait,omitempty"` // how long the parent may wait before answering
}

// identifyAnswer is the parent's answer to a "wait".
type identifyAnswer struct {
	Granted bool   `json:"granted,omitempty"`
	Err     string `json:"err,omitempty"`
}

// defaultIdentifyLease bounds how long a grant stays held without its
// child's word (IdentifyLease's default).
const defaultIdentifyLease = 10 * time.Second

// maxAskWait bounds how long the parent waits for a turn before it
// answers "not yet", whatever the child asked.
const maxAskWait = time.Minute

// maxIdentifyAsks bounds the asks the parent serves at once: a child's
// shards each hold at most one.
const maxIdentifyAsks = 1 << 14

// identifyServer is the parent's side: the fleet's queue, and the
// children's asks waiting on it or holding a grant.
type identifyServer struct {
	local *runtime.LocalIdentifyQueue
	lease time.Duration
	log   *slog.Logger
	ctx   context.Context // ends at close
	stop  context.CancelFunc
	wg    sync.WaitGroup // one goroutine per ask

	notYet chan<- struct{} // tests: told of each "not yet" answer

	mu   sync.Mutex // guards asks, sub, left, leftOrder
	asks map[askKey]context.CancelFunc
	sub  *nats.Subscription
	// left holds the children last gone, so that an ask of theirs still
	// on its way is refused rather than granted to nobody.
	left      map[string]struct{}
	leftOrder []string
}

// maxLeft bounds the children remembered gone.
const maxLeft = 256

type askKey struct {
	child string
	id    uint64
}

// newIdentifyServer makes the fleet's queue; listen serves it to the
// children.
func newIdentifyServer(maxConcurrency int, interval, lease time.Duration, log *slog.Logger) (*identifyServer, error) {
	local, err := runtime.NewLocalIdentifyQueue(maxConcurrency, interval)
	if err != nil {
		return nil, fmt.Errorf("natsfleet: %w", err)
	}
	if lease == 0 {
		lease = defaultIdentifyLease
	}
	s := &identifyServer{local: local, lease: lease, log: log, asks: map[askKey]context.CancelFunc{}, left: map[string]struct{}{}}
	s.ctx, s.stop = context.WithCancel(context.Background())
	return s, nil
}

// listen serves the children's asks on nc.
func (s *identifyServer) listen(nc *nats.Conn, prefix string) error {
	sub, err := nc.Subscribe(identifySubject(prefix), s.onAsk)
	if err == nil {
		err = nc.Flush() // the server has the subscription before any child asks
	}
	if err != nil {
		if sub != nil {
			_ = sub.Unsubscribe()
		}
		return fmt.Errorf("natsfleet: serve the identify queue: %w", err)
	}
	s.mu.Lock()
	s.sub = sub
	s.mu.Unlock()
	return nil
}

// onAsk reads the children's messages in the order each sent them.
func (s *identifyServer) onAsk(m *nats.Msg) {
	var a identifyAsk
	if err := json.Unmarshal(m.Data, &a); err != nil {
		s.answer(m, identifyAnswer{Err: "unreadable ask: " + err.Error()})
		return
	}
	switch a.Op {
	case "wait":
		s.wait(m, a)
	case "done":
		s.end(askKey{a.Child, a.ID})
	case "gone":
		s.gone(a.Child)
	}
}

// wait starts waiting for a turn on a child's behalf.
func (s *identifyServer) wait(m *nats.Msg, a identifyAsk) {
	if a.Shard < 0 || a.Wait <= 0 {
		s.answer(m, identifyAnswer{Err: fmt.Sprintf("ask for shard %d with wait %v: want a shard >= 0 and a wait > 0", a.Shard, a.Wait)})
		return
	}
	key := askKey{a.Child, a.ID}
	s.mu.Lock()
	if s.ctx.Err() != nil {
		s.mu.Unlock()
		s.answer(m, identifyAnswer{Err: "the fleet is stopping"})
		return
	}
	if _, gone := s.left[a.Child]; gone {
		s.mu.Unlock()
		s.answer(m, identifyAnswer{Err: "ask of a child that has gone"})
		return
	}
	if _, dup := s.asks[key]; dup || len(s.asks) >= maxIdentifyAsks {
		s.mu.Unlock()
		s.answer(m, identifyAnswer{Err: fmt.Sprintf("ask %d refused: a duplicate, or %d asks are waiting", a.ID, maxIdentifyAsks)})
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	s.asks[key] = cancel
	s.wg.Add(1)
	s.mu.Unlock()
	go s.serve(ctx, key, a.Shard, min(a.Wait, maxAskWait), m)
}

// serve waits for shard's bucket until ctx ends or wait has passed, and
// holds a grant until ctx ends (the child's word, its exit, close) or
// the lease runs out.
func (s *identifyServer) serve(ctx context.Context, key askKey, shard int, wait time.Duration, m *nats.Msg) {
	defer s.wg.Done()
	defer s.end(key)
	wctx, cancel := context.WithTimeout(ctx, wait)
	err := s.local.WaitBucket(wctx, shard)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			s.answer(m, identifyAnswer{}) // not yet: the child asks again
			if s.notYet != nil {
				s.notYet <- struct{}{}
			}
		}
		return
	}
	if ctx.Err() != nil || !s.answer(m, identifyAnswer{Granted: true}) {
		// The child gave up as its turn came: nothing went out on it, but
		// the next turn still counts the interval from now.
		s.local.UnlockBucket(shard)
		return
	}
	lease := time.NewTimer(s.lease)
	select {
	case <-ctx.Done():
	case <-lease.C:
		s.log.Warn("identify turn not given back within its lease: released", "child", key.child, "shard", shard, "lease", s.lease)
	}
	lease.Stop()
	s.local.UnlockBucket(shard)
}

func (s *identifyServer) answer(m *nats.Msg, a identifyAnswer) bool {
	data, _ := json.Marshal(a)
	return m.Respond(data) == nil
}

// end ends an ask: its wait, or the grant it holds.
func (s *identifyServer) end(key askKey) {
	s.mu.Lock()
	cancel := s.asks[key]
	delete(s.asks, key)
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// gone ends every ask of a child: it has closed its queue, or exited.
func (s *identifyServer) gone(child string) {
	s.mu.Lock()
	if _, ok := s.left[child]; !ok {
		s.left[child] = struct{}{}
		s.leftOrder = append(s.leftOrder, child)
		if len(s.leftOrder) > maxLeft {
			delete(s.left, s.leftOrder[0])
			s.leftOrder = s.leftOrder[1:]
		}
	}
	var cancels []context.CancelFunc
	for key, cancel := range s.asks {
		if key.child == child {
			cancels = append(cancels, cancel)
			delete(s.asks, key)
		}
	}
	s.mu.Unlock()
	for _, cancel := range cancels {
		cancel()
	}
}

// held is the number of asks waiting or holding a grant.
func (s *identifyServer) held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.asks)
}

// close stops serving, ends every ask and waits for their goroutines.
func (s *identifyServer) close() {
	s.mu.Lock()
	sub := s.sub
	s.stop() // under mu: no ask starts after it
	s.mu.Unlock()
	if sub != nil {
		_ = sub.Unsubscribe()
	}
	s.wg.Wait()
}

// defaultAskWait is how long the parent waits for a turn before it
// answers "not yet"; askTrip is the time allowed on top of it for the
// messages' trip.
const (
	defaultAskWait = 10 * time.Second
	askTrip        = 5 * time.Second
)

var errParentQueueClosed = errors.New("natsfleet: identify queue closed")

// parentIdentifyQueue is a child's runtime.IdentifyQueue: it asks the
// parent's queue for each turn.
type parentIdentifyQueue struct {
	nc      *nats.Conn
	subject string
	child   string
	wait    time.Duration // how long the parent may hold an ask
	ids     atomic.Uint64
	ctx     context.Context // ends at Close
	cancel  context.CancelFunc

	mu   sync.Mutex // guards held
	held map[int]uint64
}

func newParentIdentifyQueue(nc *nats.Conn, prefix, child string) *parentIdentifyQueue {
	q := &parentIdentifyQueue{nc: nc, subject: identifySubject(prefix), child: child, wait: defaultAskWait, held: map[int]uint64{}}
	q.ctx, q.cancel = context.WithCancel(context.Background())
	return q
}

// WaitBucket asks the parent for the shard's turn and waits for it, or
// until ctx ends or the parent cannot be reached.
func (q *parentIdentifyQueue) WaitBucket(ctx context.Context, shardID int) error {
	q.UnlockBucket(shardID) // a second wait without an unlock
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if q.ctx.Err() != nil {
			return errParentQueueClosed
		}
		id := q.ids.Add(1)
		granted, err := q.ask(ctx, shardID, id)
		if err != nil {
			// The parent may have granted it as the ask ended: release it.
			q.send(identifyAsk{Op: "done", Child: q.child, ID: id})
			return err
		}
		if !granted {
			continue
		}
		q.mu.Lock()
		if q.ctx.Err() != nil {
			q.mu.Unlock()
			q.send(identifyAsk{Op: "done", Child: q.child, ID: id})
			return errParentQueueClosed
		}
		q.held[shardID] = id
		q.mu.Unlock()
		return nil
	}
}

// ask sends one ask and waits for its answer.
func (q *parentIdentifyQueue) ask(ctx context.Context, shard int, id uint64) (bool, error) {
	if !q.nc.IsConnected() {
		return false, fmt.Errorf("natsfleet: identify turn of shard %d: not connected to the parent (%s)", shard, q.nc.Status())
	}
	data, _ := json.Marshal(identifyAsk{Op: "wait", Child: q.child, ID: id, Shard: shard, Wait: q.wait})
	rctx, cancel := context.WithTimeout(ctx, q.wait+askTrip)
	defer cancel()
	stop := context.AfterFunc(q.ctx, cancel)
	defer stop()
	m, err := q.nc.RequestWithContext(rctx, q.subject, data)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			return false, ctx.Err()
		case q.ctx.Err() != nil:
			return false, errParentQueueClosed
		}
		return false, fmt.Errorf("natsfleet: identify turn of shard %d from the parent: %w", shard, err)
	}
	var a identifyAnswer
	if err := json.Unmarshal(m.Data, &a); err != nil {
		return false, fmt.Errorf("natsfleet: identify turn of shard %d: unreadable answer: %w", shard, err)
	}
	if a.Err != "" {
		return false, fmt.Errorf("natsfleet: identify turn of shard %d: the parent says: %s", shard, a.Err)
	}
	return a.Granted, nil
}

// send publishes a one-way message to the parent's queue.
func (q *parentIdentifyQueue) send(a identifyAsk) {
	data, _ := json.Marshal(a)
	_ = q.nc.Publish(q.subject, data)
}

// UnlockBucket tells the parent the shard is done with its turn.
func (q *parentIdentifyQueue) UnlockBucket(shardID int) {
	q.mu.Lock()
	id, ok := q.held[shardID]
	delete(q.held, shardID)
	q.mu.Unlock()
	if ok {
		q.send(identifyAsk{Op: "done", Child: q.child, ID: id})
	}
}

// Close gives every turn this process holds back to the parent; waits in
// progress fail. It does not close the connection.
func (q *parentIdentifyQueue) Close(ctx context.Context) {
	q.mu.Lock()
	q.cancel()
	clear(q.held)
	q.mu.Unlock()
	q.send(identifyAsk{Op: "gone", Child: q.child})
	if !q.nc.IsConnected() {
		return // the parent sees the process exit
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, askTrip)
		defer cancel()
	}
	_ = q.nc.FlushWithContext(ctx)
}

var _ runtime.IdentifyQueue = (*parentIdentifyQueue)(nil)
