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
// IDENTIFY (seq 0) and RESUME. An earlier connection is detached and
// returned. A connection that is already closing is not attached (ok
// false): its client has gone, and the session stays where it was.
func (ss *session) attach(c *conn, seq int) (old *conn, ok bool) {
	ss.mu.Lock()
	select {
	case <-c.closing:
		ss.mu.Unlock()
		return nil, false
	default:
	}
	old = ss.conn
	ss.conn = c
	c.sent = seq
	ss.mu.Unlock()
	ss.cond.Broadcast()
	return old, true
}

// detach unbinds c if the session is still bound to it; with invalidate
// (a 1000/1001 close, or a server close that demands a new session) it
// also ends the session, and reports whether it did. A connection the
// session has moved away from (a RESUME elsewhere took it over) no longer
// speaks for it: its close does not end the session.
func (ss *session) detach(c *conn, invalidate bool) (ended bool) {
	ss.mu.Lock()
	if ss.conn == c {
		ss.conn = nil
		ss.detachedAt = time.Now()
		if invalidate && !ss.ended {
			ss.ended, ended = true, true
		}
	}
	ss.mu.Unlock()
	ss.cond.Broadcast()
	return ended
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

// end invalidates the session and wakes every waiter. It reports whether
// the session ended now (false if it had already ended).
func (ss *session) end() bool {
	ss.mu.Lock()
	ended := !ss.ended
	ss.ended = true
	ss.mu.Unlock()
	ss.cond.Broadcast()
	return ended
}

// refusal says why a RESUME from seq cannot be served at now: "" if it
// can, SessionEndedExpired when the resume window has passed,
// SessionEndedReplayLost when seq is older than the replay buffer,
// SessionEndedInvalidSeq for a sequence the session never reached, "ended"
// when the session has ended already.
func (ss *session) refusal(seq int, now time.Time, window time.Duration) string {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	switch {
	case ss.ended:
		return "ended"
	case seq > ss.seq:
		return SessionEndedInvalidSeq
	case ss.conn == nil && now.Sub(ss.detachedAt) > window:
		return SessionEndedExpired
	case seq < ss.oldestLocked()-1:
		return SessionEndedReplayLost
	}
	return ""
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

// Why sessions end, the keys of Stats.SessionsEnded. Only the first two
// and the last are Discord's own doing in a healthy run; the others follow
// from what a client did (or a fault a test injected).
const (
	SessionEndedInvalidated    = "invalidated"     // InvalidateSession with resumable false (op 9 d=false)
	SessionEndedResumeRefused  = "resume_refused"  // RefuseResumes
	SessionEndedClientClose    = "client_close"    // the client closed with 1000 or 1001
	SessionEndedCloseCode      = "close_"          // prefix: the server closed with this code (4003, 4005, 4007, 4009, ...)
	SessionEndedExpired        = "expired"         // detached for longer than the resume window
	SessionEndedReplayLost     = "replay_lost"     // a RESUME from a sequence the replay buffer no longer holds
	SessionEndedInvalidSeq     = "invalid_seq"     // a RESUME from a sequence the session never reached
	SessionEndedGatewayRestart = "gateway_restart" // Restart(false)
	SessionEndedStartLimit     = "start_limit"     // the session start limit ran out
)

// endSession ends ss, forgets it and counts why, once per session.
func (s *Server) endSession(ss *session, reason string) bool {
	return s.forgetSession(ss, ss.end(), reason)
}

// forgetSession removes an ended session and, if it ended now, counts why.
func (s *Server) forgetSession(ss *session, ended bool, reason string) bool {
	s.mu.Lock()
	if s.sessions[ss.id] == ss {
		delete(s.sessions, ss.id)
		s.sessionVer++
	}
	if ended {
		s.stats.sessionsEnded[reason]++
	}
	s.mu.Unlock()
	return ended
}
