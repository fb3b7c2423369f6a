package restproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// upstream is the Server's HTTP/1.1 client to Discord for the requests
// it holds whole (no body, or a kept one): it writes a request and reads
// its answer on the handler's goroutine. net/http's Transport runs two
// goroutines per connection and hands each request and each answer from
// one goroutine to another; every hand-off may wake another thread, and
// on a loaded machine each wake-up costs more than the request itself.
// Bodies that stream go through the Transport, which reads an early
// answer while it still sends.
//
// A connection Discord closed while idle must not be reused. When the
// process runs Go on one thread (GOMAXPROCS 1, cmd/restproxy's default),
// an idle connection has one goroutine (watchIdle) blocked reading it,
// and taking the connection ends that read with a deadline in the past: a
// hand-off between goroutines of that one thread, with no system call on
// the request's path (the read's own call happens once the previous
// request has ended). With more threads, each such hand-off may wake
// another thread, which costs more than a system call: an idle
// connection then has no goroutine, and is found closed before reuse by a
// non-blocking peek at its socket (alive). A request whose reused
// connection still turns out closed before any byte of the answer is sent
// again on a new one when the Transport would: when nothing of it was
// written, or its method is idempotent.
type upstream struct {
	addr          string      // host:port
	tls           *tls.Config // nil for http
	dialer        net.Dialer
	headerTimeout time.Duration
	idleTimeout   time.Duration
	maxIdle       int
	watch         bool // idle connections are watched, not peeked at

	mu     sync.Mutex // guards idle, closed
	idle   []*upConn  // most recently used last
	closed bool
	wg     sync.WaitGroup // the idle connections' watch goroutines
}

type upConn struct {
	nc    net.Conn
	raw   syscall.RawConn // of the TCP connection under nc
	br    *bufio.Reader
	bw    *bufio.Writer
	since time.Time  // idle since
	used  bool       // has carried a request
	seen  chan error // capacity 1: what watchIdle read while the connection was idle
}

// newUpstream returns the client for u, or nil when requests to u must go
// through a Transport: on a platform without alive, or when the
// environment names an HTTP proxy for u. It watches idle connections if
// GOMAXPROCS is 1 now.
func newUpstream(u *url.URL) *upstream {
	if !canPeek {
		return nil
	}
	if p, err := http.ProxyFromEnvironment(&http.Request{URL: u}); err != nil || p != nil {
		return nil
	}
	host, port := u.Hostname(), u.Port()
	up := &upstream{
		dialer:        net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second},
		headerTimeout: 60 * time.Second,
		idleTimeout:   90 * time.Second,
		maxIdle:       1024,
		watch:         runtime.GOMAXPROCS(0) == 1,
	}
	switch u.Scheme {
	case "https":
		if port == "" {
			port = "443"
		}
		up.tls = &tls.Config{ServerName: host, NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12}
	default:
		if port == "" {
			port = "80"
		}
	}
	up.addr = net.JoinHostPort(host, port)
	return up
}

// close closes the idle connections and waits for their watchIdle
// goroutines; connections in use close when their request ends.
func (u *upstream) close() {
	u.mu.Lock()
	idle := u.idle
	u.idle, u.closed = nil, true
	u.mu.Unlock()
	for _, c := range idle {
		_ = c.nc.Close()
	}
	u.wg.Wait()
}

// aLongTimeAgo is a deadline that has passed: it ends a blocked read at
// once.
var aLongTimeAgo = time.Unix(1, 0)

// get returns an idle connection that is still open, or dials one.
func (u *upstream) get(ctx context.Context) (*upConn, error) {
	now := time.Now()
	for {
		u.mu.Lock()
		n := len(u.idle)
		if n == 0 {
			u.mu.Unlock()
			break
		}
		c := u.idle[n-1]
		u.idle[n-1] = nil
		u.idle = u.idle[:n-1]
		u.mu.Unlock()
		var open bool
		if u.watch {
			// End the watch; it read nothing, the end or an error.
			_ = c.nc.SetReadDeadline(aLongTimeAgo)
			err := <-c.seen
			open = errors.Is(err, os.ErrDeadlineExceeded) && c.br.Buffered() == 0
		} else {
			open = c.br.Buffered() == 0 && alive(c.raw)
		}
		if open && now.Sub(c.since) < u.idleTimeout {
			return c, nil // exchange sets the read deadline it needs
		}
		_ = c.nc.Close()
	}
	return u.dial(ctx)
}

// watchIdle reads the idle connection c until Discord closes it, sends
// something unasked, or get ends the read, and leaves what it read in
// c.br and its error in c.seen.
func (u *upstream) watchIdle(c *upConn) {
	defer u.wg.Done()
	_, err := c.br.Peek(1)
	c.seen <- err
}

func (u *upstream) dial(ctx context.Context) (*upConn, error) {
	nc, err := u.dialer.DialContext(ctx, "tcp", u.addr)
	if err != nil {
		return nil, err
	}
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		_ = nc.Close()
		return nil, errors.New("restproxy: upstream connection is not TCP")
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	if u.tls != nil {
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		t := tls.Client(nc, u.tls)
		if err := t.HandshakeContext(hctx); err != nil {
			_ = nc.Close()
			return nil, err
		}
		nc = t
	}
	return &upConn{nc: nc, raw: raw, br: bufio.NewReaderSize(nc, 4<<10), bw: bufio.NewWriterSize(nc, 4<<10), seen: make(chan error, 1)}, nil
}

// put makes c idle (and watched), or closes it when the pool is full or
// closed, and closes the connections idle for longer than idleTimeout.
func (u *upstream) put(c *upConn) {
	now := time.Now()
	c.since = now
	var drop []*upConn
	u.mu.Lock()
	if u.closed || len(u.idle) >= u.maxIdle {
		drop = append(drop, c)
	} else {
		u.idle = append(u.idle, c)
		if u.watch {
			_ = c.nc.SetReadDeadline(time.Time{})
			u.wg.Add(1)
			go u.watchIdle(c)
		}
	}
	for len(u.idle) > 0 && now.Sub(u.idle[0].since) >= u.idleTimeout {
		drop = append(drop, u.idle[0])
		u.idle[0] = nil
		u.idle = u.idle[1:]
	}
	u.mu.Unlock()
	for _, c := range drop {
		_ = c.nc.Close()
	}
}

// errClosedIdle is a reused connection found closed before any byte of
// the answer.
var errClosedIdle = errors.New("restproxy: upstream closed an idle connection")

// roundTrip sends req, whose body is nil or replayable (GetBody set), and
// returns its answer; the answer's body gives the connection back when
// read to its end and closed. ctx ending closes the connection.
func (u *upstream) roundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	for {
		c, err := u.get(ctx)
		if err != nil {
			return nil, err
		}
		rs, written, err := u.exchange(ctx, c, req)
		if err == nil {
			return rs, nil
		}
		if !c.used || ctx.Err() != nil || !(!written || (errors.Is(err, errClosedIdle) && replayable(req.Method))) {
			return nil, err
		}
		// A reused connection Discord closed as it was taken: send again
		// on another.
		if req.GetBody != nil {
			if req.Body, err = req.GetBody(); err != nil {
				return nil, err
			}
		}
	}
}

// replayable reports whether the Transport would send a request again
// after its connection closed before the answer: methods that change
// nothing.
func replayable(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// exchange writes req on c and reads the answer's header. On an error it
// closes c and says whether any of req was written.
func (u *upstream) exchange(ctx context.Context, c *upConn, req *http.Request) (*http.Response, bool, error) {
	stop := context.AfterFunc(ctx, func() { _ = c.nc.SetDeadline(time.Unix(1, 0)) })
	fail := func(written bool, err error) (*http.Response, bool, error) {
		stop()
		_ = c.nc.Close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, written, err
	}
	if err := req.Write(c.bw); err != nil {
		return fail(true, err) // a part may have gone: the buffer is smaller than a kept body
	}
	n := c.bw.Buffered()
	if err := c.bw.Flush(); err != nil {
		return fail(c.bw.Buffered() != n, err) // what is still buffered was not written
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(u.headerTimeout))
	if ctx.Err() != nil { // the deadline set just now may have replaced ctx's
		return fail(true, ctx.Err())
	}
	if _, err := c.br.Peek(1); err != nil {
		if c.used && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
			err = errClosedIdle
		}
		return fail(true, err)
	}
	var rs *http.Response
	for {
		var err error
		if rs, err = http.ReadResponse(c.br, req); err != nil {
			return fail(true, err)
		}
		if rs.StatusCode >= 200 || rs.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		// 1xx: the answer follows.
	}
	_ = c.nc.SetReadDeadline(time.Time{})
	if ctx.Err() != nil { // its deadline may have been cleared just now
		_ = rs.Body.Close()
		return fail(true, ctx.Err())
	}
	c.used = true
	rs.Body = &upBody{rc: rs.Body, u: u, c: c, stop: stop, keep: !rs.Close && rs.StatusCode != http.StatusSwitchingProtocols}
	return rs, true, nil
}

// upBody is an answer's body; its connection goes back to the pool when
// the body was read to its end and is closed.
type upBody struct {
	rc   io.ReadCloser
	u    *upstream
	c    *upConn
	stop func() bool
	keep bool
	eof  bool
	done bool
}

func (b *upBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, errBodyClosed
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *upBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	err := b.rc.Close()
	// stop is false when ctx ended: the connection's deadline is broken.
	if b.stop() && b.eof && b.keep && err == nil {
		b.u.put(b.c)
	} else {
		_ = b.c.nc.Close()
	}
	return err
}
