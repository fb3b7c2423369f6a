package natsfleet_test

import (
	"io"
	"net"
	"strings"
	"sync"
	"testing"
)

// cutter is a loopback TCP proxy to a NATS server whose connections can
// be cut (closed, and new ones refused) and restored, as a network
// partition between one host and NATS.
type cutter struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex // guards conns, isCut
	conns map[net.Conn]struct{}
	isCut bool
}

func newCutter(t *testing.T, natsURL string) *cutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{ln: ln, target: strings.TrimPrefix(natsURL, "nats://"), conns: map[net.Conn]struct{}{}}
	c.wg.Go(c.accept)
	t.Cleanup(c.close)
	return c
}

// URL is the proxy's NATS URL.
func (c *cutter) URL() string { return "nats://" + c.ln.Addr().String() }

func (c *cutter) accept() {
	for {
		in, err := c.ln.Accept()
		if err != nil {
			return
		}
		c.mu.Lock()
		cut := c.isCut
		c.mu.Unlock()
		if cut {
			_ = in.Close()
			continue
		}
		out, err := net.Dial("tcp", c.target)
		if err != nil {
			_ = in.Close()
			continue
		}
		c.mu.Lock()
		c.conns[in], c.conns[out] = struct{}{}, struct{}{}
		c.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			_ = dst.Close()
			_ = src.Close()
			c.mu.Lock()
			delete(c.conns, dst)
			delete(c.conns, src)
			c.mu.Unlock()
		}
		c.wg.Go(func() { pipe(out, in) })
		c.wg.Go(func() { pipe(in, out) })
	}
}

// cut closes every connection and refuses new ones until restore.
func (c *cutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.isCut = true
	for conn := range c.conns {
		_ = conn.Close()
	}
}

func (c *cutter) restore() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.isCut = false
}

func (c *cutter) close() {
	_ = c.ln.Close()
	c.cut()
	c.wg.Wait()
}
