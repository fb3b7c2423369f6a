package natsfleet

import (
	"encoding/binary"
	"errors"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gofleet/fleet/bus"
)

// outQueue coalesces the frames for one subject. A sender alone (the only
// call in flight to the address, the only call being answered) that
// finds it idle publishes its frame itself, at once, saving a hand-over
// between goroutines, and so does the goroutine that received a message
// of calls with the answers it collected for them; otherwise the queue's
// goroutine publishes, and the frames queued meanwhile go out together in
// its next message, so that under load one NATS message carries many
// calls or replies. A sender publishes at most two messages before
// handing the rest to the goroutine, so that no caller keeps publishing
// for the others. It is bounded by the senders' windows (calls) and by
// the calls in flight (replies).
type outQueue struct {
	subject string // its key: a NATS subject, or a link's key and an address
	calls   bool   // frames are this process's calls (else replies)
	link    *link  // non-nil: the frames go over this direct link
	addr    string // on a link, the address of the calls

	mu         sync.Mutex    // guards buf, spare, replies, spareReply, busy, dead
	buf        []byte        // frames, each as uvarint length | frame
	spare      []byte        // the last buffer published, for reuse
	replies    []queuedReply // replies to encode into the next message
	spareReply []queuedReply // the last replies encoded, for reuse
	busy       bool          // a sender or the goroutine is publishing
	dead       bool          // its goroutine has returned: take a new queue
	wake       chan struct{}
}

// sink is where a queue's frames go: a NATS subject, or a direct link
// (with, for calls, the address they are for).
type sink struct {
	key  string // the subject, or the link's key followed by the address
	link *link
	addr string
}

// queuedReply is a reply queued before its encoding: the goroutine that
// publishes encodes it, so that the short-lived goroutine that waited for
// it needs no stack for the Codec.
type queuedReply struct {
	id   uint64
	r    bus.Response
	addr bus.Address
	name string
}

// queueIdle is how long a queue's goroutine waits for a frame before it
// returns (a process that called us may be gone for good).
const queueIdle = time.Minute

// Lock order: Transport.wmu → outQueue.mu.

// enqueue queues frame for subject, and publishes it if the sender is
// alone and nobody is publishing; it reports false once the Transport is
// closed.
func (t *Transport) enqueue(subject string, calls bool, frame []byte, alone bool) bool {
	return t.enqueueTo(sink{key: subject}, calls, frame, alone)
}

// enqueueTo is enqueue for any sink.
func (t *Transport) enqueueTo(to sink, calls bool, frame []byte, alone bool) bool {
	return t.enqueueItem(to, calls, alone, func(q *outQueue) (bool, bool) { return q.add(frame) })
}

// enqueueFrames queues frames, already each as uvarint length | frame,
// for subject and publishes them if nobody is publishing, as the
// goroutine that received the calls they answer.
func (t *Transport) enqueueFrames(to sink, frames []byte) bool {
	return t.enqueueItem(to, false, true, func(q *outQueue) (bool, bool) { return q.addFramed(frames) })
}

// enqueueReply queues a reply to be encoded by the goroutine that
// publishes it, as enqueue queues a frame.
func (t *Transport) enqueueReply(to sink, r queuedReply, alone bool) bool {
	return t.enqueueItem(to, false, alone, func(q *outQueue) (bool, bool) { return q.addReply(r) })
}

// enqueueItem queues an item with add, which returns whether the queue
// was idle, or false.
func (t *Transport) enqueueItem(to sink, calls, alone bool, add func(*outQueue) (added, idle bool)) bool {
	for {
		q := t.queue(to, calls)
		if q == nil {
			return false
		}
		added, idle := add(q)
		if !added {
			continue
		}
		switch {
		case idle && alone:
			t.drain(q)
		case idle:
			select {
			case q.wake <- struct{}{}:
			default:
			}
		}
		return true
	}
}

// queue returns the queue for to, starting its goroutine the first
// time; nil once the Transport is closed.
func (t *Transport) queue(to sink, calls bool) *outQueue {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if q, ok := t.queues[to.key]; ok {
		return q
	}
	if t.ctx.Err() != nil {
		return nil
	}
	q := &outQueue{subject: to.key, calls: calls, link: to.link, addr: to.addr, wake: make(chan struct{}, 1)}
	t.queues[to.key] = q
	t.wg.Add(1)
	go t.runQueue(q)
	return q
}

// add queues frame; idle is true if nobody was publishing: the caller
// is then to publish, or to wake the goroutine.
func (q *outQueue) add(frame []byte) (added, idle bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.dead {
		return false, false
	}
	q.buf = binary.AppendUvarint(q.buf, uint64(len(frame)))
	q.buf = append(q.buf, frame...)
	if q.busy {
		return true, false
	}
	q.busy = true
	return true, true
}

// addFramed queues frames already each as uvarint length | frame.
func (q *outQueue) addFramed(frames []byte) (added, idle bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.dead {
		return false, false
	}
	q.buf = append(q.buf, frames...)
	if q.busy {
		return true, false
	}
	q.busy = true
	return true, true
}

// addReply queues r, as add queues a frame.
func (q *outQueue) addReply(r queuedReply) (added, idle bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.dead {
		return false, false
	}
	q.replies = append(q.replies, r)
	if q.busy {
		return true, false
	}
	q.busy = true
	return true, true
}

// take returns the queued frames and replies, or nothing (ok false) and
// marks the queue idle.
func (q *outQueue) take() (buf []byte, replies []queuedReply, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.buf) == 0 && len(q.replies) == 0 {
		q.busy = false
		return nil, nil, false
	}
	buf, replies = q.buf, q.replies
	q.buf, q.replies = q.spare[:0], q.spareReply[:0]
	q.spare, q.spareReply = nil, nil
	return buf, replies, true
}

func (q *outQueue) recycle(buf []byte, replies []queuedReply) {
	clear(replies) // drop the references to the values
	q.mu.Lock()
	if q.spare == nil {
		q.spare = buf
	}
	if q.spareReply == nil {
		q.spareReply = replies
	}
	q.mu.Unlock()
}

// send encodes replies after buf's frames and publishes them all.
func (t *Transport) send(q *outQueue, buf []byte, replies []queuedReply) []byte {
	for _, r := range replies {
		frame := t.encodeResponse(r.r, r.id, r.addr, r.name)
		if err := checkPayload(t.nc, "bus reply", len(frame)+binary.MaxVarintLen64); err != nil {
			frame = appendError(nil, r.id, err)
		}
		buf = binary.AppendUvarint(buf, uint64(len(frame)))
		buf = append(buf, frame...)
	}
	t.publish(q, buf)
	return buf
}

// drain publishes q's frames as the sender that found it idle: two
// messages at most, then the queue's goroutine takes over.
func (t *Transport) drain(q *outQueue) {
	for range 2 {
		buf, replies, ok := q.take()
		if !ok {
			return
		}
		q.recycle(t.send(q, buf, replies), replies)
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// runQueue publishes what senders handed over, until the Transport
// closes.
func (t *Transport) runQueue(q *outQueue) {
	defer t.wg.Done()
	idle := time.NewTimer(queueIdle)
	defer idle.Stop()
	for {
		select {
		case <-q.wake:
			idle.Reset(queueIdle)
		case <-idle.C:
			if t.retire(q) {
				return
			}
			idle.Reset(queueIdle)
			continue
		case <-t.ctx.Done():
			return
		}
		for {
			// Let the goroutines that are runnable queue their frames
			// too, while they keep adding some (a few rounds at most):
			// under load this is what makes one message carry many.
			for range 4 {
				q.mu.Lock()
				n := len(q.buf) + len(q.replies)
				q.mu.Unlock()
				runtime.Gosched()
				q.mu.Lock()
				grew := len(q.buf)+len(q.replies) > n
				q.mu.Unlock()
				if !grew {
					break
				}
			}
			buf, replies, ok := q.take()
			if !ok {
				break
			}
			q.recycle(t.send(q, buf, replies), replies)
		}
	}
}

// retire removes an idle queue, unless a frame arrived meanwhile.
func (t *Transport) retire(q *outQueue) bool {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.buf) > 0 || len(q.replies) > 0 || q.busy {
		return false
	}
	q.dead = true
	delete(t.queues, q.subject)
	return true
}

// publish sends buf in messages no larger than the server's max payload,
// or over q's link in one message.
func (t *Transport) publish(q *outQueue, buf []byte) {
	if q.link != nil {
		if q.calls {
			t.stats.callMessages.Add(1)
		}
		if err := q.link.write(q.addr, buf); err != nil {
			// Its reader sees the connection closed, and fails the
			// calls in flight on it.
			_ = q.link.conn.Close()
		}
		return
	}
	max := int(t.nc.MaxPayload())
	for len(buf) > 0 {
		n := 0
		for n < len(buf) {
			_, rest, ok := nextFrame(buf[n:])
			if !ok {
				return
			}
			end := len(buf) - len(rest)
			if n > 0 && max > 0 && end > max {
				break
			}
			n = end
		}
		chunk := buf[:n]
		buf = buf[n:]
		if !q.calls {
			if err := t.nc.Publish(q.subject, chunk); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
				t.log.Warn("bus replies not sent", "err", err)
			}
			continue
		}
		ids := callIDs(chunk)
		t.pmu.Lock()
		t.batchSeq++
		seq := t.batchSeq
		t.batches[seq%batchRing] = batchRecord{seq: seq, ids: ids}
		t.pmu.Unlock()
		t.stats.callMessages.Add(1)
		if err := t.nc.PublishRequest(q.subject, t.inbox+"."+strconv.FormatUint(seq, 36), chunk); err != nil {
			for _, id := range ids {
				if p := t.take(id); p != nil {
					t.finish(p, t.publishError(err, p.to, p.name, len(chunk)))
				}
			}
		}
	}
}

// callIDs lists the call ids of the frames in b.
func callIDs(b []byte) []uint64 {
	var ids []uint64
	for len(b) > 0 {
		frame, rest, ok := nextFrame(b)
		if !ok {
			break
		}
		b = rest
		if id, k := binary.Uvarint(frame); k > 0 {
			ids = append(ids, id)
		}
	}
	return ids
}
