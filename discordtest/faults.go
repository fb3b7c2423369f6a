package discordtest

import (
	"encoding/json"
	"fmt"
	"time"
)

// AllShards selects every shard in a fault-injection call.
const AllShards = -1

// conns returns the open connections of a shard (AllShards for all); a
// shard ID matches sessions of any shard count.
func (s *Server) connsOf(shard int) []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*conn
	for c := range s.conns {
		if id := c.shardID(); id >= 0 && (shard == AllShards || id == shard) {
			out = append(out, c)
		}
	}
	return out
}

// CloseShard closes the shard's connections with a close code, as Discord
// does. Codes that demand a new session (4003, 4004, 4005, 4007, 4009 and
// 4010–4014) end the session; others leave it resumable. It returns how
// many connections it closed.
func (s *Server) CloseShard(shard, code int, reason string) int {
	cs := s.connsOf(shard)
	for _, c := range cs {
		c.close(code, reason)
	}
	return len(cs)
}

// DropShard drops the shard's TCP connections without a close frame. The
// sessions stay resumable.
func (s *Server) DropShard(shard int) int {
	cs := s.connsOf(shard)
	for _, c := range cs {
		c.close(closeDrop, "")
	}
	return len(cs)
}

// Reconnect sends op 7 RECONNECT to the shard's connections.
func (s *Server) Reconnect(shard int) int {
	cs := s.connsOf(shard)
	for _, c := range cs {
		c.sendJSON([]byte(`{"op":7,"d":null,"s":null,"t":null}`))
	}
	return len(cs)
}

// InvalidateSession sends op 9 to the connections of the shard's
// sessions. With resumable false the sessions end first, so a RESUME is
// refused. It returns how many sessions it invalidated.
func (s *Server) InvalidateSession(shard int, resumable bool) int {
	sessions, _ := s.liveSessions()
	n := 0
	for _, ss := range sessions {
		if shard != AllShards && ss.shard != shard {
			continue
		}
		ss.mu.Lock()
		c := ss.conn
		ss.mu.Unlock()
		if !resumable && !s.endSession(ss, SessionEndedInvalidated) {
			continue // it had ended already
		}
		n++
		if c != nil {
			c.sendJSON(fmt.Appendf(nil, `{"op":9,"d":%t,"s":null,"t":null}`, resumable))
		}
	}
	return n
}

// StopAcks makes the shard's current connections stop acknowledging
// heartbeats (a zombie connection), or start again. New connections ack.
func (s *Server) StopAcks(shard int, stop bool) int {
	cs := s.connsOf(shard)
	for _, c := range cs {
		c.noAcks.Store(stop)
	}
	return len(cs)
}

// RequestHeartbeat sends op 1 to the shard's connections; clients must
// heartbeat at once.
func (s *Server) RequestHeartbeat(shard int) int {
	cs := s.connsOf(shard)
	for _, c := range cs {
		c.sendJSON([]byte(`{"op":1,"d":null,"s":null,"t":null}`))
	}
	return len(cs)
}

// SetLatency delays every write to the shard's current connections by d
// (0 removes the delay).
func (s *Server) SetLatency(shard int, d time.Duration) int {
	cs := s.connsOf(shard)
	for _, c := range cs {
		c.latency.Store(int64(d))
	}
	return len(cs)
}

// Restart simulates a gateway restart: every connection is dropped without
// a close frame. With keepSessions the sessions stay resumable; without,
// they are lost and RESUMEs are refused.
func (s *Server) Restart(keepSessions bool) {
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	var lost map[string]*session
	if !keepSessions {
		lost = s.sessions
		s.sessions = map[string]*session{}
		s.sessionVer++
	}
	s.mu.Unlock()
	for _, ss := range lost {
		if ss.end() {
			s.mu.Lock()
			s.stats.sessionsEnded[SessionEndedGatewayRestart]++
			s.mu.Unlock()
		}
	}
	for _, c := range conns {
		c.close(closeDrop, "")
	}
}

// liveSessions returns the sessions that receive dispatches.
func (s *Server) liveSessions() ([]*session, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		out = append(out, ss)
	}
	return out, s.sessionVer
}

// encodePayload turns a Dispatch payload into JSON.
func encodePayload(p any) ([]byte, error) {
	switch v := p.(type) {
	case []byte:
		return v, nil
	case json.RawMessage:
		return v, nil
	case string:
		return []byte(v), nil
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("discordtest: encode %T payload: %w", p, err)
	}
	return b, nil
}

// Dispatch sends an event to every session of the shard that owns the
// guild ((guild_id >> 22) % shards; guild 0 means shard 0, as for DMs),
// connected or resumable: a disconnected session gets it on RESUME. The
// payload is JSON as []byte, json.RawMessage or string, or a value to
// marshal. It returns how many sessions received it. Dispatch blocks
// while a connected client is a whole replay buffer behind.
func (s *Server) Dispatch(guildID uint64, eventType string, payload any) (int, error) {
	ids, err := s.DispatchSessions(guildID, eventType, payload)
	return len(ids), err
}

// DispatchSessions is Dispatch, returning the IDs of the sessions that
// received the event. A shard has two when, for instance, its connection
// closed after an IDENTIFY and before the READY reached the client: that
// session lives on, resumable, with nobody knowing its ID, while the
// client identifies again, as on Discord.
func (s *Server) DispatchSessions(guildID uint64, eventType string, payload any) ([]string, error) {
	d, err := encodePayload(payload)
	if err != nil {
		return nil, err
	}
	sessions, _ := s.liveSessions()
	var ids []string
	for _, ss := range sessions {
		if ss.owns(guildID) && ss.append(eventType, d) {
			ids = append(ids, ss.id)
		}
	}
	return ids, nil
}

// Broadcast sends an event to every live session.
func (s *Server) Broadcast(eventType string, payload any) (int, error) {
	d, err := encodePayload(payload)
	if err != nil {
		return 0, err
	}
	sessions, _ := s.liveSessions()
	n := 0
	for _, ss := range sessions {
		if ss.append(eventType, d) {
			n++
		}
	}
	return n, nil
}

// heldRequest is an IDENTIFY or RESUME waiting for its shard's release.
type heldRequest struct {
	c  *conn
	op int
	d  json.RawMessage
}

// HoldShard keeps a shard from connecting, as during a Discord outage: its
// connections are dropped, and IDENTIFY and RESUME payloads for it get no
// answer (heartbeats still do) until ReleaseShard.
func (s *Server) HoldShard(shard int) {
	s.mu.Lock()
	if s.held == nil {
		s.held = map[int][]heldRequest{}
	}
	if _, ok := s.held[shard]; !ok {
		s.held[shard] = nil
	}
	s.mu.Unlock()
	s.DropShard(shard)
}

// ReleaseShard answers the shard's held IDENTIFYs and RESUMEs and lets it
// connect again.
func (s *Server) ReleaseShard(shard int) {
	s.mu.Lock()
	reqs := s.held[shard]
	delete(s.held, shard)
	s.mu.Unlock()
	for _, r := range reqs {
		r.c.pending.Store(false)
		select {
		case <-r.c.closing:
			continue
		default:
		}
		if !r.c.handshake(r.op, r.d) {
			r.c.close(closeDrop, "")
		}
	}
}

// requestShard is the shard an IDENTIFY or RESUME is for, or -1.
func (s *Server) requestShard(op int, d json.RawMessage) int {
	if op == opIdentify {
		var id struct {
			Shard *[2]int `json:"shard"`
		}
		if json.Unmarshal(d, &id) != nil {
			return -1
		}
		if id.Shard == nil {
			return 0
		}
		return id.Shard[0]
	}
	var rd resumeData
	if json.Unmarshal(d, &rd) != nil {
		return -1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss := s.sessions[rd.SessionID]; ss != nil {
		return ss.shard
	}
	return -1
}

// hold parks a handshake if its shard is held; true means it was parked.
func (s *Server) hold(c *conn, shard, op int, d json.RawMessage) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	reqs, ok := s.held[shard]
	if !ok {
		return false
	}
	c.pending.Store(true)
	s.held[shard] = append(reqs, heldRequest{c: c, op: op, d: append(json.RawMessage(nil), d...)})
	return true
}

// RefuseResumes makes the next n RESUMEs of a shard's sessions fail with
// op 9 (d=false), ending those sessions, as when Discord has lost them.
func (s *Server) RefuseResumes(shard, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refuse == nil {
		s.refuse = map[int]int{}
	}
	s.refuse[shard] += n
}

// refuseResumeLocked consumes a pending refusal for shard.
func (s *Server) refuseResumeLocked(shard int) bool {
	if s.refuse[shard] > 0 {
		s.refuse[shard]--
		return true
	}
	return false
}
