package multihost

import (
	"io"
	"net"
	"sync"
)

// Cutter is a TCP proxy on 127.0.0.1 in front of one address: a host
// whose only NATS URL is the Cutter's can be cut off (every connection
// dropped, new ones refused) and let back in, as a network partition
// would.
type Cutter struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex // guards cut, conns, closed
	cut   bool
	conns map[net.Conn]struct{}
}

// NewCutter listens on a free loopback port and forwards to target.
func NewCutter(target string) (*Cutter, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c := &Cutter{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	c.wg.Go(c.accept)
	return c, nil
}

// Addr returns host:port of the proxy.
func (c *Cutter) Addr() string { return c.ln.Addr().String() }

func (c *Cutter) accept() {
	for {
		in, err := c.ln.Accept()
		if err != nil {
			return
		}
		c.mu.Lock()
		if c.cut {
			c.mu.Unlock()
			in.Close()
			continue
		}
		out, err := net.Dial("tcp", c.target)
		if err != nil {
			c.mu.Unlock()
			in.Close()
			continue
		}
		c.conns[in], c.conns[out] = struct{}{}, struct{}{}
		c.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
			c.mu.Lock()
			delete(c.conns, dst)
			delete(c.conns, src)
			c.mu.Unlock()
		}
		c.wg.Go(func() { pipe(out, in) })
		c.wg.Go(func() { pipe(in, out) })
	}
}

// Cut drops every connection and refuses new ones until Restore.
func (c *Cutter) Cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut = true
	for conn := range c.conns {
		conn.Close()
	}
}

// Restore accepts connections again.
func (c *Cutter) Restore() {
	c.mu.Lock()
	c.cut = false
	c.mu.Unlock()
}

// Close stops the proxy and every connection, and waits for them.
func (c *Cutter) Close() {
	c.ln.Close()
	c.Cut()
	c.wg.Wait()
}
