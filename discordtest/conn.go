package discordtest

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

const (
	closeDrop       = -1 // drop the TCP connection without a close frame
	maxPayload      = 4096
	compressMin     = 1024 // payload compression applies to larger frames only
	writeBatch      = 128
	ctrlQueue       = 16
	writeBufferSize = 8 << 10
)

type upgrader struct{ websocket.Upgrader }

func newUpgrader() upgrader {
	return upgrader{websocket.Upgrader{
		ReadBufferSize:  1024,
		WriteBufferPool: &sync.Pool{}, // writes bypass gorilla: never allocate its buffer
		CheckOrigin:     func(*http.Request) bool { return true },
	}}
}

// frame is a control payload for the writer: a websocket opcode and data.
// after, when set, is a sequence of the attached session that must be
// written before the frame (a heartbeat ACK follows the dispatches queued
// before its heartbeat, as on Discord's socket).
type frame struct {
	op    int
	data  []byte
	after int
}

// conn is one gateway connection. Its reader runs in the HTTP handler
// goroutine; its writer is the only goroutine that writes to the socket,
// raw websocket frames into a buffered writer, so a burst of dispatches
// costs one system call.
type conn struct {
	s        *Server
	ws       *websocket.Conn
	nc       net.Conn
	resume   bool   // connected on the resume URL
	stream   string // transport compression: "", zlib-stream or zstd-stream
	wake     chan struct{}
	ctrl     chan frame
	closing  chan struct{}
	wdone    chan struct{}
	once     sync.Once
	code     int // close code, set once before closing is closed
	reason   string
	clientCl int // close code the client sent, set by the reader

	noAcks     atomic.Bool
	latency    atomic.Int64
	eventsSent atomic.Int64
	shard      atomic.Int64 // -1 until identified or resumed
	pending    atomic.Bool  // a handshake is held by HoldShard

	// sent is the last sequence written; guarded by the attached
	// session's mu.
	sent int

	attached atomic.Pointer[session] // set by the reader on IDENTIFY/RESUME
	compress atomic.Bool             // IDENTIFY asked for payload compression

	// reader-owned
	cmds []int64 // ring of command times (unix ns) for the 120/60 s limit
	cmdN int
}

func (c *conn) shardID() int { return int(c.shard.Load()) }

func (c *conn) wakeWriter() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// close asks the writer to send a close frame with code (or to drop the
// connection for closeDrop) and end the connection. Only the first call
// counts.
func (c *conn) close(code int, reason string) {
	c.once.Do(func() {
		c.code, c.reason = code, reason
		close(c.closing)
	})
}

// sendCtrl queues a control payload; it gives up when the connection is
// closing.
func (c *conn) sendCtrl(op int, data []byte) {
	select {
	case c.ctrl <- frame{op: op, data: data}:
	case <-c.closing:
	}
}

func (c *conn) sendJSON(data []byte) { c.sendCtrl(websocket.TextMessage, data) }

// sendAck queues a heartbeat ACK behind every dispatch queued so far.
func (c *conn) sendAck() {
	f := frame{op: websocket.TextMessage, data: []byte(`{"op":11,"d":null,"s":null,"t":null}`)}
	if ss := c.attached.Load(); ss != nil {
		ss.mu.Lock()
		f.after = ss.seq
		ss.mu.Unlock()
	}
	select {
	case c.ctrl <- f:
	case <-c.closing:
	}
}

func (c *conn) writeLoop() {
	defer close(c.wdone)
	// The write buffer is borrowed only while there is something to
	// write, so an idle connection holds none.
	var bw *bufio.Writer
	defer func() {
		if bw != nil {
			bufPool.Put(bw)
		}
	}()
	var (
		buf   = make([]entry, writeBatch)
		fb    []byte // frame scratch
		zbuf  bytes.Buffer
		sc    *streamCompressor // transport compression context, for the connection's life
		broke bool
	)
	defer func() { sc.close() }()
	write := func(op int, p []byte) {
		if broke {
			return
		}
		if c.stream != "" && op != websocket.CloseMessage && op != websocket.PongMessage {
			if sc == nil {
				sc = newStreamCompressor(c.stream)
			}
			p, op = sc.compress(p), websocket.BinaryMessage
		} else if c.compress.Load() && len(p) >= compressMin && op == websocket.TextMessage {
			zbuf.Reset()
			w := getZlib(&zbuf)
			_, _ = w.Write(p)
			_ = w.Close()
			putZlib(w)
			p, op = zbuf.Bytes(), websocket.BinaryMessage
		}
		if bw == nil {
			bw = getBuf(c.nc)
		}
		if err := writeFrame(bw, op, p); err != nil {
			broke = true
			c.close(closeDrop, "")
		}
	}
	// dispatches writes a batch of queued dispatches and returns the last
	// sequence written, or 0.
	dispatches := func() int {
		ss := c.sess0()
		if ss == nil {
			return 0
		}
		es, from := ss.take(c, buf)
		for i, e := range es {
			fb = appendDispatch(fb[:0], e.t, from+i, e.d)
			write(websocket.TextMessage, fb)
		}
		if len(es) == 0 {
			return 0
		}
		c.eventsSent.Add(int64(len(es)))
		ss.markSent(c, from+len(es)-1)
		return from + len(es) - 1
	}
	ctrl := func(f frame) {
		for f.after > 0 && !broke {
			if last := dispatches(); last == 0 || last >= f.after {
				break
			}
		}
		write(f.op, f.data)
	}
	for {
		select {
		case <-c.closing:
			if bw == nil {
				bw = getBuf(c.nc)
			}
			c.finish(bw)
			return
		case f := <-c.ctrl:
			c.delay()
			ctrl(f)
		case <-c.wake:
			c.delay()
		}
		for !broke {
			progressed := false
			for n := 0; n < ctrlQueue; n++ {
				select {
				case f := <-c.ctrl:
					ctrl(f)
					progressed = true
					continue
				default:
				}
				break
			}
			if dispatches() > 0 {
				progressed = true
			}
			if !progressed {
				break
			}
		}
		if bw != nil {
			if !broke && bw.Flush() != nil {
				broke = true
				c.close(closeDrop, "")
			}
			bw.Reset(nil)
			bufPool.Put(bw)
			bw = nil
		}
	}
}

// sess0 is the session the writer serves, or nil before IDENTIFY/RESUME.
func (c *conn) sess0() *session { return c.attached.Load() }

// delay waits the injected latency, or until the connection closes.
func (c *conn) delay() {
	d := time.Duration(c.latency.Load())
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.closing:
	}
}

// finish writes the close frame, if any, and closes the socket.
func (c *conn) finish(bw *bufio.Writer) {
	if c.code != closeDrop {
		p := make([]byte, 2, 2+len(c.reason))
		binary.BigEndian.PutUint16(p, uint16(c.code))
		p = append(p, c.reason...)
		_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		if writeFrame(bw, websocket.CloseMessage, p) == nil {
			_ = bw.Flush()
		}
	}
	_ = c.nc.Close()
}

// writeFrame writes one unmasked server frame.
func writeFrame(w *bufio.Writer, op int, p []byte) error {
	var h [10]byte
	h[0] = 0x80 | byte(op)
	n := 2
	switch l := len(p); {
	case l < 126:
		h[1] = byte(l)
	case l <= 0xffff:
		h[1] = 126
		binary.BigEndian.PutUint16(h[2:], uint16(l))
		n = 4
	default:
		h[1] = 127
		binary.BigEndian.PutUint64(h[2:], uint64(l))
		n = 10
	}
	if _, err := w.Write(h[:n]); err != nil {
		return err
	}
	_, err := w.Write(p)
	return err
}

func appendDispatch(b []byte, t string, seq int, d []byte) []byte {
	b = append(b, `{"op":0,"s":`...)
	b = strconv.AppendInt(b, int64(seq), 10)
	b = append(b, `,"t":"`...)
	b = append(b, t...)
	b = append(b, `","d":`...)
	b = append(b, d...)
	return append(b, '}')
}

var (
	zlibPool sync.Pool
	bufPool  sync.Pool
)

func getBuf(w net.Conn) *bufio.Writer {
	if b, ok := bufPool.Get().(*bufio.Writer); ok {
		b.Reset(w)
		return b
	}
	return bufio.NewWriterSize(w, writeBufferSize)
}

func getZlib(w *bytes.Buffer) *zlib.Writer {
	if z, ok := zlibPool.Get().(*zlib.Writer); ok {
		z.Reset(w)
		return z
	}
	return zlib.NewWriter(w)
}

func putZlib(z *zlib.Writer) { zlibPool.Put(z) }
