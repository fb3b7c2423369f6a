package natsfleet

import (
	"bufio"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gofleet/fleet/bus"
)

// The direct link (TransportConfig.Direct): calls between two processes
// of one host over a loopback TCP connection, without the NATS server in
// between.
//
// The serving process listens on 127.0.0.1 and announces, with the
// addresses it serves, the line "!link\t<host>\t<secret>\t<addr>". A
// process of the same host (same host name and boot id) that calls an
// address served by that process alone connects, presents the secret
// (a connection that does not is closed), and from then on sends its
// calls to that address over the connection, once none of them is in
// flight over NATS. The serving process reads the messages of each
// address in a goroutine of that connection and address, so that a full
// mailbox holds back only its own address, as a NATS subscription
// would, and answers on the same connection. It refuses (replyMoved) a
// call for an address it does not serve, or is handing over, and the
// caller sends that call again over NATS. When the connection breaks,
// each call in flight on it fails with ErrConnectionLost; the next ones
// go over NATS until it is opened again.
//
// Lock order: Transport.mu → Transport.lmu; Transport.wmu → Transport.lmu.

const (
	linkLine       = "!link\t"
	linkHello      = "fleet-link/1 "
	linkOK         = "ok"
	linkMaxMessage = 64 << 20
	linkHandshake  = 5 * time.Second
	linkMerge      = 64 << 10 // a link's worker merges waiting messages up to this size
)

// linkInfo is what a process announces about its direct link.
type linkInfo struct {
	host   string // the host's identity: host name and boot id
	secret string
	addr   string // where it listens (on 127.0.0.1)
}

// owner is the process of this host that alone serves an address, and
// its link.
type owner struct {
	id   string
	link linkInfo
}

// link is one connection of the direct link: on the calling side, to one
// serving process (Transport.links, by its id); on the serving side, one
// accepted connection.
type link struct {
	key  string   // the prefix of its queues' keys
	conn net.Conn // set before the link is ready

	wmu   sync.Mutex // guards writes to conn, hdr, renew
	hdr   []byte
	renew time.Time // when to move the write deadline
	t     *Transport

	dead bool // guarded by Transport.pmu: no call may be sent on it any more

	// The calling side's, guarded by Transport.lmu.
	opened chan struct{} // closed once the dial is over, opened or not
	ready  bool          // open, and not broken
	failed time.Time     // when it failed to open, or broke: opened again an AnnounceInterval later
}

func parseLinkInfo(line string) linkInfo {
	f := strings.SplitN(strings.TrimPrefix(line, linkLine), "\t", 3)
	if len(f) != 3 {
		return linkInfo{}
	}
	return linkInfo{host: f[0], secret: f[1], addr: f[2]}
}

// linkLine returns the directory line announcing this process's link, or
// "" if it has none.
func (t *Transport) linkLine() string {
	t.lmu.Lock()
	defer t.lmu.Unlock()
	if t.listener == nil {
		return ""
	}
	return linkLine + t.host + "\t" + t.secret + "\t" + t.listener.Addr().String()
}

// hostIdentity names this host: its name and, where the system tells,
// its boot id, so that two machines with one name differ.
func hostIdentity() string {
	h, _ := os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		h += "/" + strings.TrimSpace(string(b))
	}
	return strings.Map(func(r rune) rune {
		if r == '\t' || r == '\n' {
			return '_'
		}
		return r
	}, h)
}

// ownersLocked recomputes which remote addresses one process of this
// host serves alone, with a link. t.mu is held.
func (t *Transport) ownersLocked() {
	seen := map[bus.Address]int{}
	for _, p := range t.peers {
		for _, a := range p.addrs {
			seen[a]++
		}
	}
	m := map[bus.Address]owner{}
	for id, p := range t.peers {
		if p.link.addr == "" || p.link.host != t.host {
			continue
		}
		for _, a := range p.addrs {
			if seen[a] == 1 {
				m[a] = owner{id: id, link: p.link}
			}
		}
	}
	t.owners.Store(&m)
}

// route counts a call to r in flight and returns the link it goes on
// (nil: NATS). The route is chosen again only when no call to r is in
// flight, so that the calls to one address stay in order.
func (t *Transport) route(r *remote) *link {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if r.inflight == 0 {
		r.link = t.pickLink(r.addr)
	}
	r.inflight++
	return r.link
}

// pickLink returns the open link to the process serving addr, if it is
// of this host; it starts opening one if none is.
func (t *Transport) pickLink(addr bus.Address) *link {
	o, ok := (*t.owners.Load())[addr]
	if !ok {
		return nil
	}
	t.lmu.Lock()
	defer t.lmu.Unlock()
	l := t.links[o.id]
	switch {
	case l != nil && l.ready:
		return l
	case l != nil && (l.failed.IsZero() || time.Since(l.failed) < t.cfg.AnnounceInterval):
		return nil // opening, or failed a moment ago
	case t.linkClosed:
		return nil
	}
	l = &link{t: t, opened: make(chan struct{})}
	t.linkSeq++
	l.key = "\x00link" + strconv.FormatUint(t.linkSeq, 10) + "/"
	t.links[o.id] = l
	t.wg.Add(1)
	go t.dial(l, o)
	return nil
}

// dial opens l to o, then reads its answers until it breaks.
func (t *Transport) dial(l *link, o owner) {
	defer t.wg.Done()
	conn, err := t.dialLink(o.link)
	t.lmu.Lock()
	close(l.opened)
	if err == nil && t.linkClosed {
		_ = conn.Close()
		err = bus.ErrClosed
	}
	if err != nil {
		l.failed = time.Now()
		t.lmu.Unlock()
		if t.ctx.Err() == nil {
			t.log.Info("direct link not opened: calls go through NATS", "peer", o.id, "err", err)
		}
		return
	}
	l.conn, l.ready = conn, true
	t.linkConns[conn] = struct{}{}
	t.lmu.Unlock()
	err = t.readAnswers(l)
	t.breakLink(l, err)
}

// dialLink connects to a link and presents its secret.
func (t *Transport) dialLink(li linkInfo) (net.Conn, error) {
	d := net.Dialer{Timeout: linkHandshake}
	conn, err := d.DialContext(t.ctx, "tcp", li.addr)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(linkHandshake))
	l := &link{conn: conn, t: t}
	if err := l.write("", []byte(linkHello+li.secret)); err != nil {
		_ = conn.Close()
		return nil, err
	}
	_, body, err := readLinkMsg(bufio.NewReaderSize(conn, 16))
	if err != nil || string(body) != linkOK {
		_ = conn.Close()
		return nil, fmt.Errorf("link %s refused the handshake: %v", li.addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

// readAnswers takes the answers that come on l until it breaks.
func (t *Transport) readAnswers(l *link) error {
	r := bufio.NewReaderSize(l.conn, 64<<10)
	for {
		_, body, err := readLinkMsg(r)
		if err != nil {
			return err
		}
		t.stats.answerMessages.Add(1)
		for len(body) > 0 {
			frame, rest, ok := nextFrame(body)
			if !ok {
				return errors.New("malformed answer")
			}
			body = rest
			t.reply(frame)
		}
		if r.Buffered() == 0 {
			// Let the callers just answered run before this goroutine
			// asks the socket for more, which is most often nothing yet.
			runtime.Gosched()
		}
	}
}

// breakLink closes l and fails the calls in flight on it.
func (t *Transport) breakLink(l *link, err error) {
	t.lmu.Lock()
	l.ready, l.failed = false, time.Now()
	delete(t.linkConns, l.conn)
	t.lmu.Unlock()
	_ = l.conn.Close()
	t.pmu.Lock()
	l.dead = true
	var ids []uint64
	for id, p := range t.pending {
		if p.link == l {
			ids = append(ids, id)
		}
	}
	t.pmu.Unlock()
	if t.ctx.Err() == nil {
		t.log.Info("direct link closed: calls go through NATS", "err", err, "in_flight", len(ids))
	}
	for _, id := range ids {
		if p := t.take(id); p != nil {
			t.finish(p, fmt.Errorf("%w: %s %s: the direct connection to the process serving it broke; the call was in flight and may have been handled", ErrConnectionLost, p.to, p.name))
		}
	}
}

// resend sends call id over NATS: the process its link reached refused
// it.
func (t *Transport) resend(id uint64) {
	t.pmu.Lock()
	p := t.pending[id]
	if p == nil || p.frame == nil {
		t.pmu.Unlock()
		return
	}
	frame := p.frame
	p.link, p.frame = nil, nil
	t.pmu.Unlock()
	if !t.enqueue(t.subject(p.to), true, frame, true) {
		if p := t.take(id); p != nil {
			t.finish(p, fmt.Errorf("%w: %s %s: the transport is closed", bus.ErrClosed, p.to, p.name))
		}
	}
}

// listenLink opens this process's link, once.
func (t *Transport) listenLink() {
	t.lmu.Lock()
	defer t.lmu.Unlock()
	if t.listener != nil || t.linkClosed || t.linkFailed {
		return
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err == nil {
		t.listener = ln
		t.wg.Add(1)
		go t.acceptLinks(ln)
		return
	}
	t.linkFailed = true
	t.log.Warn("direct link not opened: calls to this process go through NATS", "err", err)
}

// acceptLinks serves the links that callers open, until the Transport
// closes.
func (t *Transport) acceptLinks(ln net.Listener) {
	defer t.wg.Done()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if t.ctx.Err() == nil {
				t.log.Warn("direct link stopped accepting", "err", err)
			}
			return
		}
		t.lmu.Lock()
		if t.linkClosed {
			t.lmu.Unlock()
			_ = conn.Close()
			return
		}
		t.linkConns[conn] = struct{}{}
		t.linkSeq++
		l := &link{t: t, conn: conn, key: "\x00link" + strconv.FormatUint(t.linkSeq, 10) + "/r"}
		t.wg.Add(1)
		t.lmu.Unlock()
		go t.serveLink(l)
	}
}

// serveLink reads the calls a caller sends on l until it closes; the
// calls of each address go to a goroutine of their own.
func (t *Transport) serveLink(l *link) {
	defer t.wg.Done()
	workers := map[bus.Address]chan []byte{}
	defer func() {
		for _, ch := range workers {
			close(ch)
		}
		t.lmu.Lock()
		delete(t.linkConns, l.conn)
		t.lmu.Unlock()
		_ = l.conn.Close()
	}()
	r := bufio.NewReaderSize(l.conn, 64<<10)
	_ = l.conn.SetReadDeadline(time.Now().Add(linkHandshake))
	_, hello, err := readLinkMsg(r)
	if err != nil || subtle.ConstantTimeCompare(hello, []byte(linkHello+t.secret)) != 1 {
		t.log.Warn("direct link refused: bad handshake", "err", err)
		return
	}
	if err := l.write("", []byte(linkOK)); err != nil {
		return
	}
	_ = l.conn.SetReadDeadline(time.Time{})
	for {
		addr, frames, err := readLinkMsg(r)
		if err != nil {
			return
		}
		a := bus.Address(addr)
		ch, ok := workers[a]
		if !ok {
			// The caller's window bounds its calls in flight to a, so
			// that this seldom waits.
			ch = make(chan []byte, t.cfg.Window)
			workers[a] = ch
			t.wg.Add(1)
			go t.linkWorker(l, a, ch)
		}
		select {
		case ch <- frames:
		case <-t.ctx.Done():
			return
		}
		if r.Buffered() == 0 {
			runtime.Gosched() // serve the calls before asking the socket for more
		}
	}
}

// linkWorker serves the calls for addr that come on l.
func (t *Transport) linkWorker(l *link, addr bus.Address, calls <-chan []byte) {
	defer t.wg.Done()
	reply := sink{key: l.key, link: l}
	for frames := range calls {
		// Take the messages that came meanwhile too: their answers then
		// go back together.
		for more := true; more && len(frames) < linkMerge; {
			select {
			case next, ok := <-calls:
				if ok {
					frames = append(frames, next...)
				}
				more = ok
			default:
				more = false
			}
		}
		b := (*t.local.Load())[addr]
		if b == nil || !b.open() {
			t.refuse(frames, reply)
			continue
		}
		b.linkMu.RLock()
		if b.handedOver.Load() {
			b.linkMu.RUnlock()
			t.refuse(frames, reply)
			continue
		}
		t.serveFrames(b, frames, "", reply)
		b.linkMu.RUnlock()
	}
}

// open reports whether b serves what it receives: it is not waiting for
// the process it takes the address over from.
func (b *binding) open() bool {
	if b.gate == nil {
		return true
	}
	select {
	case <-b.gate:
		return true
	default:
		return false
	}
}

// refuse answers each call of frames with replyMoved.
func (t *Transport) refuse(frames []byte, reply sink) {
	var out []byte
	for len(frames) > 0 {
		frame, rest, ok := nextFrame(frames)
		if !ok {
			break
		}
		frames = rest
		if id, k := binary.Uvarint(frame); k > 0 {
			out = binary.AppendUvarint(out, uint64(uvarintLen(id)+1))
			out = binary.AppendUvarint(out, id)
			out = append(out, replyMoved)
		}
	}
	if len(out) > 0 {
		t.enqueueFrames(reply, out)
	}
}

// closeLinks closes the listener and every link; their goroutines then
// return.
func (t *Transport) closeLinks() {
	t.lmu.Lock()
	defer t.lmu.Unlock()
	t.linkClosed = true
	if t.listener != nil {
		_ = t.listener.Close()
	}
	for c := range t.linkConns {
		_ = c.Close()
	}
}

// write sends one message: addr ("" for answers), then frames.
func (l *link) write(addr string, frames []byte) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	n := uvarintLen(uint64(len(addr))) + len(addr) + len(frames)
	l.hdr = appendString(binary.AppendUvarint(l.hdr[:0], uint64(n)), addr)
	// A write that blocks for DefaultTimeout (a peer that stopped reading)
	// fails and breaks the link. The deadline moves only now and then: a
	// new one wakes the goroutine that polls the network.
	if now := time.Now(); now.After(l.renew) {
		_ = l.conn.SetWriteDeadline(now.Add(l.t.cfg.DefaultTimeout))
		l.renew = now.Add(l.t.cfg.DefaultTimeout / 2)
	}
	bufs := net.Buffers{l.hdr, frames}
	_, err := bufs.WriteTo(l.conn)
	return err
}

// readLinkMsg reads one message: its address and its frames.
func readLinkMsg(r *bufio.Reader) (addr string, frames []byte, err error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return "", nil, err
	}
	if n > linkMaxMessage {
		return "", nil, fmt.Errorf("message of %d bytes, over the link's limit of %d", n, linkMaxMessage)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return "", nil, err
	}
	addr, frames, ok := readString(body)
	if !ok {
		return "", nil, errors.New("malformed message")
	}
	return addr, frames, nil
}
