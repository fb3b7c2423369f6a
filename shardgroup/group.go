package shardgroup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/disgoorg/disgo"
	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/gateway"
	"github.com/disgoorg/disgo/handlers"
	"github.com/disgoorg/disgo/sharding"
	"github.com/disgoorg/snowflake/v2"
	"github.com/gorilla/websocket"

	"github.com/gofleet/fleet/bus"
	fclock "github.com/gofleet/fleet/internal/clock"
)

// Config describes one group, for [New]. Whoever builds the group owns
// it: the [Runner] New returns starts and stops it, and the [Group] it
// hands out is what the group's user code gets.
type Config struct {
	ID         int
	ShardIDs   []int // the shards this group runs
	ShardCount int   // the bot's total
	Token      Token
	GatewayURL string
	Intents    gateway.Intents
	// LargeThreshold is IDENTIFY's large_threshold (default 50).
	LargeThreshold int
	// IdentifyLimiter spaces the shards' IDENTIFYs by Discord's rule; it
	// is required. Share one between every group of a bot (the runtime's
	// IdentifyQueue is one).
	IdentifyLimiter IdentifyLimiter
	ClientOptions   []bot.ConfigOpt // applied to the group's disgo client
	Logger          *slog.Logger
	Presence        *gateway.MessageDataPresenceUpdate
	// Sessions to resume, by shard ID; other shards identify.
	Sessions map[int]Session
	// Gate and Generation reshard a bot's groups (see [CutOver]): a group
	// whose Generation is ahead of the gate's when it is built is a
	// reshard's new generation: it fills its caches but holds events back
	// until CutOver (at most MaxHeld per shard, default DefaultMaxHeld).
	// Nil: the group delivers at once.
	Gate       *Gate
	Generation int64
	MaxHeld    int
	// Bus is what the group's user code calls the fleet's IPC bus with
	// ([Group.Bus]); nil: none. Give it a [bus.Bus.Client], which cannot
	// close the bus or register endpoints.
	Bus bus.Client
	// Hooks tell the group's owner what its shards do.
	Hooks Hooks
	// Deliver, if set, is asked before each gateway event reaches the
	// listeners; false keeps the event from them (the client's caches
	// still take it in): a reshard's new cluster fills its caches before
	// its delivery opens.
	Deliver func() bool
	// Serve, if set, is asked before each gateway event reaches the
	// client (before Deliver). While it answers false the shard holds the
	// event, and reads nothing after it: it asks again every few
	// milliseconds and goes on once the answer is true. A shard stopped
	// while it holds an event closes without delivering it, and its
	// session's sequence stays at the last event delivered, so that
	// whoever resumes the session gets the held event replayed: nothing
	// is lost or delivered twice. An owner whose right to serve the
	// shards is in doubt (a host whose lease on the cluster lapsed, or
	// whose checkpoints fail) thus delivers nothing more until it is sure
	// again, or stops. It must not block.
	Serve func() bool

	// Compression is the gateway transport compression; zero means
	// DefaultCompression.
	Compression Compression

	// Pacer, if set, paces the connections of shards that will IDENTIFY
	// (see [Pacer]); share one between every group of a bot, as the
	// IdentifyLimiter. Nil: every shard connects at once.
	Pacer *Pacer

	// StopAtReady, if set, makes the group open sessions for another
	// group, in this process or another, to resume: each shard stops as
	// soon as it has read the READY of its IDENTIFY, closing with a
	// resumable code so that the session lives on, and StopAtReady gets
	// the session, at the READY's sequence (a RESUME from it replays every
	// event after the READY), and the READY's payload, which the resuming
	// group delivers (see Await). Such a group delivers no event (its
	// Serve and Deliver are not asked, and nothing is held); give it no user code.
	// It runs on the shard's goroutine and must not block.
	StopAtReady func(sess Session, ready []byte)
	// Await, if set, is called by each shard that has no session to
	// resume when it starts, before it connects. It blocks until another
	// group has opened the shard's session (see StopAtReady) and returns
	// it with the payload of its READY (ok), or until that session will
	// not come (!ok: the shard identifies). Its ctx ends when the shard is
	// stopped. A READY payload is delivered to the client before the
	// shard RESUMEs, so that listeners and caches see the READY (self
	// user, guilds to come) as after an IDENTIFY.
	Await func(ctx context.Context, shard int) (sess Session, ready []byte, ok bool)
}

// Hooks let a group's owner observe it. Each may be nil. They run on the
// shard's goroutine and must not block.
type Hooks struct {
	ShardState    func(g *Group, shard int, from, to State)
	ShardReady    func(g *Group, shard, guilds int, resumed bool)
	GuildsLoaded  func(g *Group, shard int)                       // after READY, every listed guild has arrived
	Identify      func(g *Group, shard int, waited time.Duration) // waited: time in the identify queue
	Fatal         func(g *Group, err *CloseError)
	Event         func(g *Group, shard int, t gateway.EventType)
	Close         func(g *Group, shard, code int)
	Zombie        func(g *Group, shard int)
	Invalidated   func(g *Group, shard int)
	ListenerPanic func(g *Group, shard int, v any)
}

// Group is a cluster as its user code sees it: one disgo client and the
// gateway shards it serves, with the cluster's ID, bus and logger. It
// starts, stops and records nothing: that is its [Runner]'s, which only
// the group's owner holds. All its methods are safe for concurrent use,
// from listeners too.
//
// The shards are driven by the group, not by disgo: every goroutine has an
// owner, and a shard's session can be handed over to a new group. The
// client's sharding.ShardManager and gateway.Gateway therefore open and
// close nothing (their Open, Close and CloseShard do nothing; see the
// package documentation).
type Group struct {
	cfg    Config
	client bot.Client
	log    *slog.Logger
	dialer *websocket.Dialer
	shards map[int]*shard    // fixed after New
	deliv  map[int]*delivery // by shard; fixed after New
	em     *eventManager
	ids    []int
	panics atomic.Int64
	clock  fclock.Clock // times the gateway command limit; tests step a fake one
}

// Runner starts, stops and reshards one group: it is the group's
// lifecycle, kept by whoever built it with [New], while the group's user
// code gets only [Runner.Group].
type Runner struct {
	g *Group

	mu       sync.Mutex // guards started
	started  bool
	wg       sync.WaitGroup
	joinOnce sync.Once
	joined   chan struct{} // closed by Done's goroutine once wg is done
}

// New builds a group and its disgo client and returns its runner; nothing
// connects until Start.
func New(cfg Config) (*Runner, error) {
	if cfg.Token == "" {
		return nil, errors.New("shardgroup: Config.Token is empty")
	}
	if len(cfg.ShardIDs) == 0 || cfg.ShardCount < 1 {
		return nil, fmt.Errorf("shardgroup: group %d has no shards (ShardIDs %v, ShardCount %d)", cfg.ID, cfg.ShardIDs, cfg.ShardCount)
	}
	if cfg.IdentifyLimiter == nil {
		return nil, errors.New("shardgroup: Config.IdentifyLimiter is nil")
	}
	if cfg.Compression == "" {
		cfg.Compression = DefaultCompression
	}
	if err := cfg.Compression.validate(); err != nil {
		return nil, err
	}
	if cfg.LargeThreshold == 0 {
		cfg.LargeThreshold = 50
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxHeld <= 0 {
		cfg.MaxHeld = DefaultMaxHeld
	}
	g := &Group{
		cfg:    cfg,
		log:    cfg.Logger.With("cluster", cfg.ID),
		dialer: &websocket.Dialer{HandshakeTimeout: websocket.DefaultDialer.HandshakeTimeout},
		shards: make(map[int]*shard, len(cfg.ShardIDs)),
		deliv:  make(map[int]*delivery, len(cfg.ShardIDs)),
		ids:    slices.Clone(cfg.ShardIDs),
		clock:  fclock.Real{},
	}
	slices.Sort(g.ids)
	standby := cfg.Gate != nil && cfg.Generation > cfg.Gate.Generation()
	for _, id := range g.ids {
		if id < 0 || id >= cfg.ShardCount {
			return nil, fmt.Errorf("shardgroup: shard %d is outside 0..%d", id, cfg.ShardCount-1)
		}
		s := &shard{g: g, id: id, count: cfg.ShardCount, token: string(cfg.Token), log: g.log.With("shard", id),
			presence: cfg.Presence, stop: make(chan struct{}), hurry: make(chan struct{}), done: make(chan struct{})}
		s.session = Session{ShardID: id, ShardCount: cfg.ShardCount}
		if sess, ok := cfg.Sessions[id]; ok && sess.ShardCount == cfg.ShardCount && sess.SessionID != "" {
			s.session = sess
		}
		g.shards[id] = s
		g.deliv[id] = &delivery{maxHeld: cfg.MaxHeld}
		if standby {
			g.deliv[id].mode = modeStandby
		}
	}
	opts := append([]bot.ConfigOpt{bot.WithLogger(g.log), bot.WithShardManager(manager{g})}, cfg.ClientOptions...)
	// The client gets the group's own event manager, built with the
	// listeners and handlers the options give.
	defaults := handlers.GetGatewayHandlers()
	bc := bot.DefaultConfig(defaults, handlers.GetHTTPServerHandler())
	bc.Apply(opts)
	emc := bot.DefaultEventManagerConfig()
	emc.Apply(bc.EventManagerConfigOpts)
	g.em = newEventManager(g, emc, defaults)
	opts = append(opts, bot.WithEventManager(g.em))
	client, err := disgo.New(string(cfg.Token), opts...)
	if err != nil {
		return nil, fmt.Errorf("shardgroup: group %d: build client: %w", cfg.ID, err)
	}
	g.em.client = client
	g.client = client
	return &Runner{g: g}, nil
}

// Group is the group the runner runs: hand it to the group's user code.
func (r *Runner) Group() *Group { return r.g }

// String describes the runner's group (see [Group.String]).
func (r *Runner) String() string {
	if r == nil {
		return "shardgroup.Runner(nil)"
	}
	return r.g.String()
}

// GoString is String, for %#v.
func (r *Runner) GoString() string { return r.String() }

// LogValue is String, for slog.
func (r *Runner) LogValue() slog.Value { return slog.StringValue(r.String()) }

// Gate says which generation of groups is current: a group built with a
// later Generation is a reshard's new generation and starts in standby.
// Its zero value is at generation 0.
type Gate struct {
	gen atomic.Int64
}

// Set moves the gate to gen; groups built afterwards at gen deliver at
// once.
func (g *Gate) Set(gen int64) { g.gen.Store(gen) }

// Generation is the gate's generation.
func (g *Gate) Generation() int64 { return g.gen.Load() }

// Loaded reports whether every shard is ready and has received the
// GUILD_CREATE of every guild its READY listed.
func (g *Group) Loaded() bool {
	for _, s := range g.shards {
		if State(s.state.Load()) != StateReady || s.pendingGuilds.Load() > 0 {
			return false
		}
	}
	return true
}

// ID is the group's cluster ID.
func (g *Group) ID() int { return g.cfg.ID }

// String describes the group without its configuration, so that %v, %+v
// and loggers that format values never print the token.
func (g *Group) String() string {
	if g == nil {
		return "shardgroup.Group(nil)"
	}
	return fmt.Sprintf("shardgroup.Group{id: %d, shards: %v, shard_count: %d}", g.cfg.ID, g.ids, g.cfg.ShardCount)
}

// GoString is String, for %#v.
func (g *Group) GoString() string { return g.String() }

// LogValue is String, for slog.
func (g *Group) LogValue() slog.Value { return slog.StringValue(g.String()) }

// ShardIDs returns the group's shard IDs in order; the slice is a copy.
func (g *Group) ShardIDs() []int { return slices.Clone(g.ids) }

// ShardCount is the fleet's shard count.
func (g *Group) ShardCount() int { return g.cfg.ShardCount }

// Client is the group's disgo client: register listeners on it in Setup.
func (g *Group) Client() bot.Client { return g.client }

// Bus calls the fleet's IPC bus: call services, other clusters and the
// admiral with bus.Request, bus.Gather and the runtime's IPC helpers. It
// cannot close the bus or register endpoints. Nil when the group was
// built without one.
func (g *Group) Bus() bus.Client { return g.cfg.Bus }

// Address is the group's address on the bus.
func (g *Group) Address() bus.Address { return bus.Cluster(g.cfg.ID) }

// Logger carries the group's cluster attribute.
func (g *Group) Logger() *slog.Logger { return g.log }

// ListenerPanics counts panics recovered from listeners.
func (g *Group) ListenerPanics() int64 { return g.panics.Load() }

// ShardInfo is a shard's state at one moment.
type ShardInfo struct {
	ID      int
	State   State
	Latency int64 // heartbeat round trip, ns
	Events  int64
	// Zombies counts the connections closed because the gateway stopped
	// acknowledging heartbeats (each is followed by a reconnect and a
	// RESUME).
	Zombies int64
}

// Shards reports every shard's state.
func (g *Group) Shards() []ShardInfo {
	out := make([]ShardInfo, 0, len(g.ids))
	for _, id := range g.ids {
		s := g.shards[id]
		out = append(out, ShardInfo{ID: id, State: State(s.state.Load()), Latency: s.latency.Load(), Events: s.events.Load(),
			Zombies: s.zombies.Load()})
	}
	return out
}

// State is the group's state: ready when every shard is, otherwise the
// least advanced shard's state.
func (g *Group) State() State {
	st := StateReady
	for _, s := range g.shards {
		if v := State(s.state.Load()); v != StateReady {
			if st == StateReady || v < st {
				st = v
			}
		}
	}
	return st
}

// Start connects every shard. The shards run until Stop or ctx ends;
// Stop waits for them either way. Start panics if called twice.
func (r *Runner) Start(ctx context.Context) { r.StartResuming(ctx, nil) }

// StartResuming is Start with sessions to resume (by shard ID), such as
// those another group's Stop returned: a session whose shard count
// matches is resumed, the other shards identify.
func (r *Runner) StartResuming(ctx context.Context, sessions map[int]Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started {
		panic("shardgroup: Start called twice")
	}
	r.started = true
	g := r.g
	for id, sess := range sessions {
		if s, ok := g.shards[id]; ok && sess.ShardCount == g.cfg.ShardCount && sess.SessionID != "" {
			s.mu.Lock()
			s.session = sess
			s.mu.Unlock()
		}
	}
	for _, id := range g.ids {
		s := g.shards[id]
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			s.run(ctx)
		}()
	}
}

// Stop stops every shard and waits for its goroutines, or for ctx. With
// resumable, shards close with a code that keeps their sessions, which it
// returns so that another group (or process) can resume them; otherwise
// sessions end. If ctx ends first, the error names the shards that have
// not stopped: they end with the context Start was given, and Done is
// closed once they have.
func (r *Runner) Stop(ctx context.Context, resumable bool) (map[int]Session, error) {
	g := r.g
	code := websocket.CloseNormalClosure
	if resumable {
		code = resumableClose
	}
	for _, s := range g.shards {
		s.requestStop(code)
	}
	var err error
	select {
	case <-r.Done():
	case <-ctx.Done():
		for _, s := range g.shards {
			s.hurryUp() // a shard waiting for a READY to hand over stops waiting
		}
		// Hurried shards close their sockets at once; one that still runs
		// after a moment is stuck (a handshake the gateway holds) and is
		// named. Done joins it later.
		t := time.NewTimer(hurryGrace)
		defer t.Stop()
		select {
		case <-r.Done():
		case <-t.C:
			var stuck []int
			for _, id := range g.ids {
				select {
				case <-g.shards[id].done:
				default:
					stuck = append(stuck, id)
				}
			}
			if len(stuck) > 0 {
				err = fmt.Errorf("shardgroup: group %d: shards %v did not stop: %w", g.cfg.ID, stuck, ctx.Err())
			}
		}
	}
	sessions := make(map[int]Session, len(g.shards))
	for id, s := range g.shards {
		s.mu.Lock()
		if s.session.SessionID != "" {
			sessions[id] = s.session
		}
		s.mu.Unlock()
	}
	if !resumable {
		sessions = nil
	}
	return sessions, err
}

// Sessions is a snapshot of the group's live sessions, by shard ID, each
// stamped with the time it was taken: what another group or process needs
// to resume the shards if this one dies. A session's Sequence is the last
// event delivered to the listeners, so resuming it repeats only events
// delivered after the snapshot and loses none.
func (r *Runner) Sessions() map[int]Session {
	g := r.g
	now := time.Now()
	out := make(map[int]Session, len(g.shards))
	for id, s := range g.shards {
		s.mu.Lock()
		sess := s.session
		s.mu.Unlock()
		if sess.SessionID != "" {
			sess.SavedAt = now
			out[id] = sess
		}
	}
	return out
}

// hurryGrace is how long Stop waits, once its ctx has ended, for shards
// told to hurry before it names those still running.
const hurryGrace = 100 * time.Millisecond

// Done is closed once every shard goroutine has returned, after Stop or
// the end of Start's context (at once for a group never started).
func (r *Runner) Done() <-chan struct{} {
	r.joinOnce.Do(func() {
		r.joined = make(chan struct{})
		r.mu.Lock()
		started := r.started
		r.started = true // a Start from now on panics: nothing would join it
		r.mu.Unlock()
		if !started {
			close(r.joined)
			return
		}
		go func() { // ends with the last shard goroutine
			r.wg.Wait()
			close(r.joined)
		}()
	})
	return r.joined
}

func (s *shard) requestStop(code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.stop:
	default:
		s.stopCode = code
		close(s.stop)
	}
}

// hook adapters

func (g *Group) shardState(s *shard, from, to State) {
	if h := g.cfg.Hooks.ShardState; h != nil {
		h(g, s.id, from, to)
	}
}
func (g *Group) shardReady(s *shard, guilds int, resumed bool) {
	if h := g.cfg.Hooks.ShardReady; h != nil {
		h(g, s.id, guilds, resumed)
	}
}
func (g *Group) guildsLoaded(s *shard) {
	if h := g.cfg.Hooks.GuildsLoaded; h != nil {
		h(g, s.id)
	}
}
func (g *Group) identified(s *shard, waited time.Duration) {
	if h := g.cfg.Hooks.Identify; h != nil {
		h(g, s.id, waited)
	}
}
func (g *Group) shardFatal(s *shard, err *CloseError) {
	g.log.Error("shard closed for good", "shard", s.id, "code", err.Code, "err", err.Error())
	if h := g.cfg.Hooks.Fatal; h != nil {
		h(g, err)
	}
}
func (g *Group) closeSeen(s *shard, code int) {
	if h := g.cfg.Hooks.Close; h != nil {
		h(g, s.id, code)
	}
}
func (g *Group) zombie(s *shard) {
	if h := g.cfg.Hooks.Zombie; h != nil {
		h(g, s.id)
	}
}
func (g *Group) invalidated(s *shard) {
	if h := g.cfg.Hooks.Invalidated; h != nil {
		h(g, s.id)
	}
}

// manager is the disgo client's sharding.ShardManager: shards are opened
// and closed by the group's Runner, which user code does not hold; these
// methods act on what exists.
type manager struct{ g *Group }

var _ sharding.ShardManager = manager{}

// Open does nothing: the group's Runner starts the shards.
func (manager) Open(context.Context) {}

// Close does nothing: the group's Runner stops the shards. (disgo's
// Client.Close calls it; stopping here would let a listener wait for its
// own shard.)
func (m manager) Close(context.Context) { m.g.refuseClose("ShardManager.Close", -1) }

// OpenShard is not supported: a group's shards are fixed.
func (manager) OpenShard(context.Context, int) error {
	return errors.New("shardgroup: a group's shards are fixed: its Runner starts them")
}

// CloseShard does nothing: the group's Runner stops the shards.
func (m manager) CloseShard(_ context.Context, id int) {
	m.g.refuseClose("ShardManager.CloseShard", id)
}

// refuseClose logs a close asked for through the disgo client, which
// does nothing.
func (g *Group) refuseClose(what string, shard int) {
	g.log.Warn("a close through the disgo client does nothing: the group's owner stops its shards", "call", what, "shard", shard)
}

// ShardByGuildID returns the shard that owns a guild, if it is in this
// group.
func (m manager) ShardByGuildID(id snowflake.ID) gateway.Gateway {
	return m.Shard(sharding.ShardIDByGuild(id, m.g.cfg.ShardCount))
}

// Shard returns one of the group's shards, or nil.
func (m manager) Shard(id int) gateway.Gateway {
	if s, ok := m.g.shards[id]; ok {
		return s
	}
	return nil
}

// Shards returns the group's shards in a new map.
func (m manager) Shards() map[int]gateway.Gateway {
	out := make(map[int]gateway.Gateway, len(m.g.shards))
	for id, s := range m.g.shards {
		out[id] = s
	}
	return out
}
