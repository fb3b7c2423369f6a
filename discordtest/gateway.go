package discordtest

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/websocket"
)

// Gateway opcodes.
const (
	opDispatch       = 0
	opHeartbeat      = 1
	opIdentify       = 2
	opPresence       = 3
	opVoiceState     = 4
	opResume         = 6
	opReconnect      = 7
	opRequestMembers = 8
	opInvalidSession = 9
	opHello          = 10
	opHeartbeatACK   = 11
	opSoundboard     = 31
	opChannelInfo    = 43
)

// Close codes the server sends.
const (
	CloseUnknownError         = 4000
	CloseUnknownOpcode        = 4001
	CloseDecodeError          = 4002
	CloseNotAuthenticated     = 4003
	CloseAuthenticationFailed = 4004
	CloseAlreadyAuthenticated = 4005
	CloseInvalidSeq           = 4007
	CloseRateLimited          = 4008
	CloseSessionTimedOut      = 4009
	CloseInvalidShard         = 4010
	CloseShardingRequired     = 4011
	CloseInvalidAPIVersion    = 4012
	CloseInvalidIntents       = 4013
	CloseDisallowedIntents    = 4014
)

// closeEndsSession reports whether a close the server sends with code
// leaves the session unresumable.
func closeEndsSession(code int) bool {
	switch code {
	case CloseNotAuthenticated, CloseAuthenticationFailed, CloseAlreadyAuthenticated, CloseInvalidSeq,
		CloseSessionTimedOut, CloseInvalidShard, CloseShardingRequired, CloseInvalidAPIVersion,
		CloseInvalidIntents, CloseDisallowedIntents:
		return true
	}
	return false
}

// payload is the envelope of what a client sends.
type payload struct {
	Op *int            `json:"op"`
	D  json.RawMessage `json:"d"`
}

var errNoOp = errors.New("payload has no op")

// decodePayload parses a client payload. It is the gateway's decoder and
// the fuzz target.
func decodePayload(data []byte) (op int, d json.RawMessage, err error) {
	var p payload
	if err := json.Unmarshal(data, &p); err != nil {
		return 0, nil, err
	}
	if p.Op == nil {
		return 0, nil, errNoOp
	}
	return *p.Op, p.D, nil
}

type identifyData struct {
	Token          string  `json:"token"`
	Compress       bool    `json:"compress"`
	LargeThreshold int     `json:"large_threshold"`
	Shard          *[2]int `json:"shard"`
	Intents        *int64  `json:"intents"`
}

type resumeData struct {
	Token     string `json:"token"`
	SessionID string `json:"session_id"`
	Seq       int    `json:"seq"`
}

func (s *Server) serveGateway(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" && r.URL.Path != "/resume" {
		http.NotFound(w, r)
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		http.Error(w, "server closed", http.StatusServiceUnavailable)
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	q := r.URL.Query()
	c := &conn{
		s:       s,
		ws:      ws,
		nc:      ws.NetConn(),
		resume:  r.URL.Path == "/resume",
		stream:  q.Get("compress"),
		wake:    make(chan struct{}, 1),
		ctrl:    make(chan frame, ctrlQueue),
		closing: make(chan struct{}),
		wdone:   make(chan struct{}),
	}
	c.shard.Store(-1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = c.nc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.stats.connections++
	s.mu.Unlock()
	s.cfg.logger.Info("discordtest: connection", "remote", r.RemoteAddr, "resume_url", c.resume,
		"compress", q.Get("compress"), "v", q.Get("v"))

	go c.writeLoop()
	if v := q.Get("v"); v != "" && v != "10" && v != "9" {
		c.fail(CloseInvalidAPIVersion, "Invalid API version", "")
	} else if e := q.Get("encoding"); e != "" && e != "json" {
		c.fail(CloseDecodeError, "Only JSON encoding is simulated", "")
	} else if !s.acceptsCompress(c.stream) {
		c.fail(CloseDecodeError, "Invalid transport compression", "")
	} else {
		c.sendJSON([]byte(`{"op":10,"d":{"heartbeat_interval":` + strconv.FormatInt(s.cfg.heartbeat.Milliseconds(), 10) + `},"s":null,"t":null}`))
		c.readLoop()
	}
	c.close(closeDrop, "")
	<-c.wdone
	c.end()
}

// end detaches the finished connection from its session and the server.
func (c *conn) end() {
	s := c.s
	if ss := c.attached.Load(); ss != nil {
		// A client's 1000/1001 ends the session and any other client
		// close keeps it; a server close ends it for the codes that
		// demand a new session.
		invalidate := c.clientCl == websocket.CloseNormalClosure || c.clientCl == websocket.CloseGoingAway
		reason := SessionEndedClientClose
		if c.clientCl == 0 {
			invalidate = c.code > 0 && closeEndsSession(c.code)
			reason = SessionEndedCloseCode + strconv.Itoa(c.code)
		}
		if ss.detach(c, invalidate) {
			s.forgetSession(ss, true, reason)
		}
	}
	by := "server"
	if c.clientCl != 0 {
		by = "client"
	}
	code := c.code
	if code == closeDrop {
		code = 0 // dropped without a close frame
	}
	s.cfg.logger.Info("discordtest: connection closed", "shard", c.shardID(), "by", by, "code", code,
		"reason", c.reason, "events_sent", c.eventsSent.Load())
	s.mu.Lock()
	delete(s.conns, c)
	if n := c.eventsSent.Load(); n > 0 {
		s.stats.eventsSent[c.shardID()] += n
	}
	s.mu.Unlock()
}

// fail records a violation (if kind is set) and closes with code.
func (c *conn) fail(code int, reason, kind string) {
	if kind != "" {
		c.s.violation(kind)
	}
	c.close(code, reason)
}

func (c *conn) readLoop() {
	s := c.s
	c.ws.SetReadLimit(1 << 20)
	c.ws.SetCloseHandler(func(int, string) error { return nil })
	c.ws.SetPingHandler(func(p string) error {
		c.sendCtrl(websocket.PongMessage, []byte(p))
		return nil
	})
	deadline := func() { _ = c.nc.SetReadDeadline(time.Now().Add(s.cfg.heartbeat + s.cfg.heartbeatGrace)) }
	deadline()
	var buf []byte
	for {
		mt, r, err := c.ws.NextReader()
		if err != nil {
			var ce *websocket.CloseError
			var ne net.Error
			switch {
			case errors.As(err, &ce):
				c.clientCl = ce.Code
				c.close(ce.Code, "")
			case errors.As(err, &ne) && ne.Timeout():
				c.fail(CloseUnknownError, "Heartbeat timed out", "heartbeat_timeout")
			}
			return
		}
		select {
		case <-c.closing:
			return
		default:
		}
		buf, err = readUpTo(buf[:0], r, maxPayload+1)
		if err != nil {
			return
		}
		if len(buf) > maxPayload {
			c.fail(CloseDecodeError, "Payload too large", "payload_too_large")
			return
		}
		if !c.countCommand() {
			c.fail(CloseRateLimited, "You are being rate limited.", "command_rate")
			return
		}
		if mt != websocket.TextMessage {
			c.fail(CloseDecodeError, "Error while decoding payload.", "decode_error")
			return
		}
		op, d, err := decodePayload(buf)
		if err != nil {
			c.fail(CloseDecodeError, "Error while decoding payload.", "decode_error")
			return
		}
		identified := c.attached.Load() != nil
		switch op {
		case opHeartbeat:
			deadline()
			if !c.noAcks.Load() {
				c.sendAck()
			}
		case opIdentify, opResume:
			if identified || c.pending.Load() {
				c.fail(CloseAlreadyAuthenticated, "You sent more than one identify payload.", "already_authenticated")
				return
			}
			if shard := s.requestShard(op, d); shard >= 0 && s.hold(c, shard, op, d) {
				continue // answered when the shard is released
			}
			if !c.handshake(op, d) {
				return
			}
		case opPresence, opVoiceState, opRequestMembers, opSoundboard, opChannelInfo:
			if !identified {
				c.fail(CloseNotAuthenticated, "You sent a payload prior to identifying.", "not_authenticated")
				return
			}
		default:
			c.fail(CloseUnknownOpcode, "Unknown opcode.", "unknown_opcode")
			return
		}
	}
}

// handshake runs an IDENTIFY or RESUME; false means the connection is
// closing. It runs on the reader, or on ReleaseShard's goroutine for a
// held one (the reader then only heartbeats).
func (c *conn) handshake(op int, d json.RawMessage) bool {
	if op == opIdentify {
		return c.identify(d)
	}
	return c.resumeSession(d)
}

// readUpTo reads r into buf, stopping after limit bytes.
func readUpTo(buf []byte, r io.Reader, limit int) ([]byte, error) {
	for len(buf) < limit {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		end := min(cap(buf), limit)
		n, err := r.Read(buf[len(buf):end])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// countCommand applies the per-connection command limit; false means the
// limit is exceeded.
func (c *conn) countCommand() bool {
	lim := c.s.cfg.commandLimit
	if c.cmds == nil {
		c.cmds = make([]int64, lim)
	}
	now := time.Now().UnixNano()
	i := c.cmdN % lim
	if c.cmdN >= lim && time.Duration(now-c.cmds[i]) < c.s.cfg.commandWindow {
		return false
	}
	c.cmds[i] = now
	c.cmdN++
	return true
}

func (s *Server) checkToken(tok string) bool {
	if len(tok) > 4 && tok[:4] == "Bot " {
		tok = tok[4:]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return tok == s.token
}

// identify handles op 2; false means the connection is closing.
func (c *conn) identify(raw json.RawMessage) bool {
	s := c.s
	var id identifyData
	if err := json.Unmarshal(raw, &id); err != nil {
		c.fail(CloseDecodeError, "Error while decoding payload.", "decode_error")
		return false
	}
	if !s.checkToken(id.Token) {
		c.fail(CloseAuthenticationFailed, "Authentication failed.", "authentication_failed")
		return false
	}
	shard, shards := 0, 1
	if id.Shard != nil {
		shard, shards = id.Shard[0], id.Shard[1]
	}
	if shards < 1 || shard < 0 || shard >= shards || (s.cfg.shardMultiple > 0 && shards%s.cfg.shardMultiple != 0) {
		c.fail(CloseInvalidShard, "Invalid shard.", "invalid_shard")
		return false
	}
	if s.guildsOf(shard, shards) > s.cfg.guildsPerShard {
		c.fail(CloseShardingRequired, "Sharding required.", "sharding_required")
		return false
	}
	if id.Intents == nil || *id.Intents < 0 || *id.Intents&^validIntents != 0 {
		c.fail(CloseInvalidIntents, "Invalid intent(s).", "invalid_intents")
		return false
	}
	intents := uint64(*id.Intents)
	if intents&privilegedIntents&^s.cfg.privileged != 0 {
		c.fail(CloseDisallowedIntents, "Disallowed intent(s).", "disallowed_intents")
		return false
	}

	now := time.Now()
	bucket := shard % s.cfg.maxConcurrency
	s.mu.Lock()
	select {
	case <-c.closing:
		// A held IDENTIFY whose client has gone: nobody would read the
		// READY, so no session starts.
		s.mu.Unlock()
		return false
	default:
	}
	last, seen := s.bucketLast[bucket]
	early := seen && now.Sub(last) < s.cfg.identifyWindow
	s.identifies = append(s.identifies, Identify{Shard: shard, Shards: shards, Bucket: bucket, At: now, Violation: early})
	if early {
		s.stats.violations["identify_concurrency"]++
		s.mu.Unlock()
		s.cfg.logger.Warn("discordtest: identify too early for its bucket", "shard", shard, "bucket", bucket)
		// Discord answers an identify over the concurrency limit with op 9.
		c.sendJSON([]byte(`{"op":9,"d":false,"s":null,"t":null}`))
		return true
	}
	s.bucketLast[bucket] = now
	if s.remainingStartsLocked(now) <= 0 {
		s.stats.violations["session_start_limit"]++
		s.mu.Unlock()
		s.exhausted()
		return false
	}
	s.starts++
	s.sweepLocked(now)
	ss := newSession(newSessionID(), shard, shards, intents, roundPow2(s.cfg.replayBuffer))
	c.compress.Store(id.Compress)
	c.shard.Store(int64(shard))
	c.attached.Store(ss)
	if _, ok := ss.attach(c, 0); !ok {
		ss.detachedAt = now // its client left as it started: resumable, then expired
	}
	// READY is the session's first dispatch: it is queued before the
	// session can receive any other, and before the guilds are encoded,
	// as Discord sends it first and the guilds after.
	ss.append("READY", s.readyPayload(ss))
	s.sessions[ss.id] = ss
	s.sessionVer++
	s.mu.Unlock()

	s.cfg.logger.Info("discordtest: identify", "shard", shard, "shards", shards, "bucket", bucket,
		"session", ss.id, "intents", intents)
	threshold := id.LargeThreshold
	if threshold == 0 {
		threshold = 50
	}
	large := s.cfg.membersPerGuild > threshold
	for g := s.firstGuild(ss.shard, ss.shards); g < s.cfg.guilds; g += ss.shards {
		if !ss.append("GUILD_CREATE", s.guildCreate(g, large)) {
			return false
		}
	}
	ss.markInitial()
	return true
}

// exhausted does what Discord does when the session start limit runs out:
// every session ends and the token is reset.
func (s *Server) exhausted() {
	s.mu.Lock()
	s.token = makeToken(s.cfg.applicationID) + strconv.FormatInt(time.Now().UnixNano(), 36)
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	sessions := s.sessions
	s.sessions = map[string]*session{}
	s.sessionVer++
	s.mu.Unlock()
	for _, ss := range sessions {
		if ss.end() {
			s.mu.Lock()
			s.stats.sessionsEnded[SessionEndedStartLimit]++
			s.mu.Unlock()
		}
	}
	for _, c := range conns {
		c.close(CloseAuthenticationFailed, "Session start limit exhausted; token reset.")
	}
}

// sweepLocked forgets sessions that can no longer be resumed.
func (s *Server) sweepLocked(now time.Time) {
	for id, ss := range s.sessions {
		if ss.expired(now, s.cfg.resumeWindow) {
			delete(s.sessions, id)
			s.sessionVer++
			if ss.end() {
				s.stats.sessionsEnded[SessionEndedExpired]++
			}
		}
	}
}

// guildsOf counts the guilds shard owns out of shards.
func (s *Server) guildsOf(shard, shards int) int {
	n := 0
	for g := s.firstGuild(shard, shards); g < s.cfg.guilds; g += shards {
		n++
	}
	return n
}

// firstGuild is the lowest guild index owned by shard.
func (s *Server) firstGuild(shard, shards int) int {
	return ((shard-guildBase)%shards + shards) % shards
}

func (s *Server) readyPayload(ss *session) []byte {
	b := make([]byte, 0, 512+64*s.guildsOf(ss.shard, ss.shards))
	b = append(b, `{"v":10,"user":`...)
	b = s.appendSelf(b)
	// private_channels is no longer in Discord's documentation, but
	// Discord still sends it (empty for bots) and libraries read it.
	b = append(b, `,"private_channels":[]`...)
	b = append(b, `,"guilds":[`...)
	first := true
	for g := s.firstGuild(ss.shard, ss.shards); g < s.cfg.guilds; g += ss.shards {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, `{"id":`...)
		b = appendID(b, guildID(g))
		b = append(b, `,"unavailable":true}`...)
	}
	b = append(b, `],"session_id":"`...)
	b = append(b, ss.id...)
	b = append(b, `","resume_gateway_url":"`...)
	b = append(b, s.ResumeURL()...)
	b = append(b, `","shard":[`...)
	b = strconv.AppendInt(b, int64(ss.shard), 10)
	b = append(b, ',')
	b = strconv.AppendInt(b, int64(ss.shards), 10)
	b = append(b, `],"application":{"id":`...)
	b = appendID(b, s.cfg.applicationID)
	b = append(b, `,"flags":0}}`...)
	return b
}

// resumeSession handles op 6; false means the connection is closing.
func (c *conn) resumeSession(raw json.RawMessage) bool {
	s := c.s
	var rd resumeData
	if err := json.Unmarshal(raw, &rd); err != nil {
		c.fail(CloseDecodeError, "Error while decoding payload.", "decode_error")
		return false
	}
	if !s.checkToken(rd.Token) {
		c.fail(CloseAuthenticationFailed, "Authentication failed.", "authentication_failed")
		return false
	}
	now := time.Now()
	s.mu.Lock()
	ss := s.sessions[rd.SessionID]
	why := "unknown"
	if ss != nil {
		why = ss.refusal(rd.Seq, now, s.cfg.resumeWindow)
		if why == "" && s.refuseResumeLocked(ss.shard) {
			why = SessionEndedResumeRefused
		}
	}
	if why == "" {
		s.stats.resumes++
		if c.resume {
			s.stats.resumeURL++
		}
	} else {
		s.stats.resumesRefused++
	}
	s.mu.Unlock()
	if why != "" {
		s.cfg.logger.Info("discordtest: resume refused", "session", rd.SessionID, "seq", rd.Seq, "why", why)
		// Discord answers a failed RESUME with op 9 d=false: the
		// session is gone, whatever the reason it could not go on.
		if ss != nil && why != "ended" {
			s.endSession(ss, why)
		}
		c.sendJSON([]byte(`{"op":9,"d":false,"s":null,"t":null}`))
		return true
	}
	s.cfg.logger.Info("discordtest: resume", "shard", ss.shard, "session", ss.id, "seq", rd.Seq, "resume_url", c.resume)
	c.attached.Store(ss)
	old, ok := ss.attach(c, rd.Seq)
	if !ok {
		// The client left while its RESUME was held: the session stays
		// where it was, resumable.
		c.attached.Store(nil)
		return false
	}
	c.shard.Store(int64(ss.shard))
	if old != nil && old != c {
		// A second RESUME of a live session takes it over; the older
		// connection is closed and the session goes on here.
		old.close(CloseUnknownError, "Session resumed elsewhere.")
	}
	return ss.append("RESUMED", []byte(`{}`))
}
