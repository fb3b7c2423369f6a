package natsfleet

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofleet/fleet/bus"
	"github.com/nats-io/nats.go"
)

// ErrConnectionLost means the connection to NATS dropped while a call was
// in flight: the call may or may not have been handled.
var ErrConnectionLost = errors.New("natsfleet: connection to NATS lost")

// TransportConfig configures a [Transport]. The zero value means the
// defaults.
type TransportConfig struct {
	// Prefix is the first subject token of every message, so that two
	// fleets can share one NATS (default "fleet"). Every process of a
	// fleet uses the same prefix.
	Prefix string
	// Codec encodes payloads and replies; use the Bus's (default bus.JSON).
	Codec bus.Codec
	// Window is how many calls this process has in flight to one remote
	// address at most (default bus.DefaultMailboxSize). Past it a caller
	// waits for room, until its ctx ends: with the remote mailbox, this
	// bounds what is queued for an address.
	Window int
	// DefaultTimeout bounds a Send or Publish whose ctx has no deadline
	// (default bus.DefaultTimeout).
	DefaultTimeout time.Duration
	// AnnounceInterval is how often the process repeats which addresses
	// it serves; a process silent for three intervals is forgotten by
	// Members (default 2 s).
	AnnounceInterval time.Duration
	// Logger receives what cannot be returned (default slog.Default()).
	Logger *slog.Logger
	// OnHandover, if set, lets another process take over an address this
	// process serves (see [Transport.TakeOver]): it is called, on a
	// goroutine of the Transport, once no new message for addr reaches
	// this process, and must close the endpoint of addr (its
	// Endpoint.Close handles what was queued). Without it, a take-over is
	// refused.
	OnHandover func(addr bus.Address)
	// HandoverTimeout bounds how long a process taking over an address
	// waits for the old one to release it before serving anyway
	// (default 30 s).
	HandoverTimeout time.Duration
	// Direct lets the calls between two processes of one host skip the
	// NATS server: a process that serves addresses listens on a loopback
	// TCP port (127.0.0.1) of its own, announces it to the fleet with a
	// secret that a connection must present, and a process of the same
	// host that calls one of them connects to it and sends those calls,
	// and gets their answers, over that connection. NATS stays the route to other
	// hosts, the fallback while the connection is not open, and the only
	// route for discovery and take-overs; a call refused by the process it
	// reached this way (it no longer serves the address) is sent again
	// over NATS. Both processes must set Direct. Calls to an address
	// change route only when none of this process's calls to it is in
	// flight, so that they stay in order.
	Direct bool
}

// Transport is a bus.Transport over NATS. Messages to addresses bound in
// this process are delivered in memory, as the default transport does;
// the others cross NATS on the subject <prefix>.bus.<address>, with the
// caller's remaining time, and come back with their reply or error. The
// receiving process delivers them to its endpoint's mailbox, waiting
// while it is full: Send and Publish return once the remote endpoint has
// queued the message, and a caller with Window calls in flight to an
// address waits for room.
//
// Across processes, payloads and replies always go through the Codec
// (bus.Options.Strict makes in-process calls behave the same), handler
// errors keep their message and the bus sentinels they wrapped, and an
// event's payload reaches remote subscribers as its encoding ([]byte).
//
// A Transport serves one or more Buses of one process; close them before
// the Transport. Create it with [NewTransport].
type Transport struct {
	nc    *nats.Conn
	cfg   TransportConfig
	log   *slog.Logger
	id    string
	base  string // <prefix>.bus.
	dir   string // <prefix>.dir
	inbox string // reply subjects are inbox.<call id>

	ctx    context.Context // ends when the Transport closes
	cancel context.CancelFunc
	wg     sync.WaitGroup // goroutines waiting for a local endpoint's reply

	serving atomic.Int64 // calls received from other processes and not yet answered

	local atomic.Pointer[map[bus.Address]*binding] // copy-on-write, read without a lock

	mu       sync.Mutex // guards writes to local, peers, changed, closed, announcer
	peers    map[string]peer
	changed  chan struct{} // closed when the directory changes
	closed   bool
	announce *time.Timer
	subs     []*nats.Subscription
	takeOver map[bus.Address]chan struct{} // the next Bind of these takes them over; closed by the start func

	pmu     sync.Mutex // guards pending, nextID
	pending map[uint64]*pendingCall
	nextID  uint64

	wmu     sync.Mutex // guards windows, queues
	windows map[bus.Address]*remote
	queues  map[string]*outQueue // by subject: calls to an address, replies to a process

	batchSeq uint64                 // guarded by pmu
	batches  [batchRing]batchRecord // guarded by pmu: the calls of recent batches

	// The direct link (TransportConfig.Direct); see direct.go.
	host   string                                // this host's identity
	secret string                                // what a process must present to open a link to this one
	owners atomic.Pointer[map[bus.Address]owner] // remote addresses served by one process of this host
	stats  transportStats

	lmu        sync.Mutex // guards links, linkConns, listener, linkSeq, linkClosed, linkFailed
	links      map[string]*link
	linkConns  map[net.Conn]struct{}
	listener   net.Listener
	linkSeq    uint64
	linkClosed bool
	linkFailed bool
}

// batchRing is how many recent batches of calls are remembered, so that
// NATS's no-responders answer to one fails exactly its calls.
const batchRing = 4096

type batchRecord struct {
	seq uint64
	ids []uint64
}

type binding struct {
	addr bus.Address
	// linkMu is held shared while a call from a direct link is accepted,
	// so that a hand-over can wait for those in progress.
	linkMu sync.RWMutex
	r      bus.Receiver
	sub    *nats.Subscription
	ctl    *nats.Subscription // take-over requests from other processes
	gate   chan struct{}      // closed once the address is ours (a take-over); nil: open
	start  chan struct{}      // a take-over: closed when the new endpoint is ready
	// handedOver is set when another process took the address over: the
	// Unbind that follows announces the release.
	handedOver atomic.Bool
}

type peer struct {
	addrs []bus.Address
	seen  time.Time
	link  linkInfo // its direct link, if it announced one
}

// pendingCall is a call sent to another process and not yet answered.
type pendingCall struct {
	to     bus.Address
	name   string
	reply  chan<- bus.Response // a request's
	ack    chan error          // a send's or an event's; room for one
	window chan struct{}
	stop   func() bool // stops the clean-up at the caller's ctx end
	// With TransportConfig.Direct: the route's count of calls in flight,
	// and the link the call was sent on (nil: NATS), with its frame, to
	// send again over NATS if the process it reached refuses it.
	remote *remote
	link   *link
	frame  []byte
}

// NewTransport returns a Transport on nc. It subscribes to its reply
// inbox and to the fleet's directory, and asks the other processes which
// addresses they serve. nc stays the caller's: close the Transport, then nc.
func NewTransport(nc *nats.Conn, cfg TransportConfig) (*Transport, error) {
	if nc == nil {
		return nil, errors.New("natsfleet: NewTransport: nil connection")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "fleet"
	}
	if strings.ContainsAny(cfg.Prefix, " \t*>") || strings.HasPrefix(cfg.Prefix, ".") || strings.HasSuffix(cfg.Prefix, ".") {
		return nil, fmt.Errorf("natsfleet: TransportConfig.Prefix %q is not a subject prefix: use tokens of letters, digits, '-' and '_' separated by dots", cfg.Prefix)
	}
	if cfg.Window < 0 || cfg.DefaultTimeout < 0 || cfg.AnnounceInterval < 0 {
		return nil, errors.New("natsfleet: TransportConfig: Window, DefaultTimeout and AnnounceInterval must be >= 0 (0 for the default)")
	}
	if cfg.Codec == nil {
		cfg.Codec = bus.JSON{}
	}
	if cfg.Window == 0 {
		cfg.Window = bus.DefaultMailboxSize
	}
	if cfg.DefaultTimeout == 0 {
		cfg.DefaultTimeout = bus.DefaultTimeout
	}
	if cfg.AnnounceInterval == 0 {
		cfg.AnnounceInterval = 2 * time.Second
	}
	if cfg.HandoverTimeout <= 0 {
		cfg.HandoverTimeout = 30 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	t := &Transport{
		nc:        nc,
		cfg:       cfg,
		log:       log.With("component", "natsfleet"),
		id:        nats.NewInbox()[len(nats.InboxPrefix):],
		base:      cfg.Prefix + ".bus.",
		dir:       cfg.Prefix + ".dir",
		peers:     map[string]peer{},
		takeOver:  map[bus.Address]chan struct{}{},
		changed:   make(chan struct{}),
		pending:   map[uint64]*pendingCall{},
		windows:   map[bus.Address]*remote{},
		queues:    map[string]*outQueue{},
		links:     map[string]*link{},
		linkConns: map[net.Conn]struct{}{},
	}
	if cfg.Direct {
		t.host, t.secret = hostIdentity(), randomHex(16)
	}
	t.owners.Store(&map[bus.Address]owner{})
	t.inbox = cfg.Prefix + ".inbox." + t.id
	t.local.Store(&map[bus.Address]*binding{})
	t.ctx, t.cancel = context.WithCancel(context.Background())

	prev := nc.Opts.DisconnectedErrCB
	nc.SetDisconnectErrHandler(func(c *nats.Conn, err error) {
		t.failPending(ErrConnectionLost, false)
		if prev != nil {
			prev(c, err)
		}
	})
	inbox, err := nc.Subscribe(t.inbox+".*", t.onReply)
	if err != nil {
		t.cancel()
		return nil, fmt.Errorf("natsfleet: subscribe to replies: %w", err)
	}
	dir, err := nc.Subscribe(t.dir, t.onDirectory)
	if err != nil {
		_ = inbox.Unsubscribe()
		t.cancel()
		return nil, fmt.Errorf("natsfleet: subscribe to the directory: %w", err)
	}
	inbox.SetPendingLimits(-1, -1) // bounded by Window per address: never drop a reply
	t.subs = []*nats.Subscription{inbox, dir}
	if err := nc.Publish(t.dir, []byte("Q"+t.id)); err != nil {
		t.Close()
		return nil, fmt.Errorf("natsfleet: ask for the directory: %w", err)
	}
	t.mu.Lock()
	t.announce = time.AfterFunc(cfg.AnnounceInterval, t.reannounce)
	t.mu.Unlock()
	return t, nil
}

// Close stops serving: it withdraws this process's addresses, fails the
// calls still in flight with bus.ErrClosed, and waits for its goroutines.
// Close the Buses first. It does not close the connection.
func (t *Transport) Close() {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.closed = true
	t.announce.Stop()
	subs := t.subs
	local := *t.local.Load()
	t.local.Store(&map[bus.Address]*binding{})
	t.mu.Unlock()
	for _, b := range local {
		_ = b.sub.Unsubscribe()
		_ = b.ctl.Unsubscribe()
	}
	_ = t.nc.Publish(t.dir, []byte("B"+t.id))
	for _, s := range subs {
		_ = s.Unsubscribe()
	}
	t.cancel()
	t.closeLinks()
	t.failPending(bus.ErrClosed, true)
	t.wg.Wait()
}

// subject returns the subject of a concrete address.
func (t *Transport) subject(a bus.Address) string { return t.base + subjectToken(a) }

// Bind makes r reachable at addr from every process of the fleet. It
// fails with bus.ErrAddressInUse if this or another process serves addr,
// unless [Transport.TakeOver] asked to take it over.
func (t *Transport) Bind(addr bus.Address, r bus.Receiver) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return fmt.Errorf("%w: bind %s: the transport is closed", bus.ErrClosed, addr)
	}
	if _, ok := (*t.local.Load())[addr]; ok {
		return fmt.Errorf("%w: %s", bus.ErrAddressInUse, addr)
	}
	if t.cfg.Direct {
		t.listenLink()
	}
	subj := t.subject(addr)
	b := &binding{addr: addr, r: r}
	var released *nats.Subscription
	// One frame: id 0, a ping.
	if _, err := t.nc.Request(subj, []byte{2, 0, kindPing}, t.cfg.DefaultTimeout); err == nil {
		start, ok := t.takeOver[addr]
		if !ok {
			return fmt.Errorf("%w: %s is served by another process", bus.ErrAddressInUse, addr)
		}
		// Take it over: listen for the release, then ask for it.
		b.gate, b.start = make(chan struct{}), start
		released, err = t.nc.SubscribeSync(t.ctlSubject(addr) + ".released")
		if err != nil {
			return fmt.Errorf("natsfleet: take over %s: %w", addr, err)
		}
	} else if !errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("natsfleet: bind %s: %w", addr, err)
	}
	sub, err := t.nc.QueueSubscribe(subj, "serve", func(m *nats.Msg) { t.serveMsg(b, m) })
	if err != nil {
		t.unsubscribe(released)
		return fmt.Errorf("natsfleet: bind %s: %w", addr, err)
	}
	b.sub = sub
	// Senders are bounded by their windows; never drop what they sent.
	_ = sub.SetPendingLimits(-1, -1)
	if released != nil {
		if err := t.askHandover(addr); err != nil {
			t.unsubscribe(released, sub)
			return err
		}
		t.wg.Add(1)
		go t.awaitRelease(b, released)
	}
	ctl, err := t.nc.Subscribe(t.ctlSubject(addr), func(m *nats.Msg) { t.onHandover(b, m) })
	if err != nil {
		t.unsubscribe(released, sub)
		return fmt.Errorf("natsfleet: bind %s: %w", addr, err)
	}
	b.ctl = ctl
	if err := t.nc.FlushTimeout(t.cfg.DefaultTimeout); err != nil {
		t.unsubscribe(released, sub, ctl)
		return fmt.Errorf("natsfleet: bind %s: %w", addr, err)
	}
	old := *t.local.Load()
	m := make(map[bus.Address]*binding, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	m[addr] = b
	t.local.Store(&m)
	delete(t.takeOver, addr)
	t.announceLocked()
	return nil
}

func (t *Transport) unsubscribe(subs ...*nats.Subscription) {
	for _, s := range subs {
		if s != nil {
			_ = s.Unsubscribe()
		}
	}
}

func (t *Transport) ctlSubject(a bus.Address) string { return t.base + "ctl." + subjectToken(a) }

// TakeOver makes the next Bind of addr in this process (bus.Register)
// take the address over from the process that serves it, as
// Bus.Standby and Bus.Replace do within a process: Register returns at
// once; give the endpoint its handlers, then call start. The new endpoint
// receives the messages sent from then on but handles them only once
// start was called and the old process has handled everything it had
// accepted and released the address (its TransportConfig.OnHandover
// closes its endpoint), so that nothing is lost or handled twice and,
// with Concurrency 1, the two never run at once. If the old process does
// not release the address within HandoverTimeout (it died), the new one
// serves anyway. If nobody serves addr, Register simply binds it and
// start does nothing.
func (t *Transport) TakeOver(addr bus.Address) (start func()) {
	ch := make(chan struct{})
	t.mu.Lock()
	t.takeOver[addr] = ch
	t.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

// askHandover asks the process serving addr to hand it over.
func (t *Transport) askHandover(addr bus.Address) error {
	resp, err := t.nc.Request(t.ctlSubject(addr), []byte("handover"), t.cfg.DefaultTimeout)
	if err != nil {
		return fmt.Errorf("%w: %s: the process serving it did not answer the take-over: %w", bus.ErrAddressInUse, addr, err)
	}
	if string(resp.Data) != "ok" {
		return fmt.Errorf("%w: %s: the process serving it refused the take-over: %s", bus.ErrAddressInUse, addr, resp.Data)
	}
	return nil
}

// onHandover answers another process's take-over request for b: stop
// receiving, hand what was received to the endpoint, then let the user
// close it (OnHandover); the Unbind that follows announces the release.
func (t *Transport) onHandover(b *binding, m *nats.Msg) {
	if string(m.Data) != "handover" {
		return
	}
	if t.cfg.OnHandover == nil {
		_ = m.Respond([]byte("this process has no TransportConfig.OnHandover"))
		return
	}
	if b.handedOver.Swap(true) {
		_ = m.Respond([]byte("already handed over"))
		return
	}
	_ = m.Respond([]byte("ok"))
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		closed := b.sub.StatusChanged(nats.SubscriptionClosed)
		if err := b.sub.Drain(); err != nil {
			_ = b.sub.Unsubscribe()
		}
		timer := time.NewTimer(t.cfg.HandoverTimeout)
		defer timer.Stop()
		for done := false; !done; {
			select {
			case _, ok := <-closed:
				done = !ok
			case <-timer.C:
				done = true
			case <-t.ctx.Done():
				return
			}
		}
		// The calls a direct link was accepting are queued too.
		b.linkMu.Lock()
		//lint:ignore SA2001 an empty critical section: it waits for the links' workers
		b.linkMu.Unlock()
		t.cfg.OnHandover(b.addr)
	}()
}

// awaitRelease opens b's gate when the old process released the address,
// or after HandoverTimeout.
func (t *Transport) awaitRelease(b *binding, released *nats.Subscription) {
	defer t.wg.Done()
	defer t.unsubscribe(released)
	ctx, cancel := context.WithTimeout(t.ctx, t.cfg.HandoverTimeout)
	defer cancel()
	if _, err := released.NextMsgWithContext(ctx); err != nil && t.ctx.Err() == nil {
		t.log.Warn("address taken over without its release", "address", b.addr, "timeout", t.cfg.HandoverTimeout)
	}
	select {
	case <-b.start:
	case <-t.ctx.Done():
	}
	close(b.gate)
}

// Unbind withdraws r from addr. Messages already received for it are
// still offered to r, which refuses them once closed.
func (t *Transport) Unbind(addr bus.Address, r bus.Receiver) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.local.Load()
	b, ok := old[addr]
	if !ok || b.r != r {
		return
	}
	m := make(map[bus.Address]*binding, len(old))
	for k, v := range old {
		if k != addr {
			m[k] = v
		}
	}
	t.local.Store(&m)
	if err := b.sub.Drain(); err != nil {
		_ = b.sub.Unsubscribe()
	}
	_ = b.ctl.Unsubscribe()
	if b.handedOver.Load() {
		_ = t.nc.Publish(t.ctlSubject(addr)+".released", []byte("released"))
	}
	if !t.closed {
		t.announceLocked()
	}
}

// Deliver hands m to the receiver of m.To: in memory if it is bound in
// this process, over NATS otherwise.
func (t *Transport) Deliver(ctx context.Context, m bus.Message) error {
	if b, ok := (*t.local.Load())[m.To]; ok {
		return b.r.Receive(ctx, m)
	}
	if m.To.IsGroup() {
		return fmt.Errorf("%w: %s", bus.ErrUnknownAddress, m.To)
	}
	if t.ctx.Err() != nil {
		return fmt.Errorf("%w: %s %s: the transport is closed", bus.ErrClosed, m.To, m.Name)
	}
	if m.Kind != bus.KindRequest {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, t.cfg.DefaultTimeout)
			defer cancel()
		}
	}
	var timeout, deadline int64
	if d, ok := ctx.Deadline(); ok {
		timeout, deadline = int64(time.Until(d)), d.UnixNano()
		if timeout <= 0 {
			return ctxError(ctx, m.To, m.Name)
		}
	}
	t.pmu.Lock()
	t.nextID++
	id := t.nextID
	t.pmu.Unlock()
	var data []byte
	if m.Encoded {
		var ok bool
		if data, ok = m.Payload.([]byte); !ok {
			return fmt.Errorf("%w: %s %s: encoded payload is %T, not []byte", bus.ErrStrict, m.To, m.Name, m.Payload)
		}
	} else {
		var err error
		if data, err = t.cfg.Codec.Marshal(m.Payload); err != nil {
			return fmt.Errorf("%w: %s %s: cannot encode payload of type %T: %w", bus.ErrStrict, m.To, m.Name, m.Payload, err)
		}
	}
	// The queue copies the frame: build it in a reused buffer.
	fp := framePool.Get().(*[]byte)
	defer func() {
		if cap(*fp) <= 64<<10 {
			framePool.Put(fp)
		}
	}()
	frame := append(appendCallHeader((*fp)[:0], id, m.Kind, timeout, deadline, m.Name), data...)
	*fp = frame
	if n := len(frame) + binary.MaxVarintLen64; t.tooLarge(n) {
		return checkPayload(t.nc, "bus message "+string(m.To)+" "+m.Name, n)
	}
	rm := t.window(m.To)
	w := rm.window
	select {
	case w <- struct{}{}:
	default:
		select {
		case w <- struct{}{}:
		case <-ctx.Done():
			return ctxError(ctx, m.To, m.Name)
		case <-t.ctx.Done():
			return fmt.Errorf("%w: %s %s: the transport is closed", bus.ErrClosed, m.To, m.Name)
		}
	}
	p := &pendingCall{to: m.To, name: m.Name, window: w}
	if m.Kind == bus.KindRequest {
		p.reply = m.Reply
	} else {
		p.ack = make(chan error, 1)
	}
	var l *link
	if t.cfg.Direct {
		p.remote = rm
		l = t.route(rm)
	}
	t.pmu.Lock()
	if l != nil && l.dead {
		l = nil
	}
	if l != nil {
		p.link, p.frame = l, slices.Clone(frame)
	}
	if m.Kind == bus.KindRequest {
		// The Bus stops waiting when ctx ends; forget the call then.
		p.stop = context.AfterFunc(ctx, func() { t.take(id) })
	}
	t.pending[id] = p
	t.pmu.Unlock()
	t.stats.calls.Add(1)
	var queued bool
	if l != nil {
		t.stats.direct.Add(1)
		queued = t.enqueueTo(sink{key: l.key + string(m.To), link: l, addr: string(m.To)}, true, frame, len(w) == 1)
	} else {
		queued = t.enqueue(rm.subject, true, frame, len(w) == 1)
	}
	if !queued {
		t.take(id)
		return fmt.Errorf("%w: %s %s: the transport is closed", bus.ErrClosed, m.To, m.Name)
	}
	if m.Kind == bus.KindRequest {
		return nil
	}
	select {
	case err := <-p.ack:
		return err
	case <-ctx.Done():
		if t.take(id) == nil {
			return <-p.ack // answered meanwhile
		}
		return ctxError(ctx, m.To, m.Name)
	}
}

func (t *Transport) publishError(err error, to bus.Address, name string, n int) error {
	switch {
	case errors.Is(err, nats.ErrMaxPayload):
		return &PayloadError{Size: int64(n), Max: t.nc.MaxPayload(), What: "bus message " + string(to) + " " + name}
	case errors.Is(err, nats.ErrConnectionClosed):
		return fmt.Errorf("%w: %s %s: the NATS connection is closed: %w", bus.ErrClosed, to, name, err)
	}
	return fmt.Errorf("natsfleet: %s %s: %w", to, name, err)
}

// remote is what this process keeps for an address it calls in another.
type remote struct {
	addr    bus.Address
	window  chan struct{} // a semaphore bounding the calls in flight
	subject string

	// With TransportConfig.Direct, guarded by Transport.wmu: the calls in
	// flight, and the link they go on (nil: NATS), chosen again only when
	// none is in flight.
	inflight int
	link     *link
}

// window returns what this process keeps for addr.
func (t *Transport) window(addr bus.Address) *remote {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	r, ok := t.windows[addr]
	if !ok {
		r = &remote{addr: addr, window: make(chan struct{}, t.cfg.Window), subject: t.subject(addr)}
		t.windows[addr] = r
	}
	return r
}

// take removes the pending call id and frees its place in the window; it
// returns nil if the call was already taken.
func (t *Transport) take(id uint64) *pendingCall {
	t.pmu.Lock()
	p, ok := t.pending[id]
	delete(t.pending, id)
	t.pmu.Unlock()
	if !ok {
		return nil
	}
	if p.remote != nil {
		t.wmu.Lock()
		p.remote.inflight--
		t.wmu.Unlock()
	}
	<-p.window
	return p
}

// failPending answers every call in flight with err; with links false,
// only those sent over NATS.
func (t *Transport) failPending(err error, links bool) {
	t.pmu.Lock()
	ids := make([]uint64, 0, len(t.pending))
	for id, p := range t.pending {
		if links || p.link == nil {
			ids = append(ids, id)
		}
	}
	t.pmu.Unlock()
	for _, id := range ids {
		if p := t.take(id); p != nil {
			t.finish(p, fmt.Errorf("%w: %s %s: the call was in flight and may have been handled", err, p.to, p.name))
		}
	}
}

// finish gives a pending call its answer: an error, or a reply frame.
func (t *Transport) finish(p *pendingCall, err error) {
	if p.stop != nil {
		p.stop()
	}
	if p.reply != nil {
		p.reply <- bus.Response{Err: err}
	} else {
		p.ack <- err
	}
}

// onReply receives the answers to this process's calls: replies on
// <inbox>.r, NATS's no-responders status on <inbox>.<batch>.
func (t *Transport) onReply(msg *nats.Msg) {
	i := strings.LastIndexByte(msg.Subject, '.')
	tok := msg.Subject[i+1:]
	if tok != "r" {
		if len(msg.Data) == 0 && msg.Header.Get("Status") == "503" {
			seq, err := strconv.ParseUint(tok, 36, 64)
			if err == nil {
				t.noResponders(seq)
			}
		}
		return
	}
	t.stats.answerMessages.Add(1)
	data := msg.Data
	for len(data) > 0 {
		frame, rest, ok := nextFrame(data)
		if !ok {
			t.log.Warn("malformed bus reply dropped")
			return
		}
		data = rest
		t.reply(frame)
	}
}

// noResponders fails the calls of batch seq: nobody serves their address.
func (t *Transport) noResponders(seq uint64) {
	t.pmu.Lock()
	rec := t.batches[seq%batchRing]
	t.pmu.Unlock()
	if rec.seq != seq {
		return // forgotten: its calls end by their deadline
	}
	for _, id := range rec.ids {
		if p := t.take(id); p != nil {
			t.finish(p, fmt.Errorf("%w: %s (no process serves it)", bus.ErrUnknownAddress, p.to))
		}
	}
}

// reply answers one call with its reply frame.
func (t *Transport) reply(frame []byte) {
	id, k := binary.Uvarint(frame)
	if k <= 0 || len(frame) < k+1 {
		return
	}
	if frame[k] == replyMoved {
		t.resend(id)
		return
	}
	p := t.take(id)
	if p == nil {
		return // the caller gave up
	}
	body := frame[k+1:]
	switch frame[k] {
	case replyError:
		t.finish(p, parseError(body))
	case replyAck:
		t.finish(p, nil)
	case replyValue:
		if p.stop != nil {
			p.stop()
		}
		if p.reply != nil {
			p.reply <- bus.Response{Value: body, Encoded: true}
		} else {
			p.ack <- nil
		}
	default:
		t.finish(p, fmt.Errorf("natsfleet: %s %s: reply of unknown status %d", p.to, p.name, frame[k]))
	}
}

// serveMsg delivers the calls of one message received for b.
func (t *Transport) serveMsg(b *binding, msg *nats.Msg) {
	if len(msg.Data) == 3 && msg.Data[2] == kindPing {
		_ = t.nc.Publish(msg.Reply, []byte{replyAck}) // answered even while taking over
		return
	}
	if b.gate != nil {
		select {
		case <-b.gate:
		case <-t.ctx.Done():
			return
		}
	}
	replyTo := msg.Reply
	if i := strings.LastIndexByte(replyTo, '.'); i >= 0 {
		replyTo = replyTo[:i] + ".r"
	}
	t.serveFrames(b, msg.Data, msg.Reply, sink{key: replyTo})
}

// serveFrames delivers the calls of one message received for b, and
// sends their answers to reply; ping is the subject a ping is answered
// on ("" for none).
func (t *Transport) serveFrames(b *binding, data []byte, ping string, reply sink) {
	// The answers go back together, as one message when they are ready
	// together: acknowledgements and errors at once, replies as the
	// endpoint gives them. Requests still unanswered once the endpoint
	// stops answering are left to goroutines of their own.
	var (
		out     []byte     // answers, each as uvarint length | frame
		waiting []awaiting // requests queued at the endpoint, in order
	)
	for len(data) > 0 {
		frame, rest, ok := nextFrame(data)
		if !ok {
			t.log.Warn("malformed bus message dropped", "address", b.addr)
			break
		}
		data = rest
		c, err := parseCall(frame)
		if err != nil {
			t.log.Warn("malformed bus call dropped", "address", b.addr, "err", err)
			continue
		}
		if c.kind == kindPing {
			if ping != "" {
				_ = t.nc.Publish(ping, []byte{replyAck})
			}
			continue
		}
		t.serving.Add(1)
		w, answer := t.serve(b, c)
		if answer != nil {
			out = t.appendAnswer(out, answer)
		} else {
			waiting = append(waiting, w)
		}
		// The endpoint answers in order with one worker: take what it has
		// answered while the next calls are queued.
		for len(waiting) > 0 {
			if out, ok = t.poll(b, waiting[0], out); !ok {
				break
			}
			waiting = waiting[1:]
		}
	}
	// Let the endpoint's workers run, and take their answers from here
	// while they keep coming, rather than hand each wait to a goroutine.
	for idle := 0; len(waiting) > 0 && idle < 3; {
		runtime.Gosched()
		n := 0
		for _, w := range waiting {
			var ok bool
			if out, ok = t.poll(b, w, out); !ok {
				waiting[n] = w
				n++
			}
		}
		if n == len(waiting) {
			idle++
		} else {
			idle = 0
		}
		clear(waiting[n:])
		waiting = waiting[:n]
	}
	if len(out) > 0 && reply.key != "" {
		t.enqueueFrames(reply, out)
	}
	for _, w := range waiting {
		t.wg.Add(1)
		go t.await(w.cancel, w.ch, reply, w.id, b.addr, w.name)
	}
}

// callCtx is the context of a call received from another process: its
// caller's deadline, and the Transport's end. Most handlers only read its
// Err, which it computes, so it starts no timer and joins no parent until
// something asks for Done.
type callCtx struct {
	parent   context.Context
	deadline time.Time

	mu       sync.Mutex // guards ctx, cancel, released
	ctx      context.Context
	cancel   context.CancelFunc
	released bool
}

func (c *callCtx) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *callCtx) Value(key any) any { return c.parent.Value(key) }

// Done returns the channel of a context with the deadline, made on the
// first call.
func (c *callCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ctx == nil {
		c.ctx, c.cancel = context.WithDeadline(c.parent, c.deadline)
		if c.released {
			c.cancel()
		}
	}
	return c.ctx.Done()
}

func (c *callCtx) Err() error {
	c.mu.Lock()
	ctx, released := c.ctx, c.released
	c.mu.Unlock()
	switch {
	case ctx != nil:
		return ctx.Err()
	case released:
		return context.Canceled
	}
	if err := c.parent.Err(); err != nil {
		return err
	}
	if !time.Now().Before(c.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

// release ends the context once the call is answered, as cancelling
// it would, and frees its timer if Done made one.
func (c *callCtx) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.released = true
	if c.cancel != nil {
		c.cancel()
	}
}

// awaiting is a request queued at a local endpoint, waiting for its
// answer.
type awaiting struct {
	ch     chan bus.Response
	cancel context.CancelFunc
	id     uint64
	name   string
}

// poll appends w's answer to out if the endpoint has answered.
func (t *Transport) poll(b *binding, w awaiting, out []byte) ([]byte, bool) {
	select {
	case r := <-w.ch:
		replyPool.Put(w.ch)
		w.cancel()
		return t.appendResponse(out, r, w.id, b.addr, w.name), true
	default:
		return out, false
	}
}

// appendAnswer appends one answer frame to out, as the frames of a
// message, and counts it answered.
func (t *Transport) appendAnswer(out, frame []byte) []byte {
	t.serving.Add(-1)
	if err := checkPayload(t.nc, "bus reply", len(frame)+binary.MaxVarintLen64); err != nil {
		id, _ := binary.Uvarint(frame)
		frame = appendError(nil, id, err)
	}
	out = binary.AppendUvarint(out, uint64(len(frame)))
	return append(out, frame...)
}

// serve delivers one call received for b to its receiver. It returns the
// call's answer frame if it has one already (a send's or an event's, or
// an error), else the request waiting for its answer.
func (t *Transport) serve(b *binding, c call) (awaiting, []byte) {
	ctx, cancel := t.ctx, context.CancelFunc(func() {})
	if c.timeout > 0 {
		d := time.Now().Add(time.Duration(c.timeout))
		if sd := time.Unix(0, c.deadline); sd.Before(d) {
			d = sd
		}
		cc := &callCtx{parent: t.ctx, deadline: d}
		ctx, cancel = cc, cc.release
	}
	m := bus.Message{To: b.addr, Kind: bus.Kind(c.kind), Name: c.name, Payload: c.payload, Encoded: true}
	if m.Kind != bus.KindRequest {
		err := t.receive(ctx, b, m)
		cancel()
		if err != nil {
			return awaiting{}, appendError(nil, c.id, err)
		}
		return awaiting{}, append(binary.AppendUvarint(nil, c.id), replyAck)
	}
	ch := replyPool.Get().(chan bus.Response)
	m.Reply = ch
	if err := t.receive(ctx, b, m); err != nil {
		replyPool.Put(ch)
		cancel()
		return awaiting{}, appendError(nil, c.id, err)
	}
	return awaiting{ch: ch, cancel: cancel, id: c.id, name: c.name}, nil
}

// receive hands m to b's receiver. A call that reaches a binding after
// its endpoint closed and left (the subscription drains after Unbind, so
// the server may still route a call to it) fails as a call to an address
// nobody serves does, not with the endpoint's ErrClosed: the address is
// no longer served here.
func (t *Transport) receive(ctx context.Context, b *binding, m bus.Message) error {
	err := b.r.Receive(ctx, m)
	if err != nil && errors.Is(err, bus.ErrClosed) && t.ctx.Err() == nil && !b.handedOver.Load() {
		if cur, ok := (*t.local.Load())[b.addr]; !ok || cur != b {
			return fmt.Errorf("%w: %s (no longer served: its endpoint closed)", bus.ErrUnknownAddress, b.addr)
		}
	}
	return err
}

// await sends the reply of a request handled here to its caller. The
// endpoint answers every request it accepted, once handled or with an
// error if the caller's time ran out first, so it waits for that answer
// (a late one is dropped by the caller), or for the Transport to close.
func (t *Transport) await(cancel context.CancelFunc, ch chan bus.Response, to sink, id uint64, addr bus.Address, name string) {
	defer t.wg.Done()
	defer cancel()
	select {
	case r := <-ch:
		replyPool.Put(ch)
		alone := t.serving.Add(-1) == 0
		if to.key != "" {
			t.enqueueReply(to, queuedReply{id: id, r: r, addr: addr, name: name}, alone)
		}
	case <-t.ctx.Done():
		t.serving.Add(-1)
	}
}

// framePool holds the buffers Deliver builds a call's frame in.
var framePool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// replyPool recycles the reply channels of requests received from other
// processes; a channel goes back once its one Response was read.
var replyPool = sync.Pool{New: func() any { return make(chan bus.Response, 1) }}

// tooLarge reports whether a message of n bytes exceeds the server's max
// payload.
func (t *Transport) tooLarge(n int) bool {
	max := t.nc.MaxPayload()
	return max > 0 && int64(n) > max
}

// appendResponse appends r's frame to out as uvarint length | frame,
// and counts the call answered.
func (t *Transport) appendResponse(out []byte, r bus.Response, id uint64, addr bus.Address, name string) []byte {
	data, ok := r.Value.([]byte)
	if r.Err == nil && (!r.Encoded || !ok) {
		var err error
		if data, err = t.cfg.Codec.Marshal(r.Value); err != nil {
			r.Err = fmt.Errorf("%w: %s %s: cannot encode reply of type %T: %w", bus.ErrStrict, addr, name, r.Value, err)
		}
	}
	n := uvarintLen(id) + 1 + len(data)
	if r.Err != nil || t.tooLarge(n+binary.MaxVarintLen64) {
		if r.Err == nil {
			r.Err = &PayloadError{Size: int64(n + binary.MaxVarintLen64), Max: t.nc.MaxPayload(), What: "bus reply"}
		}
		return t.appendAnswer(out, appendError(nil, id, r.Err))
	}
	t.serving.Add(-1)
	out = binary.AppendUvarint(out, uint64(n))
	out = binary.AppendUvarint(out, id)
	out = append(out, replyValue)
	return append(out, data...)
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

func (t *Transport) encodeResponse(r bus.Response, id uint64, addr bus.Address, name string) []byte {
	if r.Err != nil {
		return appendError(nil, id, r.Err)
	}
	data, ok := r.Value.([]byte)
	if !r.Encoded || !ok {
		var err error
		if data, err = t.cfg.Codec.Marshal(r.Value); err != nil {
			return appendError(nil, id, fmt.Errorf("%w: %s %s: cannot encode reply of type %T: %w", bus.ErrStrict, addr, name, r.Value, err))
		}
	}
	b := binary.AppendUvarint(make([]byte, 0, len(data)+binary.MaxVarintLen64+1), id)
	return append(append(b, replyValue), data...)
}

// TransportStats counts what a Transport sent to and received from other
// processes since it was created.
type TransportStats struct {
	Calls          int64 // requests, sends and events sent to other processes
	DirectCalls    int64 // those of Calls sent over a direct link (TransportConfig.Direct)
	CallMessages   int64 // the messages that carried Calls, over NATS or a direct link
	AnswerMessages int64 // the messages that carried their answers back
}

type transportStats struct {
	calls, direct, callMessages, answerMessages atomic.Int64
}

// Stats returns the Transport's counts so far.
func (t *Transport) Stats() TransportStats {
	return TransportStats{
		Calls:          t.stats.calls.Load(),
		DirectCalls:    t.stats.direct.Load(),
		CallMessages:   t.stats.callMessages.Load(),
		AnswerMessages: t.stats.answerMessages.Load(),
	}
}

// Members returns the addresses in group served by any process of the
// fleet that announced itself within the last three AnnounceIntervals,
// admiral first, then clusters by id, then services by name.
func (t *Transport) Members(group bus.Address) []bus.Address {
	var out []bus.Address
	for a := range *t.local.Load() {
		if group.Contains(a) {
			out = append(out, a)
		}
	}
	t.mu.Lock()
	cutoff := time.Now().Add(-3 * t.cfg.AnnounceInterval)
	for _, p := range t.peers {
		if p.seen.Before(cutoff) {
			continue
		}
		for _, a := range p.addrs {
			if group.Contains(a) {
				out = append(out, a)
			}
		}
	}
	t.mu.Unlock()
	slices.SortFunc(out, compareAddress)
	return slices.Compact(out)
}

// WaitMember waits until addr is served by a process of the fleet, as far
// as this process knows, or ctx ends.
func (t *Transport) WaitMember(ctx context.Context, addr bus.Address) error {
	for {
		t.mu.Lock()
		ch := t.changed
		t.mu.Unlock()
		if slices.Contains(t.Members(addr), addr) {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("natsfleet: wait for %s to be served: %w", addr, ctx.Err())
		}
	}
}

// onDirectory keeps the view of which process serves which address.
// Messages: "Q<id>" asks everyone to announce, "A<id>\n<addr>\n…"
// announces, "B<id>" says goodbye.
func (t *Transport) onDirectory(msg *nats.Msg) {
	if len(msg.Data) < 1 {
		return
	}
	body := string(msg.Data[1:])
	id, list, _ := strings.Cut(body, "\n")
	if id == t.id {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	switch msg.Data[0] {
	case 'Q':
		t.announceLocked()
	case 'A':
		var addrs []bus.Address
		var li linkInfo
		for _, a := range strings.Split(list, "\n") {
			switch {
			case strings.HasPrefix(a, linkLine):
				li = parseLinkInfo(a)
			case a != "":
				addrs = append(addrs, bus.Address(a))
			}
		}
		t.peers[id] = peer{addrs: addrs, seen: time.Now(), link: li}
		t.changedLocked()
	case 'B':
		delete(t.peers, id)
		t.changedLocked()
	}
}

func (t *Transport) changedLocked() {
	close(t.changed)
	t.changed = make(chan struct{})
	if t.cfg.Direct {
		t.ownersLocked()
	}
}

func (t *Transport) announceLocked() {
	var sb strings.Builder
	sb.WriteString("A" + t.id + "\n")
	for a := range *t.local.Load() {
		sb.WriteString(string(a) + "\n")
	}
	if line := t.linkLine(); line != "" {
		sb.WriteString(line + "\n")
	}
	if err := t.nc.Publish(t.dir, []byte(sb.String())); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		t.log.Warn("bus directory announce failed", "err", err)
	}
}

func (t *Transport) reannounce() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	t.announceLocked()
	t.announce.Reset(t.cfg.AnnounceInterval)
}

// compareAddress orders addresses as the bus does: the admiral, then
// clusters by id, then services by name.
func compareAddress(a, b bus.Address) int {
	ka, kb := addressKind(a), addressKind(b)
	if ka != kb {
		return cmp.Compare(ka, kb)
	}
	if ka == 1 {
		ia, _ := a.ClusterID()
		ib, _ := b.ClusterID()
		return cmp.Compare(ia, ib)
	}
	return strings.Compare(string(a), string(b))
}

func addressKind(a bus.Address) int {
	if a == bus.Admiral {
		return 0
	}
	if _, ok := a.ClusterID(); ok {
		return 1
	}
	return 2
}

var _ bus.Transport = (*Transport)(nil)
