package shardgroup

import (
	"hash/maphash"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/gateway"
)

// mode is what a shard does with the events it receives.
type mode int

const (
	modeLive      mode = iota // deliver to listeners
	modeStandby               // a reshard's new generation: hold them back
	modeRecording             // a reshard's old generation: deliver, remember what, drop switched guilds
)

// historyLen is how many delivered payloads the old generation remembers
// per guild, to find its position in the new generation's held events.
const historyLen = 4

// history is the hashes of the last payloads delivered for one guild,
// oldest first.
type history struct {
	h [historyLen]uint64
	n int
}

func (h *history) add(x uint64) {
	if h.n == historyLen {
		copy(h.h[:], h.h[1:])
		h.n--
	}
	h.h[h.n] = x
	h.n++
}

// heldEvent is an event a new-generation shard received but has not
// delivered: the disgo events made of it, the hash of its payload and
// its guild.
type heldEvent struct {
	evs  []bot.Event
	hash uint64
	key  uint64
}

// delivery is one shard's delivery state.
//
// Locks: a shard's delivery lock (mu) is held by its own read loop while
// the shard handles and delivers one event (user code runs under it, and
// under no other lock), and briefly by CutOver. Nothing holds two
// delivery locks at once. colMu is a leaf.
type delivery struct {
	colMu      sync.Mutex // guards collecting, collected, live, spare
	collecting bool
	collected  []bot.Event
	live       bool        // the events collected are delivered at once (not held)
	spare      []bot.Event // a delivered event's slice, for the next one

	mu   sync.Mutex // held while the shard's events reach listeners; guards the fields below
	mode mode

	// standby
	held    []heldEvent
	maxHeld int
	valid   bool   // held is continuous since the session's first dispatch
	epoch   int64  // changes each time held restarts
	start   int64  // clock tick at which held restarted
	session string // the session held belongs to ("" until READY)
	over    bool   // held overflowed at least once
	initial map[uint64]struct{}

	// recording
	req       atomic.Int64 // Record (the new count) or EndRecording (-1) asked; applied under mu
	hist      map[uint64]*history
	newCount  int          // the new generation's shard count
	switched  map[int]bool // new shards that took over this shard's guilds
	zeroTaken bool         // events without a guild are dropped
}

// collect keeps e for the shard's current event if the shard is handling
// one.
func (d *delivery) collect(e bot.Event) bool {
	d.colMu.Lock()
	defer d.colMu.Unlock()
	if !d.collecting {
		return false
	}
	d.collected = append(d.collected, e)
	return true
}

// applyLocked puts a Record or EndRecording asked for into effect; mu is
// held. They take effect at the shard's next event, so that they never
// wait for a listener: an event delivered meanwhile was received before
// the new generation began, and CutOver does not need it.
func (d *delivery) applyLocked() {
	switch v := d.req.Swap(0); {
	case v > 0:
		d.mode, d.hist, d.newCount, d.switched, d.zeroTaken = modeRecording, map[uint64]*history{}, int(v), map[int]bool{}, false
	case v < 0 && d.mode == modeRecording:
		d.mode, d.hist, d.switched, d.zeroTaken = modeLive, nil, nil, false
	}
}

// drops reports whether a recording shard no longer delivers key's events.
func (d *delivery) drops(key uint64) bool {
	if key == 0 {
		return d.zeroTaken
	}
	return d.switched[int((key>>22)%uint64(d.newCount))]
}

func (d *delivery) record(key, hash uint64) {
	h := d.hist[key]
	if h == nil {
		h = &history{}
		d.hist[key] = h
	}
	h.add(hash)
}

// hold keeps an event of a standby shard. READY, RESUMED and the
// GUILD_CREATEs of the guilds READY listed only fill caches.
func (d *delivery) hold(t gateway.EventType, ev gateway.EventData, evs []bot.Event, raw []byte) {
	if r, ok := ev.(gateway.EventReady); ok && d.valid && d.session != "" && d.session != r.SessionID {
		d.valid = false // a new session nobody told us of
	}
	if !d.valid {
		d.valid, d.held, d.initial = true, nil, nil
		d.epoch++
		d.start = clock.Add(1)
	}
	switch t {
	case gateway.EventTypeReady:
		r := ev.(gateway.EventReady)
		d.session = r.SessionID
		d.initial = make(map[uint64]struct{}, len(r.Guilds))
		for _, g := range r.Guilds {
			d.initial[uint64(g.ID)] = struct{}{}
		}
		return
	case gateway.EventTypeResumed:
		return
	case gateway.EventTypeGuildCreate:
		if gc, ok := ev.(gateway.EventGuildCreate); ok {
			if _, ok := d.initial[uint64(gc.ID)]; ok {
				delete(d.initial, uint64(gc.ID))
				return
			}
		}
	}
	if len(d.held) >= d.maxHeld {
		// The old generation is too far behind: the overlap is lost
		// and held starts again with the next event.
		d.over, d.valid, d.held = true, false, nil
		return
	}
	d.held = append(d.held, heldEvent{evs: evs, hash: maphash.Bytes(payloadSeed, raw), key: guildKey(string(t), raw)})
}

// sessionLost ends a standby shard's held events: its next session starts
// them again, and the cut-over waits for it.
func (g *Group) sessionLost(s *shard) {
	d := g.deliv[s.id]
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mode == modeStandby {
		d.valid, d.held, d.session = false, nil, ""
	}
}

// deliver hands one gateway event to the group's client: disgo's handler
// updates the caches and makes disgo events of it, which reach the
// listeners now, or later for a reshard's new generation (see CutOver).
// frame is the whole gateway payload, valid only during the call.
func (g *Group) deliver(s *shard, m gateway.Message, frame []byte) {
	if h := g.cfg.Hooks.Event; h != nil {
		h(g, s.id, m.T)
	}
	// An event not delivered still reaches the caches, so that a group
	// whose delivery opens later (a reshard's new cluster on another
	// host) has them filled.
	listeners := g.cfg.Deliver == nil || g.cfg.Deliver()
	ev, ok := m.D.(gateway.EventData)
	if !ok {
		return
	}
	if _, unknown := ev.(gateway.EventUnknown); unknown {
		return
	}
	d := g.deliv[s.id]
	d.mu.Lock()
	defer d.mu.Unlock()
	d.applyLocked()
	evs := g.handle(s, d, m, ev)
	if !listeners {
		d.recycle(evs)
		return
	}
	switch d.mode {
	case modeLive:
		for _, e := range evs {
			g.em.deliver(s.id, e)
		}
		d.recycle(evs)
	case modeRecording:
		raw := field(frame, "d")
		key := guildKey(string(m.T), raw)
		if d.drops(key) {
			return
		}
		for _, e := range evs {
			g.em.deliver(s.id, e)
		}
		d.recycle(evs)
		d.record(key, maphash.Bytes(payloadSeed, raw))
	case modeStandby:
		d.hold(m.T, ev, evs, field(frame, "d"))
	}
}

// recycle keeps the slice of an event's delivered disgo events for the
// next event's.
func (d *delivery) recycle(evs []bot.Event) {
	clear(evs)
	d.colMu.Lock()
	d.spare = evs[:0]
	d.colMu.Unlock()
}

// liveNow reports whether the disgo events of the event being handled
// are delivered at once, to the listeners there are now.
func (d *delivery) liveNow() bool {
	d.colMu.Lock()
	defer d.colMu.Unlock()
	return d.collecting && d.live
}

// handle runs disgo's handler for one gateway event and returns the disgo
// events it made. A panic in the handler is recovered and counted.
func (g *Group) handle(s *shard, d *delivery, m gateway.Message, ev gateway.EventData) (evs []bot.Event) {
	d.colMu.Lock()
	d.collecting, d.live = true, d.mode != modeStandby
	if d.live {
		d.collected, d.spare = d.spare, nil
	}
	d.colMu.Unlock()
	defer func() {
		d.colMu.Lock()
		evs, d.collected, d.collecting = d.collected, nil, false
		d.colMu.Unlock()
		if v := recover(); v != nil {
			g.panics.Add(1)
			g.log.Error("recovered panic in event handling", "shard", s.id, "event", m.T, "panic", v, "stack", string(debug.Stack()))
			if h := g.cfg.Hooks.ListenerPanic; h != nil {
				h(g, s.id, v)
			}
		}
	}()
	g.em.HandleGatewayEvent(m.T, m.S, s.id, ev)
	return nil
}

// Record starts a reshard on an old-generation group: its shards go on
// delivering, remember per guild what they delivered, and stop delivering
// a guild's events once CutOver has handed it to the new generation of
// newCount shards. It does not wait for listeners.
func (r *Runner) Record(newCount int) {
	for _, id := range r.g.ids {
		r.g.deliv[id].req.Store(int64(newCount))
	}
}

// EndRecording undoes Record when a reshard gives up before its cut-over:
// the group delivers every event again. It does not wait for listeners.
func (r *Runner) EndRecording() {
	for _, id := range r.g.ids {
		r.g.deliv[id].req.Store(-1)
	}
}
