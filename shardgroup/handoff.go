package shardgroup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/disgoorg/disgo/gateway"
	"github.com/gorilla/websocket"
)

// DefaultMaxHeld is how many events a shard of a reshard's new generation
// holds back at most (Config.MaxHeld). It is the overlap's memory bound:
// with the disgo events made of each held event, a few KB per event, so
// about 10–30 MB per new shard when full. The new shard holds the events
// it receives from its READY until the cut-over; the old generation
// catches up meanwhile. At 200 events/s per shard it covers an old
// generation 50 s behind.
const DefaultMaxHeld = 10000

// ErrOldGenerationLags is returned by CutOver when a new shard had to hold
// more than MaxHeld events because the old generation delivers too slowly.
var ErrOldGenerationLags = errors.New("shardgroup: the old generation lags too far behind the new one (a new shard held Config.MaxHeld events): make the old generation's listeners faster, or raise Config.MaxHeld")

// ErrCutOverStopped is returned by CutOver when stop closed after the
// cut-over began.
var ErrCutOverStopped = errors.New("shardgroup: stopped during the cut-over")

// clock orders the moments a held buffer starts and barriers are sent.
var clock atomic.Int64

// poll is how often CutOver looks at shard states while it waits.
const poll = 2 * time.Millisecond

// CutOver hands event delivery from an old generation of groups (whose
// runners' Record was called before the new one started) to a new
// generation (built in standby, see Config.Gate) with every event
// delivered once.
//
// Both generations receive the same payload for the same guild event. A
// new shard holds back, from its session's first event, what it receives;
// the old shards go on delivering and remember per guild the payloads they
// delivered last. CutOver waits until every new shard is ready, has its
// guilds, and holds an unbroken run of events. Then it sends every shard a
// heartbeat (a barrier): once an old shard's ACK is read, it has delivered
// every event queued to it before the new sessions began; once a new
// shard's ACK is read, its session was live when the gateway answered (an
// invalidated session makes CutOver wait for the next one and start
// again). Then, for each new shard: the old shards feeding it stop
// delivering its guilds, which fixes what they delivered last; a barrier
// on the new shard makes sure it holds all of that; and, under its
// delivery lock, it delivers the held events that come after the old
// generation's last one per guild, and goes live. Events without a guild
// (DMs) are matched on shard 0, and on every shard that receives them.
//
// A new shard whose session is invalidated after its last barrier loses
// what the gateway sent it meanwhile, as any invalidated session does.
//
// ctx bounds the wait before the first guild changes hands; an error then
// leaves the old generation serving (call EndRecording on its runners).
// After that there is no way back: CutOver returns when every new shard
// is live, or with ErrCutOverStopped when stop closes.
func CutOver(ctx context.Context, stop <-chan struct{}, old, next []*Runner) error {
	if len(old) == 0 || len(next) == 0 {
		return errors.New("shardgroup: CutOver needs an old and a new generation")
	}
	oldCount, newCount := old[0].g.cfg.ShardCount, next[0].g.cfg.ShardCount
	olds := map[int]*shard{}
	for _, r := range old {
		for id, s := range r.g.shards {
			olds[id] = s
		}
	}
	news := map[int]*shard{}
	for _, r := range next {
		for id, s := range r.g.shards {
			news[id] = s
		}
	}
	if len(news) != newCount {
		return fmt.Errorf("shardgroup: CutOver needs every shard of the new generation (have %d of %d)", len(news), newCount)
	}
	// An old shard may be missing (its cluster never got a group to run):
	// it delivered nothing, so the new shards deliver all they hold of its
	// guilds.
	sources := func(j int) []*shard {
		var out []*shard
		for o := range oldCount {
			if s, ok := olds[o]; ok && o%gcd(oldCount, newCount) == j%gcd(oldCount, newCount) {
				out = append(out, s)
			}
		}
		return out
	}

	// Prepare: every new shard live at once, and barriers on both sides.
	var epochs map[int]int64
	for {
		if err := waitLive(ctx, stop, news, true); err != nil {
			return err
		}
		epochs = map[int]int64{}
		for id, s := range news {
			epochs[id] = s.g.deliv[id].epochNow()
		}
		all := make([]*shard, 0, len(olds)+len(news))
		for _, s := range olds {
			all = append(all, s)
		}
		for _, s := range news {
			all = append(all, s)
		}
		if err := barriersWatching(ctx, stop, all, news); err != nil {
			return err
		}
		same := true
		for id, s := range news {
			if s.g.deliv[id].epochNow() != epochs[id] || !s.live() {
				same = false
			}
		}
		if same {
			break
		}
	}

	// Switch each new shard; from the first, there is no way back.
	var wg sync.WaitGroup
	errs := make([]error, newCount)
	for id, s := range news {
		wg.Go(func() { errs[id] = s.takeOver(stop, epochs[id], sources(id), oldCount, newCount) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// epochNow is the held run's epoch, or -1 when there is none.
func (d *delivery) epochNow() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.valid {
		return -1
	}
	return d.epoch
}

// live reports whether a standby shard is ready, has its guilds and holds
// an unbroken run of events.
func (s *shard) live() bool {
	if State(s.state.Load()) != StateReady || s.pendingGuilds.Load() > 0 {
		return false
	}
	d := s.g.deliv[s.id]
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.valid
}

// waitLive waits until every shard is live. With strict, a shard that
// overflowed its held events fails the wait.
func waitLive(ctx context.Context, stop <-chan struct{}, shards map[int]*shard, strict bool) error {
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		all := true
		for id, s := range shards {
			d := s.g.deliv[id]
			d.mu.Lock()
			over := d.over
			d.mu.Unlock()
			if strict && over {
				return fmt.Errorf("shard %d: %w", id, ErrOldGenerationLags)
			}
			if State(s.state.Load()) == StateStopped {
				return fmt.Errorf("shardgroup: shard %d of the new generation stopped before the cut-over", id)
			}
			if !s.live() {
				all = false
			}
		}
		if all {
			return nil
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		case <-stop:
			return ErrCutOverStopped
		}
	}
}

// barriersWatching runs barriers, giving up with ErrOldGenerationLags as
// soon as a new shard overflows its held events while they wait.
func barriersWatching(ctx context.Context, stop <-chan struct{}, shards []*shard, news map[int]*shard) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var over atomic.Int64
	over.Store(-1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(poll)
		defer t.Stop()
		for {
			for id, s := range news {
				d := s.g.deliv[id]
				d.mu.Lock()
				o := d.over
				d.mu.Unlock()
				if o {
					over.Store(int64(id))
					cancel()
					return
				}
			}
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
		}
	}()
	err := barriers(ctx, stop, shards)
	cancel()
	<-done
	if id := over.Load(); id >= 0 {
		return fmt.Errorf("shard %d: %w", id, ErrOldGenerationLags)
	}
	return err
}

// barriers runs a barrier on every shard at once.
func barriers(ctx context.Context, stop <-chan struct{}, shards []*shard) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	var wg sync.WaitGroup
	errs := make([]error, len(shards))
	for i, s := range shards {
		wg.Go(func() { errs[i] = s.barrier(ctx) })
	}
	wg.Wait()
	select {
	case <-stop:
		return ErrCutOverStopped
	default:
	}
	return errors.Join(errs...)
}

// takeOver switches one new shard. First each old shard feeding it stops
// delivering its guilds (under the old shard's delivery lock), which
// fixes what the old generation delivered last per guild. Then a barrier
// on the new shard makes sure it holds every event the old shards
// delivered. Last, under the new shard's delivery lock, it delivers the
// held events after the old generation's last one per guild and goes
// live. An old shard's lock is never held with the new shard's.
func (s *shard) takeOver(stop <-chan struct{}, epoch int64, sources []*shard, oldCount, newCount int) error {
	d := s.g.deliv[s.id]
	zeroFrom := s.id % oldCount // the old shard whose guildless events this one continues
	hists := map[uint64]history{}
	for _, o := range sources {
		od := o.g.deliv[o.id]
		od.mu.Lock()
		od.applyLocked()
		for key, h := range od.hist {
			if key == 0 && o.id == zeroFrom || key != 0 && int((key>>22)%uint64(newCount)) == s.id {
				hists[key] = *h
			}
		}
		if od.switched != nil {
			od.switched[s.id] = true
		}
		od.zeroTaken = true
		od.mu.Unlock()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		if err := barriers(ctx, stop, []*shard{s}); err != nil {
			return err
		}
		d.mu.Lock()
		if d.valid && State(s.state.Load()) == StateReady && s.pendingGuilds.Load() == 0 {
			break // d.mu held
		}
		d.mu.Unlock()
		if err := waitLive(ctx, stop, map[int]*shard{s.id: s}, false); err != nil {
			return err
		}
	}
	defer d.mu.Unlock()
	if d.epoch != epoch {
		// The held run restarted after the shard's last barrier (its
		// session was invalidated, or it reached MaxHeld): what it held
		// before is gone, as for any invalidated session.
		s.log.Warn("reshard: a new shard lost its held events during the cut-over; some events of its guilds are lost")
	}
	// For each guild, the last held event the old generation delivered.
	byKey := map[uint64][]int{}
	for i, h := range d.held {
		byKey[h.key] = append(byKey[h.key], i)
	}
	skip := make([]bool, len(d.held))
	for key, idx := range byKey {
		p := lastDelivered(d.held, idx, hists[key])
		for _, i := range idx[:p+1] {
			skip[i] = true
		}
	}
	for i, h := range d.held {
		if skip[i] {
			continue
		}
		for _, e := range h.evs {
			s.g.em.deliver(s.id, e)
		}
	}
	d.mode, d.held, d.initial = modeLive, nil, nil
	return nil
}

// lastDelivered finds, among one guild's held events (idx, in order), the
// latest one whose payload, and up to historyLen-1 before it, match the
// old shard's last deliveries; -1 if none does. Payloads are unique on
// Discord (IDs, timestamps); the history guards against a repeated one.
func lastDelivered(held []heldEvent, idx []int, h history) int {
	if h.n == 0 {
		return -1
	}
	for p := len(idx) - 1; p >= 0; p-- {
		ok := true
		for k := 0; k < h.n && k <= p; k++ {
			if held[idx[p-k]].hash != h.h[h.n-1-k] {
				ok = false
				break
			}
		}
		if ok {
			return p
		}
	}
	return -1
}

// errConnEnded means a barrier's connection closed before its ACK.
var errConnEnded = errors.New("shardgroup: connection ended")

// barrier returns once the shard's read loop has read a heartbeat ACK the
// gateway sent after it received this call's heartbeat: every dispatch
// queued to the shard before then has been delivered (or held). The
// heartbeat takes a command slot. A connection that ends starts it again
// on the next one.
func (s *shard) barrier(ctx context.Context) error {
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		if State(s.state.Load()) == StateStopped {
			return nil // it delivers nothing more
		}
		if hb := s.hb.Load(); hb != nil && State(s.state.Load()) == StateReady {
			err := hb.barrier(ctx)
			if !errors.Is(err, errConnEnded) {
				return err
			}
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (h *heartbeater) barrier(ctx context.Context) error {
	for {
		wait := h.s.reserveSend(h.s.g.clock.Now())
		if wait == 0 {
			break
		}
		t := h.s.g.clock.NewTimer(wait)
		select {
		case <-t.C():
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
	h.s.mu.Lock()
	seq := h.s.session.Sequence
	h.s.mu.Unlock()
	data, err := json.Marshal(gateway.Message{Op: gateway.OpcodeHeartbeat, D: gateway.MessageDataHeartbeat(seq)})
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.sentN++
	h.mu.Unlock()
	h.s.writeMu.Lock()
	_ = h.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	err = h.c.WriteMessage(websocket.TextMessage, data)
	h.s.writeMu.Unlock()
	if err != nil {
		return errConnEnded
	}
	// Every heartbeat written before this one was counted before it was
	// written, so k ACKs include this heartbeat's.
	h.mu.Lock()
	k := h.sentN
	h.mu.Unlock()
	for {
		h.mu.Lock()
		done := h.ackN >= k
		if h.ackCh == nil {
			h.ackCh = make(chan struct{})
		}
		ch := h.ackCh
		h.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-h.stop:
			return errConnEnded
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
