package shardgroup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/gateway"
	"github.com/gorilla/websocket"
)

// State is a shard's or a group's lifecycle state.
type State int32

// The states, in the order a healthy shard passes through them.
const (
	StateIdle State = iota
	StateConnecting
	StateIdentifying
	StateResuming
	StateReady
	StateDisconnected
	StateStopped
)

var stateNames = [...]string{"idle", "connecting", "identifying", "resuming", "ready", "disconnected", "stopped"}

// MarshalText writes the state's name, so JSON and logs show it.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a state's name.
func (s *State) UnmarshalText(b []byte) error {
	for st := StateIdle; st <= StateStopped; st++ {
		if st.String() == string(b) {
			*s = st
			return nil
		}
	}
	return fmt.Errorf("shardgroup: unknown state %q", b)
}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// IdentifyLimiter spaces IDENTIFYs by Discord's rule. It is disgo's
// sharding.RateLimiter: WaitBucket before an IDENTIFY is sent,
// UnlockBucket when its READY arrives, or when the connection ends first
// (closed by this side, once the gateway answered the close frame, which
// it reads after the IDENTIFY, or after a second without an answer).
type IdentifyLimiter interface {
	WaitBucket(ctx context.Context, shardID int) error
	UnlockBucket(shardID int)
}

// A TurnReserver is an IdentifyLimiter whose turns can be reserved before
// a shard dials (natsfleet's IdentifyQueue is one). A shard that will
// IDENTIFY reserves its turn first and dials once ReserveTurn returns,
// when its turn is the bucket's next; its WaitBucket then waits for that
// turn. So at a fleet's start only the first turns' shards dial, rather
// than one per bucket in every process, and the first IDENTIFYs do not
// wait behind the others' handshakes. The reservations pace the dials:
// a Pacer is not used with a TurnReserver, and every shard of a group
// reserves at once, so that a queue can give a process's shards of a
// bucket consecutive turns (natsfleet's does).
type TurnReserver interface {
	IdentifyLimiter
	// ReserveTurn takes the shard's place in its bucket's order and
	// returns once its turn is the next one. The context it returns
	// carries the reservation: the shard's WaitBucket under it (or under
	// a context derived from it) waits for the reserved turn. The func
	// gives the turn up if no WaitBucket took it; the shard calls it when
	// its connection ends. If ctx ends first, the turn is given up and
	// the error returned.
	ReserveTurn(ctx context.Context, shardID int) (context.Context, func(), error)
}

// CloseError is a close the gateway sent that ends the shard: an
// authentication failure, an invalid shard, sharding required, an invalid
// API version or invalid or disallowed intents.
type CloseError struct {
	Shard  int
	Code   int
	Reason string
}

func (e *CloseError) Error() string {
	return fmt.Sprintf("shard %d: gateway closed with %d (%s): %s", e.Shard, e.Code, closeName(e.Code), e.Reason)
}

func closeName(code int) string {
	switch code {
	case 4004:
		return "authentication failed: check the bot token"
	case 4010:
		return "invalid shard: the shard ID or count is wrong"
	case 4011:
		return "sharding required: use more shards"
	case 4012:
		return "invalid API version"
	case 4013:
		return "invalid intents"
	case 4014:
		return "disallowed intents: enable the privileged intents in the developer portal or remove them"
	}
	return "close"
}

// fatalClose reports whether a close code must not be retried.
func fatalClose(code int) bool {
	switch code {
	case 4004, 4010, 4011, 4012, 4013, 4014:
		return true
	}
	return false
}

// Session is what a shard needs to RESUME elsewhere.
type Session struct {
	ShardID    int       `json:"shard_id"`
	ShardCount int       `json:"shard_count"`
	SessionID  string    `json:"session_id"`
	Sequence   int       `json:"sequence"`
	ResumeURL  string    `json:"resume_url"`
	SavedAt    time.Time `json:"saved_at"`
}

// resumableClose is the close code a shard uses when its session must
// survive (any code but 1000 and 1001 keeps it; disgo uses the same).
const resumableClose = websocket.CloseServiceRestart

// shard is one gateway connection's owner. It implements disgo's
// gateway.Gateway so that the group's bot.Client can use it, but its
// goroutines are owned: run returns only when they have all ended.
type shard struct {
	g     *Group
	id    int
	count int
	token string
	log   *slog.Logger

	state         atomic.Int32
	pendingGuilds atomic.Int64 // guilds listed in READY not yet created
	latency       atomic.Int64
	events        atomic.Int64
	zombies       atomic.Int64 // connections closed for want of heartbeat ACKs

	mu       sync.Mutex // guards the fields below
	session  Session    // session id, last sequence, resume URL
	conn     *websocket.Conn
	writeMu  sync.Mutex // serialises writes to conn (taken after mu is released)
	presence *gateway.MessageDataPresenceUpdate
	sends    []time.Time // command times for the 120/60 s limit

	holding atomic.Bool                 // an identify bucket is taken
	closing atomic.Bool                 // the connection is closing: what it still reads is dropped
	pacing  atomic.Bool                 // a place of the Pacer is taken
	hb      atomic.Pointer[heartbeater] // the connection's, while it runs

	// Owned by the run goroutine (run, connect, serve):
	resuming     bool      // the current connection RESUMEs a session
	attemptAt    time.Time // when the current connection was dialled
	answered     bool      // the current connection received a dispatch
	resumeFails  int       // resume attempts in a row that got no dispatch
	failingSince time.Time // when the first of them ended
	dialFails    int       // dial failures since the last warning
	dialWarned   time.Time // when the last dial warning was logged
	// answer is closed when the IDENTIFY sent on the current connection
	// is answered with READY; nil when none is outstanding. Guarded by mu.
	answer chan struct{}
	in     *inflater // transport decompression; used by run's goroutine only

	stop     chan struct{} // closed to stop the shard
	hurry    chan struct{} // closed when the stop's ctx has ended: wait for nothing more
	hurryOne sync.Once
	stopCode int           // close code to use when stopping; set before stop closes
	done     chan struct{} // closed when run returns
	err      error         // why run returned; read after done
}

func (s *shard) ShardID() int    { return s.id }
func (s *shard) ShardCount() int { return s.count }
func (s *shard) SessionID() *string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.session.SessionID == "" {
		return nil
	}
	id := s.session.SessionID
	return &id
}
func (s *shard) LastSequenceReceived() *int {
	s.mu.Lock()
	defer s.mu.Unlock()
	seq := s.session.Sequence
	return &seq
}
func (s *shard) Intents() gateway.Intents { return s.g.cfg.Intents }
func (s *shard) Status() gateway.Status {
	switch State(s.state.Load()) {
	case StateConnecting:
		return gateway.StatusConnecting
	case StateIdentifying:
		return gateway.StatusIdentifying
	case StateResuming:
		return gateway.StatusResuming
	case StateReady:
		return gateway.StatusReady
	case StateDisconnected, StateStopped:
		return gateway.StatusDisconnected
	}
	return gateway.StatusUnconnected
}
func (s *shard) Latency() time.Duration { return time.Duration(s.latency.Load()) }
func (s *shard) Presence() *gateway.MessageDataPresenceUpdate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.presence
}

// Open and Close belong to the group's Runner, which runs and stops
// shards; they are here for disgo's interface and do nothing, so that a
// listener cannot wait for its own shard to stop.
func (s *shard) Open(context.Context) error { return nil }
func (s *shard) Close(context.Context)      { s.g.refuseClose("Gateway.Close", s.id) }
func (s *shard) CloseWithCode(context.Context, int, string) {
	s.g.refuseClose("Gateway.CloseWithCode", s.id)
}

// Send writes a gateway command within Discord's limit of 120 payloads
// per connection per 60 s, which counts every payload: two slots are
// kept for heartbeats and the IDENTIFY or RESUME takes one, so 117
// commands go in the handshake's minute and 118 in any later one.
func (s *shard) Send(ctx context.Context, op gateway.Opcode, d gateway.MessageData) error {
	data, err := json.Marshal(gateway.Message{Op: op, D: d})
	if err != nil {
		return err
	}
	if p, ok := d.(gateway.MessageDataPresenceUpdate); ok {
		s.mu.Lock()
		s.presence = &p
		s.mu.Unlock()
	}
	for {
		wait := s.reserveSend(s.g.clock.Now())
		if wait == 0 {
			break
		}
		t := s.g.clock.NewTimer(wait)
		select {
		case <-t.C():
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
	return s.write(data)
}

// reserveSend takes a command slot or says how long to wait for one.
func (s *shard) reserveSend(now time.Time) time.Duration {
	const limit, window = 118, time.Minute
	s.mu.Lock()
	defer s.mu.Unlock()
	i := 0
	for i < len(s.sends) && now.Sub(s.sends[i]) >= window {
		i++
	}
	s.sends = s.sends[i:]
	if len(s.sends) >= limit {
		return window - now.Sub(s.sends[0])
	}
	s.sends = append(s.sends, now)
	return 0
}

func (s *shard) write(data []byte) error {
	s.mu.Lock()
	c := s.conn
	s.mu.Unlock()
	if c == nil {
		return discord.ErrShardNotConnected
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return c.WriteMessage(websocket.TextMessage, data)
}

func (s *shard) setState(st State) {
	old := State(s.state.Swap(int32(st)))
	if old != st {
		s.g.shardState(s, old, st)
	}
}

// run connects, serves and reconnects until the shard is stopped or a
// fatal close ends it. It returns the fatal error, or nil.
func (s *shard) run(ctx context.Context) {
	defer close(s.done)
	defer s.setState(StateStopped)
	if s.g.cfg.Await != nil {
		s.setState(StateConnecting)
		s.await(ctx)
	}
	backoff := time.Duration(0)
	for {
		select {
		case <-s.stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		s.setState(StateConnecting)
		err := s.connect(ctx)
		var ce *CloseError
		if errors.As(err, &ce) {
			// The state is final before any hook hears of it, so that an
			// observer woken by the hook sees the shard stopped.
			s.err = ce
			s.setState(StateStopped)
			s.g.shardFatal(s, ce)
			return
		}
		select {
		case <-s.stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		s.setState(StateDisconnected)
		if err != nil {
			s.log.Debug("shard disconnected", "err", err)
		}
		s.dialFailed(err)
		s.resumeFailed(err)
		if errors.Is(err, errDial) || errors.Is(err, errTurn) {
			backoff = min(max(2*backoff, 100*time.Millisecond), 30*time.Second)
		} else {
			backoff = 0
		}
		if backoff > 0 {
			t := time.NewTimer(backoff + rand.N(backoff/4+1))
			select {
			case <-t.C:
			case <-s.stop:
				t.Stop()
				return
			case <-ctx.Done():
				t.Stop()
				return
			}
		}
	}
}

var errDial = errors.New("dial gateway")

// A session whose RESUME fails this many times in a row, or for this
// long, is dropped: the shard identifies anew through the queue.
const (
	maxResumeFailures = 5
	maxResumeFailing  = 30 * time.Second
)

// dialWarnEvery spaces a shard's warnings about failed dials, so that a
// dead gateway does not flood the log.
const dialWarnEvery = 30 * time.Second

// dialFailed warns that the gateway could not be reached, with the cause,
// at most once per dialWarnEvery (saying how many failures it stands
// for).
func (s *shard) dialFailed(err error) {
	if !errors.Is(err, errDial) {
		s.dialFails = 0
		return
	}
	s.dialFails++
	if now := time.Now(); now.Sub(s.dialWarned) >= dialWarnEvery {
		s.log.Warn("gateway dial failed: retrying", "err", err.Error(), "failures", s.dialFails)
		s.dialWarned, s.dialFails = now, 0
	}
}

// resumeFailed counts a connection that tried to RESUME and ended before
// any dispatch came (a resume URL that does not answer, a RESUME the
// gateway closes or answers with op 9 d=true). After maxResumeFailures in
// a row, or maxResumeFailing, the session is dropped and the shard
// identifies: an unusable session must not wedge its shard, nor be handed
// over or saved as if it were live.
func (s *shard) resumeFailed(err error) {
	if !s.resuming || s.answered {
		s.resumeFails = 0
		return
	}
	now := time.Now()
	if s.resumeFails == 0 {
		s.failingSince = s.attemptAt
	}
	s.resumeFails++
	if s.resumeFails < maxResumeFailures && now.Sub(s.failingSince) < maxResumeFailing {
		return
	}
	cause := "none"
	if err != nil {
		cause = err.Error()
	}
	s.log.Warn("session cannot be resumed: identifying anew", "attempts", s.resumeFails, "err", cause)
	s.resumeFails = 0
	s.forgetSession()
}

// connect runs one connection from dial to close.
func (s *shard) connect(ctx context.Context) error {
	s.mu.Lock()
	sess := s.session
	s.mu.Unlock()
	resume := sess.SessionID != ""
	s.resuming, s.answered, s.attemptAt = resume, false, time.Now()
	url := s.g.cfg.GatewayURL
	dialTimeout := 30 * time.Second
	if resume && sess.ResumeURL != "" {
		url = sess.ResumeURL
		dialTimeout = 10 * time.Second // a dead resume URL is given up sooner
	}
	if s.in == nil {
		s.in = newInflater(s.g.cfg.Compression)
	}
	if err := s.in.reset(); err != nil {
		return err
	}
	tr, reserves := s.g.cfg.IdentifyLimiter.(TurnReserver)
	if p := s.g.cfg.Pacer; p != nil && !resume && !reserves {
		// A connection that will IDENTIFY dials once its bucket has a
		// place; it holds it until its turn is granted or it ends.
		// Reserved turns pace the dials themselves (see TurnReserver).
		if err := p.wait(ctx, s.stop, s.id); err != nil {
			return err
		}
		s.pacing.Store(true)
		defer s.unpace()
	}
	if reserves && !resume {
		// The connection lives on the reservation's context, which
		// carries it to WaitBucket.
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		rctx, giveUp, err := s.reserveTurn(ctx, cancel, tr)
		if err != nil {
			return err
		}
		defer giveUp() // the turn, if WaitBucket did not take it
		ctx = rctx
	}
	compress, _ := s.g.cfg.Compression.query()
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	c, resp, err := s.g.dialer.DialContext(dctx, url+"?v=10&encoding=json"+compress, http.Header{})
	cancel()
	if resp != nil && resp.Body != nil {
		_ = resp.Body.Close()
	}
	if err != nil {
		return fmt.Errorf("%w: %v", errDial, err)
	}
	s.closing.Store(false)
	s.mu.Lock()
	s.conn = c
	s.sends = s.sends[:0]
	s.mu.Unlock()

	// A stop closes the socket, which ends the read loop below, and
	// cancels cctx, which ends a wait for the identify queue.
	cctx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	var watch, identifying sync.WaitGroup
	watch.Add(1)
	go func() {
		defer watch.Done()
		select {
		case <-s.stop:
			cancel() // an IDENTIFY still waiting for the queue is not sent
			s.closeConn(c, s.awaitReady(stopped))
		case <-ctx.Done():
			s.closeConn(c, websocket.CloseNormalClosure)
		case <-stopped:
		}
	}()
	hb := &heartbeater{s: s, c: c, stop: make(chan struct{})}
	s.hb.Store(hb)
	defer func() {
		s.hb.Store(nil)
		cancel()
		identifying.Wait()
		s.releaseBucket()
		close(stopped)
		close(hb.stop)
		watch.Wait()
		hb.wg.Wait()
		s.mu.Lock()
		s.conn = nil
		s.answer = nil
		s.mu.Unlock()
		_ = c.Close()
	}()
	return s.serve(cctx, c, hb, resume, sess, &identifying)
}

// errTurn marks a connection that ended before its dial because its
// identify turn could not be reserved; the shard retries with the dial's
// back-off.
var errTurn = errors.New("reserve identify turn")

// reserveTurn waits until the shard's reserved identify turn is the
// bucket's next, or the shard is stopped (then cancel ends ctx, and it
// returns errStopped) or ctx ends; it returns ReserveTurn's context and
// func.
func (s *shard) reserveTurn(ctx context.Context, cancel context.CancelFunc, tr TurnReserver) (context.Context, func(), error) {
	ended := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		select {
		case <-s.stop:
			cancel()
		case <-ended:
		}
	})
	rctx, giveUp, err := tr.ReserveTurn(ctx, s.id)
	close(ended)
	watch.Wait()
	if err != nil {
		select {
		case <-s.stop:
			return nil, nil, errStopped
		default:
		}
		return nil, nil, fmt.Errorf("%w: %v", errTurn, err)
	}
	return rctx, giveUp, nil
}

// awaitReady returns the code to close with when the shard is stopped.
// A stop that keeps sessions (a hand-over) and finds an IDENTIFY sent but
// not answered waits for its READY, up to readyWait, so that the session
// it starts is handed over rather than left live on the gateway with
// nobody reading it (and a second IDENTIFY spent on the shard). If the
// READY does not come in time (or the ctx of Stop ends first) the
// connection closes with 1000, so that a session the gateway starts from
// it late ends at once.
func (s *shard) awaitReady(ended <-chan struct{}) int {
	s.mu.Lock()
	answer, code := s.answer, s.stopCode
	s.mu.Unlock()
	if answer == nil || code == websocket.CloseNormalClosure {
		return code
	}
	t := time.NewTimer(readyWait)
	defer t.Stop()
	select {
	case <-answer:
		return code
	case <-ended:
		return code
	case <-s.hurry:
		return websocket.CloseNormalClosure
	case <-t.C:
		s.log.Warn("stopping shard: its IDENTIFY was not answered in time", "wait", readyWait)
		return websocket.CloseNormalClosure
	}
}

// hurryUp ends a stop's waits at once: the ctx of Stop has ended.
func (s *shard) hurryUp() { s.hurryOne.Do(func() { close(s.hurry) }) }

// readyWait bounds how long a hand-over waits for the READY of an
// IDENTIFY already sent.
const readyWait = 5 * time.Second

// closeConn sends a close frame with code and closes the socket. With an
// IDENTIFY out and no READY yet, it leaves the socket to the read loop
// for up to closeWait: the gateway reads that IDENTIFY before the close
// frame and answers the frame once it has, and the read loop ends on the
// answer. Only then is the identify bucket given back, so that the
// bucket's next IDENTIFY counts from when this one was surely read, not
// from when it was sent.
func (s *shard) closeConn(c *websocket.Conn, code int) {
	s.writeMu.Lock()
	_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), time.Now().Add(time.Second))
	s.writeMu.Unlock()
	if s.holding.Load() {
		s.closing.Store(true)
		_ = c.SetReadDeadline(time.Now().Add(closeWait))
		return
	}
	_ = c.Close()
}

// closeWait bounds how long a connection closed with an unanswered
// IDENTIFY waits for the gateway's answer to its close frame.
const closeWait = time.Second

// serve reads the connection until it ends.
//
// The IDENTIFY waits for the identify queue on a goroutine of its own
// (counted by identifying), so that the connection is read meanwhile:
// heartbeats are acknowledged and a close is seen however long the wait.
func (s *shard) serve(ctx context.Context, c *websocket.Conn, hb *heartbeater, resume bool, sess Session, identifying *sync.WaitGroup) error {
	var buf bytes.Buffer // reused for every frame: the decoder copies what it keeps
	leave := ""          // why to reconnect once the outstanding IDENTIFY is answered
	for {
		mt, r, err := c.NextReader()
		if err == nil {
			buf.Reset()
			_, err = buf.ReadFrom(r)
		}
		data := buf.Bytes()
		if err == nil {
			data, err = s.in.inflate(mt, data)
		}
		if err != nil {
			var ce *websocket.CloseError
			if s.closing.Load() {
				return err // the gateway's answer to this side's close, or none in time
			}
			if errors.As(err, &ce) {
				s.g.closeSeen(s, ce.Code)
				if fatalClose(ce.Code) {
					return &CloseError{Shard: s.id, Code: ce.Code, Reason: ce.Text}
				}
				if ce.Code == 4007 || ce.Code == 4009 || ce.Code == 4003 || ce.Code == 4005 {
					s.forgetSession()
				}
			}
			return err
		}
		if data == nil || s.closing.Load() {
			continue // a zlib payload continues in the next message, or the connection is closing
		}
		m, err := decodeMessage(data) // m.RawD shares buf: valid until the next frame
		if err != nil {
			s.log.Warn("undecodable gateway payload", "err", err)
			continue
		}
		switch m.Op {
		case gateway.OpcodeHello:
			hello, _ := m.D.(gateway.MessageDataHello)
			hb.start(time.Duration(hello.HeartbeatInterval) * time.Millisecond)
			if resume {
				s.setState(StateResuming)
				err = s.sendNow(gateway.OpcodeResume, gateway.MessageDataResume{Token: s.token, SessionID: sess.SessionID, Seq: sess.Sequence})
			} else {
				identifying.Add(1)
				go func() {
					defer identifying.Done()
					if err := s.identify(ctx); err != nil && ctx.Err() == nil {
						s.log.Warn("identify failed: reconnecting", "err", err)
						s.closeConn(c, resumableClose)
					}
				}()
			}
			if err != nil {
				return err
			}
		case gateway.OpcodeDispatch:
			s.answered = true
			s.dispatch(ctx, m, data)
			if m.T == gateway.EventTypeReady {
				s.mu.Lock()
				if s.answer != nil {
					close(s.answer)
					s.answer = nil
				}
				s.mu.Unlock()
				if s.g.cfg.StopAtReady != nil && !resume {
					return s.stopAtReady(c, data)
				}
			}
		case gateway.OpcodeHeartbeat:
			hb.beat()
		case gateway.OpcodeHeartbeatACK:
			hb.ack()
		case gateway.OpcodeReconnect:
			if s.leaveAfterReady(c, &leave, "reconnect requested") {
				continue
			}
			s.closeConn(c, resumableClose)
			return errors.New("reconnect requested")
		case gateway.OpcodeInvalidSession:
			ok, _ := m.D.(gateway.MessageDataInvalidSession)
			if bool(ok) && s.leaveAfterReady(c, &leave, "invalid session") {
				continue
			}
			if !ok {
				s.forgetSession()
				s.g.invalidated(s)
			}
			s.closeConn(c, resumableClose)
			return errors.New("invalid session")
		}
		if leave != "" && m.Op == gateway.OpcodeDispatch && m.T == gateway.EventTypeReady {
			s.closeConn(c, resumableClose)
			return errors.New(leave)
		}
	}
}

// leaveAfterReady defers a reconnect the gateway asked for (op 7, or op 9
// that keeps the session) while this connection's IDENTIFY is unanswered:
// the gateway may have started the session already, and leaving before
// its READY would leave that session live with nobody reading it, and
// spend a second IDENTIFY. The connection is read on, for at most
// readyWait, and left once READY has been delivered; the session is then
// resumed. It reports whether it deferred.
func (s *shard) leaveAfterReady(c *websocket.Conn, leave *string, why string) bool {
	s.mu.Lock()
	waiting := s.answer != nil
	s.mu.Unlock()
	if !waiting {
		return false
	}
	if *leave == "" {
		*leave = why
		_ = c.SetReadDeadline(time.Now().Add(readyWait))
	}
	return true
}

func (s *shard) forgetSession() {
	s.mu.Lock()
	s.session = Session{ShardID: s.id, ShardCount: s.count}
	s.mu.Unlock()
	s.g.sessionLost(s)
}

// sendNow writes a command that does not wait for the command limit: a
// heartbeat, which has a slot kept, or the IDENTIFY or RESUME, the
// connection's first command, which is counted in the window.
func (s *shard) sendNow(op gateway.Opcode, d gateway.MessageData) error {
	data, err := json.Marshal(gateway.Message{Op: op, D: d})
	if err != nil {
		return err
	}
	if op != gateway.OpcodeHeartbeat {
		s.mu.Lock()
		s.sends = append(s.sends, s.g.clock.Now())
		s.mu.Unlock()
	}
	return s.write(data)
}

func (s *shard) identify(ctx context.Context) error {
	s.setState(StateIdentifying)
	queued := time.Now()
	err := s.g.cfg.IdentifyLimiter.WaitBucket(ctx, s.id)
	s.unpace() // granted (or given up): the bucket's next shard may dial
	if err != nil {
		return err
	}
	waited := time.Since(queued)
	// A stop cancels ctx before it looks for an IDENTIFY to wait for:
	// under mu, either it sees this one or this one sees the stop.
	s.mu.Lock()
	if err := ctx.Err(); err != nil {
		s.mu.Unlock()
		s.g.cfg.IdentifyLimiter.UnlockBucket(s.id)
		return err
	}
	s.answer = make(chan struct{})
	s.mu.Unlock()
	id := gateway.MessageDataIdentify{
		Token:          s.token,
		Properties:     gateway.IdentifyCommandDataProperties{OS: "linux", Browser: "gofleet", Device: "gofleet"},
		LargeThreshold: s.g.cfg.LargeThreshold,
		Intents:        s.g.cfg.Intents,
		Presence:       s.Presence(),
		Shard:          &[2]int{s.id, s.count},
	}
	// The bucket stays taken until READY (or the connection ends): the
	// gateway has then surely read this IDENTIFY, so the next one of the
	// bucket cannot reach it less than an interval later, whatever the
	// network's jitter.
	s.holding.Store(true)
	err = s.sendNow(gateway.OpcodeIdentify, id)
	if err != nil {
		s.releaseBucket()
		return err
	}
	s.g.identified(s, waited)
	return nil
}

// unpace gives the Pacer's place back, once per connection.
func (s *shard) unpace() {
	if s.pacing.CompareAndSwap(true, false) {
		s.g.cfg.Pacer.release(s.id)
	}
}

// releaseBucket gives the identify bucket back, once per IDENTIFY.
func (s *shard) releaseBucket() {
	if s.holding.CompareAndSwap(true, false) {
		s.g.cfg.IdentifyLimiter.UnlockBucket(s.id)
	}
}

// dispatch hands one event to the group's client, exactly once: the
// sequence is recorded only after delivery, and a hand-over stops the
// read loop before it reads the sequence. An event held by the Deliver
// check until ctx ends is not delivered, and its sequence not recorded.
// frame is the raw payload.
func (s *shard) dispatch(ctx context.Context, m gateway.Message, frame []byte) {
	switch ev := m.D.(type) {
	case gateway.EventReady:
		s.releaseBucket()
		s.mu.Lock()
		s.session = Session{ShardID: s.id, ShardCount: s.count, SessionID: ev.SessionID, Sequence: m.S, ResumeURL: ev.ResumeGatewayURL}
		s.mu.Unlock()
		s.pendingGuilds.Store(int64(len(ev.Guilds)))
		s.setState(StateReady)
		s.g.shardReady(s, len(ev.Guilds), false)
		if len(ev.Guilds) == 0 {
			s.g.guildsLoaded(s)
		}
	case gateway.EventGuildCreate:
		if s.pendingGuilds.Load() > 0 {
			// Counted once the guild is in the cache, so that Loaded
			// (and a hand-over waiting for it) never sees a guild missing.
			defer func() {
				if s.pendingGuilds.Add(-1) == 0 {
					s.g.guildsLoaded(s)
				}
			}()
		}
	default:
		if m.T == gateway.EventTypeResumed {
			s.setState(StateReady)
			s.g.shardReady(s, 0, true)
		}
	}
	s.events.Add(1)
	if !s.g.deliver(ctx, s, m, frame) {
		return
	}
	s.mu.Lock()
	s.session.Sequence = m.S
	s.mu.Unlock()
}

// heartbeater sends heartbeats on one connection and closes it when the
// gateway stops acknowledging them (a zombie connection).
type heartbeater struct {
	s     *shard
	c     *websocket.Conn
	stop  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex // guards sent, acked, sentN, ackN, ackCh
	sent  time.Time
	acked bool
	sentN int64         // heartbeats written (see barrier)
	ackN  int64         // ACKs read
	ackCh chan struct{} // closed at the next ACK; nil until a barrier waits
	once  sync.Once
	kick  chan struct{}
}

func (h *heartbeater) start(interval time.Duration) {
	if interval <= 0 {
		interval = 41250 * time.Millisecond
	}
	h.once.Do(func() {
		h.kick = make(chan struct{}, 1)
		h.acked = true
		h.wg.Add(1)
		go h.loop(interval)
	})
}

func (h *heartbeater) beat() {
	if h.kick == nil {
		return
	}
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

func (h *heartbeater) ack() {
	h.mu.Lock()
	h.acked = true
	h.ackN++
	if h.ackCh != nil {
		close(h.ackCh)
		h.ackCh = nil
	}
	if !h.sent.IsZero() {
		h.s.latency.Store(int64(time.Since(h.sent)))
	}
	h.mu.Unlock()
}

func (h *heartbeater) loop(interval time.Duration) {
	defer h.wg.Done()
	// The first heartbeat waits interval * jitter, as Discord asks.
	t := time.NewTimer(time.Duration(rand.Float64() * float64(interval)))
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
			h.mu.Lock()
			zombie := !h.acked
			h.mu.Unlock()
			if zombie {
				h.s.log.Warn("heartbeat not acknowledged: reconnecting", "shard", h.s.id)
				h.s.zombies.Add(1)
				h.s.g.zombie(h.s)
				h.s.closeConn(h.c, resumableClose)
				return
			}
			t.Reset(interval)
		case <-h.kick:
		}
		h.send()
	}
}

func (h *heartbeater) send() {
	h.s.mu.Lock()
	seq := h.s.session.Sequence
	h.s.mu.Unlock()
	h.mu.Lock()
	h.sent, h.acked = time.Now(), false
	h.sentN++
	h.mu.Unlock()
	if err := h.s.sendNow(gateway.OpcodeHeartbeat, gateway.MessageDataHeartbeat(seq)); err != nil && !errors.Is(err, net.ErrClosed) {
		h.s.log.Debug("heartbeat failed", "err", err)
	}
}
