package discordtest

import (
	"bytes"
	"compress/zlib"
	"fmt"
	"slices"

	"github.com/klauspost/compress/zstd"
)

// Transport compressions (the compress query parameter of the gateway
// URL). Any other value is refused: the connection is closed with 4002
// before HELLO, as an unsupported encoding is, and is never answered in
// another compression. (Discord's documentation names no close code for
// it; the simulator uses the decode-error code it uses for encodings.)
const (
	compressZlib = "zlib-stream"
	compressZstd = "zstd-stream"
)

// WithCompressions limits the transport compressions the gateway accepts
// (by default zlib-stream and zstd-stream); a connection asking for
// another one is refused with 4002. Uncompressed connections are always
// accepted.
func WithCompressions(values ...string) Option {
	return func(c *config) error {
		for _, v := range values {
			if v != compressZlib && v != compressZstd {
				return fmt.Errorf("discordtest: WithCompressions: unknown compression %q (have %s, %s)", v, compressZlib, compressZstd)
			}
		}
		c.compressions = append([]string{}, values...)
		return nil
	}
}

// acceptsCompress reports whether the gateway serves a compress value
// ("" is none).
func (s *Server) acceptsCompress(v string) bool {
	if v == "" {
		return true
	}
	if s.cfg.compressions == nil {
		return v == compressZlib || v == compressZstd
	}
	return slices.Contains(s.cfg.compressions, v)
}

// zstdWindow is the zstd-stream window: history shared by all the
// messages of a connection, as large as a client must keep.
const zstdWindow = 256 << 10

// streamCompressor is one connection's transport compression context,
// owned by its writer. Each payload comes out as one WebSocket message:
// zlib ends it with a sync flush, zstd with a block flush that does not
// end the frame.
type streamCompressor struct {
	buf bytes.Buffer
	zw  *zlib.Writer
	zs  *zstd.Encoder
}

func newStreamCompressor(kind string) *streamCompressor {
	sc := &streamCompressor{}
	switch kind {
	case compressZlib:
		sc.zw = zlib.NewWriter(&sc.buf)
	case compressZstd:
		// Errors come only from invalid options.
		sc.zs, _ = zstd.NewWriter(&sc.buf, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithWindowSize(zstdWindow), zstd.WithLowerEncoderMem(true))
	default:
		return nil
	}
	return sc
}

// compress returns p compressed, valid until the next call.
func (sc *streamCompressor) compress(p []byte) []byte {
	sc.buf.Reset()
	if sc.zw != nil {
		_, _ = sc.zw.Write(p)
		_ = sc.zw.Flush()
	} else {
		_, _ = sc.zs.Write(p)
		_ = sc.zs.Flush()
	}
	return sc.buf.Bytes()
}

func (sc *streamCompressor) close() {
	if sc == nil {
		return
	}
	if sc.zw != nil {
		_ = sc.zw.Close()
	}
	if sc.zs != nil {
		_ = sc.zs.Close()
	}
}
