package discordtest

import (
	"sync"
	"time"
)

// entry is one dispatch kept for sending and replay. d is shared, never
// copied: load events reuse one pre-encoded payload.
type entry struct {
	t string
	d []byte
}

// session is a gateway session: a sequence, a bounded replay ring, and the
// connection it is attached to, if any.
type session struct {
	id      string
	shard   int
	shards  int
	intents uint64
	maxRing int // power of two

	mu         sync.Mutex // guards every field below
	cond       sync.Cond  // on mu: the ring has room, or the session ended
	ring       []entry    // power-of-two length; seq n lives at n & (len-1)
	seq        int        // last sequence assigned
	conn       *conn      // attached connection or nil
	detachedAt time.Time
	ended      bool // invalidated: no more dispatches, no resume
	// initial is the sequence of the last dispatch of the IDENTIFY's
	// answer (READY and the shard's GUILD_CREATEs), 0 until all of them
	// are queued.
	initial int
}

func newSession(id string, shard, shards int, intents uint64, maxRing int) *session {
	ss := &session{id: id, shard: shard, shards: shards, intents: intents, maxRing: maxRing, ring: make([]entry, 64)}
	ss.cond.L = &ss.mu
	return ss
}

func roundPow2(n int) int {
	p := 64
	for p < n {
		p <<= 1
	}
	return p
}

// oldestLocked is the oldest sequence still in the ring.
func (ss *session) oldestLocked() int { return max(1, ss.seq-len(ss.ring)+1) }

// appendLocked adds dispatches, waiting while the attached connection is a
// whole buffer behind (backpressure, never an unbounded queue). It returns
// false if the session ended. ss.mu is held.
func (ss *session) appendLocked(t string, ds ...[]byte) bool {
	for _, d := range ds {
		for {
			if ss.ended {
				return false
			}
			// The ring grows to its maximum before it overwrites, so
			// that a client that drops keeps as much to resume from as
			// the replay buffer allows.
			if ss.seq >= len(ss.ring) && len(ss.ring) < ss.maxRing {
				ss.growLocked()
				continue
			}
			unsent := ss.seq + 1 - ss.sentLocked()
			if unsent <= len(ss.ring) || ss.conn == nil {
				break // detached: the oldest entry is dropped
			}
			ss.cond.Wait()
		}
		ss.seq++
		ss.ring[ss.seq&(len(ss.ring)-1)] = entry{t: t, d: d}
	}
	if c := ss.conn; c != nil {
		c.wakeWriter()
	}
	return true
}

// sentLocked is the last sequence written to the attached connection, or
// the last assigned one when detached (nothing waits to be written then).
func (ss *session) sentLocked() int {
	if ss.conn == nil {
		return ss.seq
	}
	return ss.conn.sent
}

func (ss *session) growLocked() {
	n := make([]entry, len(ss.ring)*2)
	for q := ss.oldestLocked(); q <= ss.seq; q++ {
		n[q&(len(n)-1)] = ss.ring[q&(len(ss.ring)-1)]
	}
	ss.ring = n
}

// append is appendLocked with the lock taken.
func (ss *session) append(t string, ds ...[]byte) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.appendLocked(t, ds...)
}

// take copies up to len(buf) unsent entries for c into buf and returns
// them with the sequence of the first. c must be attached.
func (ss *session) take(c *conn, buf []entry) ([]entry, int) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.conn != c {
		return buf[:0], 0
	}
	from := c.sent + 1
	n := min(ss.seq-c.sent, len(buf))
	buf = buf[:n]
	for i := range buf {
		buf[i] = ss.ring[(from+i)&(len(ss.ring)-1)]
	}
	return buf, from
}

// markSent records that c wrote up to seq and wakes waiting producers.
func (ss *session) markSent(c *conn, seq int) {
	ss.mu.Lock()
	if ss.conn == c && seq > c.sent {
		c.sent = seq
	}
	ss.mu.Unlock()
	ss.cond.Broadcast()
}

// attach binds c to the session from sequence seq (the client's last), for
// IDENTIFY (seq 0) and RESUME. An earlier connection is detached.
func (ss *session) attach(c *conn, seq int) (old *conn) {
	ss.mu.Lock()
	old = ss.conn
	ss.conn = c
	c.sent = seq
	ss.mu.Unlock()
	ss.cond.Broadcast()
	return old
}

// detach unbinds c; invalidate ends the session (a 1000/1001 close).
func (ss *session) detach(c *conn, invalidate bool) {
	ss.mu.Lock()
	if ss.conn == c {
		ss.conn = nil
		ss.detachedAt = time.Now()
	}
	if invalidate {
		ss.ended = true
	}
	ss.mu.Unlock()
	ss.cond.Broadcast()
}

// markInitial records that READY and the shard's GUILD_CREATEs are
// queued: everything up to the current sequence belongs to them or came
// after them.
func (ss *session) markInitial() {
	ss.mu.Lock()
	ss.initial = ss.seq
	ss.mu.Unlock()
}

// ready reports whether READY and every GUILD_CREATE of the IDENTIFY have
// been written to the attached connection.
func (ss *session) ready() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return !ss.ended && ss.initial > 0 && ss.conn != nil && ss.conn.sent >= ss.initial
}

// end invalidates the session and wakes every waiter.
func (ss *session) end() {
	ss.mu.Lock()
	ss.ended = true
	ss.mu.Unlock()
	ss.cond.Broadcast()
}

// resumable reports whether a RESUME from seq can be served at now.
func (ss *session) resumable(seq int, now time.Time, window time.Duration) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.ended || seq > ss.seq || seq < ss.oldestLocked()-1 {
		return false
	}
	return ss.conn != nil || now.Sub(ss.detachedAt) <= window
}

func (ss *session) expired(now time.Time, window time.Duration) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.ended || (ss.conn == nil && now.Sub(ss.detachedAt) > window)
}

// owns reports whether the session receives a guild's events.
func (ss *session) owns(guildID uint64) bool {
	if guildID == 0 {
		return ss.shard == 0
	}
	return ShardFor(guildID, ss.shards) == ss.shard
}
