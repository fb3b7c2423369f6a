package discordtest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Server is a Discord gateway and REST API on a loopback port. It is safe
// for concurrent use. Close stops every goroutine it started.
type Server struct {
	cfg      *config
	ln       net.Listener
	http     *http.Server
	url      string // http://127.0.0.1:port
	wsURL    string // ws://127.0.0.1:port
	upgrader upgrader
	rest     *restState
	world    *world

	wg sync.WaitGroup // counts connection handlers and load generators

	mu         sync.Mutex // guards every field below
	closed     bool
	token      string
	conns      map[*conn]struct{}
	sessions   map[string]*session
	sessionVer int // bumped when a session starts or ends
	identifies []Identify
	bucketLast map[int]time.Time
	held       map[int][]heldRequest // held shards and their parked handshakes
	refuse     map[int]int           // RESUMEs to refuse, by shard
	starts     int                   // session starts used in the current period
	startsAt   time.Time
	stats      counters
}

// counters are the gateway counters behind Stats; guarded by Server.mu.
type counters struct {
	connections    int
	resumes        int
	resumeURL      int
	resumesRefused int
	violations     map[string]int
	eventsSent     map[int]int64 // by shard id, for connections that ended
	sessionsEnded  map[string]int
}

// Identify records one IDENTIFY the server accepted or refused for the
// identify limit.
type Identify struct {
	Shard, Shards int
	Bucket        int       // Shard % max_concurrency
	At            time.Time // when the server read it
	Violation     bool      // it came too early for its bucket and was refused
}

// Stats is a snapshot of the server's counters.
type Stats struct {
	Connections     int // accepted in all
	OpenConnections int
	Sessions        int // live sessions, connected or resumable
	Identifies      int // accepted IDENTIFYs (READY sent)
	Resumes         int // accepted RESUMEs
	ResumesViaURL   int // of those, how many came in on resume_gateway_url
	ResumesRefused  int
	// Violations counts rule breaks by kind: identify_concurrency,
	// session_start_limit, command_rate, payload_too_large, decode_error,
	// unknown_opcode, not_authenticated, already_authenticated,
	// authentication_failed, invalid_shard, sharding_required,
	// invalid_intents, disallowed_intents, heartbeat_timeout.
	Violations map[string]int
	// EventsSent counts dispatches written to connections, by shard id.
	EventsSent map[int]int64
	// SessionsEnded counts sessions that ended, by why (the
	// SessionEnded* constants; server closes as "close_" and the code).
	// Sessions lost when the server closes are not counted.
	SessionsEnded map[string]int
	// ReadySessions counts the connected sessions whose READY and every
	// GUILD_CREATE that follows it have been written to the connection.
	ReadySessions int
	// ReadyShards is ReadySessions by shard id (sessions of any shard
	// count).
	ReadyShards map[int]int
	// SessionStartsRemaining is session_start_limit.remaining.
	SessionStartsRemaining int
	REST                   RESTStats
}

// TotalEventsSent sums EventsSent.
func (st Stats) TotalEventsSent() int64 {
	var n int64
	for _, v := range st.EventsSent {
		n += v
	}
	return n
}

// NewServer starts a simulator on 127.0.0.1 with a random port. It panics
// if an option is invalid or the port cannot be opened: like
// httptest.NewServer it is meant for tests and tools.
func NewServer(opts ...Option) *Server {
	s, err := Start(opts...)
	if err != nil {
		panic(err)
	}
	return s
}

// Start is NewServer returning an error instead of panicking, for
// long-running tools such as cmd/fakediscord.
func Start(opts ...Option) (*Server, error) {
	return StartAt("127.0.0.1:0", opts...)
}

// StartAt is Start on a given address.
func StartAt(addr string, opts ...Option) (*Server, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("discordtest: listen: %w", err)
	}
	s := &Server{
		cfg:        cfg,
		ln:         ln,
		url:        "http://" + ln.Addr().String(),
		wsURL:      "ws://" + ln.Addr().String(),
		token:      cfg.token,
		conns:      map[*conn]struct{}{},
		sessions:   map[string]*session{},
		bucketLast: map[int]time.Time{},
		startsAt:   time.Now(),
		stats:      counters{violations: map[string]int{}, eventsSent: map[int]int64{}, sessionsEnded: map[string]int{}},
	}
	s.upgrader = newUpgrader()
	s.rest = newRESTState(cfg)
	s.world = newWorld()
	mux := http.NewServeMux()
	mux.HandleFunc("/", s.serveGateway)
	mux.HandleFunc("/resume", s.serveGateway)
	mux.HandleFunc("/api/", s.serveREST)
	// ReadTimeout bounds a REST request until its handler answers (net/http
	// cancels a request whose read deadline passes); gateway connections
	// clear it when they upgrade.
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute,
		IdleTimeout: 2 * time.Minute, ErrorLog: nil}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = s.http.Serve(ln)
	}()
	return s, nil
}

// GatewayURL is the gateway's address, for disgo's gateway.WithURL. It has
// no query: clients add ?v=10&encoding=json themselves.
func (s *Server) GatewayURL() string { return s.wsURL }

// ResumeURL is the resume_gateway_url sent in READY.
func (s *Server) ResumeURL() string { return s.wsURL + "/resume" }

// RESTURL is the REST API base, for disgo's rest.WithURL.
func (s *Server) RESTURL() string { return s.url + "/api/v10" }

// Addr is the host:port the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Token is the bot token the server accepts. It changes when the session
// start limit is exhausted, as Discord resets a token then.
func (s *Server) Token() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.token
}

// ApplicationID is the bot's user and application ID.
func (s *Server) ApplicationID() uint64 { return s.cfg.applicationID }

// Guilds is the number of guilds the bot is in.
func (s *Server) Guilds() int { return s.cfg.guilds }

// RecommendedShards is the shard count GET /gateway/bot returns.
func (s *Server) RecommendedShards() int {
	if s.cfg.recommendedShards > 0 {
		return s.cfg.recommendedShards
	}
	n := max(1, (s.cfg.guilds+999)/1000)
	if m := s.cfg.shardMultiple; m > 0 {
		n = (n + m - 1) / m * m
	}
	return n
}

// MaxConcurrency is session_start_limit.max_concurrency.
func (s *Server) MaxConcurrency() int { return s.cfg.maxConcurrency }

// IdentifyWindow is how long a bucket stays taken after an IDENTIFY.
func (s *Server) IdentifyWindow() time.Duration { return s.cfg.identifyWindow }

// Close closes the listener and every connection, and returns when every
// goroutine the server started has ended. Sessions are lost.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	sessions := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	_ = s.http.Close()
	for _, c := range conns {
		c.close(closeDrop, "")
	}
	for _, ss := range sessions {
		ss.end()
	}
	s.wg.Wait()
	s.rest.close()
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	st := Stats{
		Connections:     s.stats.connections,
		OpenConnections: len(s.conns),
		Sessions:        len(s.sessions),
		Resumes:         s.stats.resumes,
		ResumesViaURL:   s.stats.resumeURL,
		ResumesRefused:  s.stats.resumesRefused,
		Violations:      make(map[string]int, len(s.stats.violations)),
		EventsSent:      make(map[int]int64, len(s.stats.eventsSent)),
		SessionsEnded:   make(map[string]int, len(s.stats.sessionsEnded)),
		ReadyShards:     map[int]int{},
	}
	for k, v := range s.stats.sessionsEnded {
		st.SessionsEnded[k] = v
	}
	for _, ss := range s.sessions {
		if ss.ready() {
			st.ReadySessions++
			st.ReadyShards[ss.shard]++
		}
	}
	for _, id := range s.identifies {
		if !id.Violation {
			st.Identifies++
		}
	}
	for k, v := range s.stats.violations {
		st.Violations[k] = v
	}
	for k, v := range s.stats.eventsSent {
		st.EventsSent[k] = v
	}
	for c := range s.conns {
		if n := c.eventsSent.Load(); n > 0 {
			st.EventsSent[c.shardID()] += n
		}
	}
	st.SessionStartsRemaining = s.remainingStartsLocked(time.Now())
	s.mu.Unlock()
	st.REST = s.rest.stats()
	return st
}

// Identifies returns every IDENTIFY the server has judged, in order.
func (s *Server) Identifies() []Identify {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.identifies)
}

// ResetCounters zeroes the gateway and REST counters (not the session
// start limit), so a test can measure one phase.
func (s *Server) ResetCounters() {
	s.mu.Lock()
	s.identifies = nil
	s.stats = counters{violations: map[string]int{}, eventsSent: map[int]int64{}, sessionsEnded: map[string]int{}}
	for c := range s.conns {
		c.eventsSent.Store(0)
	}
	s.mu.Unlock()
	s.rest.reset()
}

func (s *Server) violation(kind string) {
	s.mu.Lock()
	s.stats.violations[kind]++
	s.mu.Unlock()
	s.cfg.logger.Warn("discordtest: violation", "kind", kind)
}

func (s *Server) remainingStartsLocked(now time.Time) int {
	if now.Sub(s.startsAt) >= s.cfg.sessionReset {
		s.starts, s.startsAt = 0, now
	}
	return s.cfg.sessionStarts - s.starts
}

func newSessionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
