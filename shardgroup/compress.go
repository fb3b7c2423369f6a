package shardgroup

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/gorilla/websocket"
	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

// Compression is a gateway transport compression: Discord's compress
// query parameter. The whole connection is one compressed stream, read
// through one decompression context that lives as long as the
// connection.
type Compression string

// The transport compressions Discord offers.
const (
	// CompressionZstd is zstd-stream: each WebSocket message is one
	// gateway payload, flushed but not ending the zstd frame.
	CompressionZstd Compression = "zstd-stream"
	// CompressionZlib is zlib-stream: messages end with a sync flush
	// (00 00 ff ff); a payload may span several messages.
	CompressionZlib Compression = "zlib-stream"
	// CompressionNone sends plain JSON text.
	CompressionNone Compression = "none"
)

// DefaultCompression is what a zero Config.Compression means: zstd-stream.
// On the simulator's start-up (READY and GUILD_CREATE) and MESSAGE_CREATE
// stream it reads about a twentieth of the bytes of plain JSON, and
// zlib-stream's an eighth, for CPU within a few percent of plain JSON
// (go run ./bench -scenario compression); the simulator's payloads repeat
// more than Discord's, so real ratios are higher.
const DefaultCompression = CompressionZstd

// query is the URL parameter for c; ok is false for an unknown value.
func (c Compression) query() (q string, ok bool) {
	switch c {
	case CompressionZstd, CompressionZlib:
		return "&compress=" + string(c), true
	case CompressionNone:
		return "", true
	}
	return "", false
}

func (c Compression) validate() error {
	if _, ok := c.query(); !ok {
		return fmt.Errorf("shardgroup: unknown Compression %q: use %q, %q or %q", string(c), CompressionZstd, CompressionZlib, CompressionNone)
	}
	return nil
}

// errEndOfMessage unwinds a decompressor that asks for input past the end
// of the current message (see source).
var errEndOfMessage = errors.New("shardgroup: end of compressed message")

// source hands one WebSocket message at a time to a stream decompressor.
// Discord ends every message at a block boundary of the stream (zlib's
// sync flush, zstd's flush), so by the time a decompressor asks for a byte
// past the message it has produced all of the message's output and stands
// between two blocks, holding no partial state. source then panics with
// errEndOfMessage, which inflate recovers: unlike an error, the panic
// leaves nothing sticky in the decompressor, and the next message simply
// continues the stream. The decompressors read through io.ByteReader, so
// they never read ahead of what they decode. (zstd is read so that it
// seldom asks: see readZstd.)
type source struct {
	b   []byte
	off int
}

func (s *source) Read(p []byte) (int, error) {
	if s.off >= len(s.b) {
		if len(p) == 0 {
			return 0, nil
		}
		panic(errEndOfMessage)
	}
	n := copy(p, s.b[s.off:])
	s.off += n
	return n, nil
}

func (s *source) ReadByte() (byte, error) {
	if s.off >= len(s.b) {
		panic(errEndOfMessage)
	}
	c := s.b[s.off]
	s.off++
	return c, nil
}

// inflater is one connection's decompression context. It is used by the
// connection's read loop only; reset starts a new stream for a new
// connection, keeping the allocated state. A nil inflater (no
// compression) passes messages through.
type inflater struct {
	kind    Compression
	src     source
	out     bytes.Buffer // zlib: the payload, reused
	zout    []byte       // zstd: the payload, reused
	pending []byte       // zlib: a payload's first messages, until the flush
	started bool         // zlib: the stream header has been read

	fr io.ReadCloser // zlib: raw inflate, after the 2-byte zlib header
	zr *zstd.Decoder
}

func newInflater(kind Compression) *inflater {
	if kind == CompressionNone || kind == "" {
		return nil
	}
	return &inflater{kind: kind}
}

// reset prepares for a new connection's stream.
func (in *inflater) reset() error {
	if in == nil {
		return nil
	}
	in.src = source{}
	in.pending = in.pending[:0]
	in.started = false
	if in.kind == CompressionZstd {
		if in.zr == nil {
			// The stream's frame never ends, so its checksum, which
			// comes at the end of the frame, is never read: it is not
			// computed either.
			zr, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.IgnoreChecksum(true))
			if err != nil {
				return err
			}
			in.zr = zr
		}
		return in.zr.Reset(&in.src)
	}
	return nil
}

var zlibSuffix = []byte{0, 0, 0xff, 0xff}

// maxPending bounds a zlib payload waiting for its sync flush.
const maxPending = 64 << 20

// inflate decompresses one WebSocket message. It returns the payload, or
// nil while a zlib payload awaits its sync flush. The payload is valid
// until the next call. A text message passes through.
func (in *inflater) inflate(mt int, msg []byte) ([]byte, error) {
	if in == nil || mt != websocket.BinaryMessage {
		return msg, nil
	}
	if in.kind == CompressionZlib {
		if !bytes.HasSuffix(msg, zlibSuffix) {
			if len(in.pending)+len(msg) > maxPending {
				return nil, fmt.Errorf("zlib-stream: no sync flush in %d bytes", len(in.pending)+len(msg))
			}
			in.pending = append(in.pending, msg...)
			return nil, nil
		}
		if len(in.pending) > 0 {
			in.pending = append(in.pending, msg...)
			msg = in.pending
			defer func() { in.pending = in.pending[:0] }()
		}
		if !in.started {
			// RFC 1950 header: deflate, no preset dictionary.
			if len(msg) < 2 || msg[0]&0x0f != 8 || (uint16(msg[0])<<8|uint16(msg[1]))%31 != 0 || msg[1]&0x20 != 0 {
				return nil, errors.New("zlib-stream: bad zlib header")
			}
			msg = msg[2:]
			in.started = true
			in.src = source{b: msg}
			if in.fr == nil {
				in.fr = flate.NewReader(&in.src)
			} else if err := in.fr.(flate.Resetter).Reset(&in.src, nil); err != nil {
				return nil, err
			}
		}
	}
	in.src = source{b: msg}
	in.out.Reset()
	in.zout = in.zout[:0]
	if err := in.drain(); err != nil {
		return nil, fmt.Errorf("%s: %w", in.kind, err)
	}
	if in.kind == CompressionZstd {
		return in.zout, nil
	}
	return in.out.Bytes(), nil
}

// drain decompresses until the decompressor asks for more than the
// message holds.
func (in *inflater) drain() (err error) {
	defer func() {
		if v := recover(); v != nil {
			if v != errEndOfMessage { //nolint:errorlint // the sentinel itself
				panic(v)
			}
			err = nil
		}
		in.src.b = nil
	}()
	if in.kind == CompressionZstd {
		return in.readZstd()
	}
	_, err = in.out.ReadFrom(in.fr)
	if err == nil {
		err = io.ErrUnexpectedEOF // the stream ended: Discord never ends it
	}
	return err
}

// readZstd reads the message's output into zout. The decoder, reading
// synchronously, returns one block's output per Read, and asks the source
// for the next block only when a Read finds no output left: so once a
// Read has returned with room to spare and the source is empty, the
// message is whole, and no Read is made that would ask past it. (When a
// block's output exactly fills the room, the next Read may ask, and the
// source's panic ends the message as for zlib.)
func (in *inflater) readZstd() error {
	for {
		if cap(in.zout)-len(in.zout) < 512 {
			in.zout = slices.Grow(in.zout, max(4096, cap(in.zout)))
		}
		n, err := in.zr.Read(in.zout[len(in.zout):cap(in.zout)])
		in.zout = in.zout[:len(in.zout)+n]
		if err != nil {
			if err == io.EOF { //nolint:errorlint // the decoder returns it as is
				err = io.ErrUnexpectedEOF // the stream ended: Discord never ends it
			}
			return err
		}
		if in.src.off >= len(in.src.b) && len(in.zout) < cap(in.zout) {
			return nil
		}
	}
}
