package shardgroup

import (
	"bytes"
	"compress/zlib"
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/gorilla/websocket"
	"github.com/klauspost/compress/zstd"

	"github.com/gofleet/fleet/discordtest"
)

// payloads are JSON-like texts of many sizes: tiny, typical, larger than
// zlib's 32 KiB window and than zstd's 128 KiB block.
func payloads(n int) [][]byte {
	r := rand.New(rand.NewPCG(1, 2))
	out := make([][]byte, n)
	for i := range out {
		size := []int{2, 60, 700, 5000, 40_000, 200_000}[i%6]
		var b bytes.Buffer
		fmt.Fprintf(&b, `{"op":0,"s":%d,"d":"`, i)
		for b.Len() < size {
			fmt.Fprintf(&b, "member-%d-%d ", r.IntN(500), i)
			if r.IntN(4) == 0 {
				b.WriteByte(byte('a' + r.IntN(26)))
			}
		}
		b.WriteString(`"}`)
		out[i] = b.Bytes()
	}
	return out
}

// streams compresses payloads as a Discord gateway does: one stream per
// connection, one message per payload.
func compressStream(t testing.TB, kind Compression, ps [][]byte) [][]byte {
	t.Helper()
	var buf bytes.Buffer
	var flush func(p []byte)
	switch kind {
	case CompressionZlib:
		zw := zlib.NewWriter(&buf)
		flush = func(p []byte) { _, _ = zw.Write(p); _ = zw.Flush() }
	case CompressionZstd:
		zw, err := zstd.NewWriter(&buf, zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(1<<18))
		if err != nil {
			t.Fatal(err)
		}
		defer zw.Close()
		flush = func(p []byte) { _, _ = zw.Write(p); _ = zw.Flush() }
	}
	out := make([][]byte, len(ps))
	for i, p := range ps {
		buf.Reset()
		flush(p)
		out[i] = bytes.Clone(buf.Bytes())
	}
	return out
}

func TestInflateStream(t *testing.T) {
	ps := payloads(60)
	for _, kind := range []Compression{CompressionZlib, CompressionZstd} {
		t.Run(string(kind), func(t *testing.T) {
			in := newInflater(kind)
			// Two connections in a row: the context is reset between them.
			for conn := range 2 {
				if err := in.reset(); err != nil {
					t.Fatal(err)
				}
				msgs := compressStream(t, kind, ps)
				for i, m := range msgs {
					var got []byte
					var err error
					if kind == CompressionZlib && i%5 == 4 && len(m) > 8 {
						// A payload split over two messages.
						if got, err = in.inflate(websocket.BinaryMessage, m[:len(m)/2]); err != nil || got != nil {
							t.Fatalf("conn %d payload %d: first half gave %d bytes, %v", conn, i, len(got), err)
						}
						m = m[len(m)/2:]
					}
					got, err = in.inflate(websocket.BinaryMessage, m)
					if err != nil {
						t.Fatalf("conn %d payload %d: %v", conn, i, err)
					}
					if !bytes.Equal(got, ps[i]) {
						t.Fatalf("conn %d payload %d: got %d bytes, want %d", conn, i, len(got), len(ps[i]))
					}
				}
			}
			if got, err := in.inflate(websocket.TextMessage, []byte(`{"op":11}`)); err != nil || string(got) != `{"op":11}` {
				t.Fatalf("text message: %q %v", got, err)
			}
		})
	}
}

func TestInflateCorrupt(t *testing.T) {
	for _, kind := range []Compression{CompressionZlib, CompressionZstd} {
		in := newInflater(kind)
		if err := in.reset(); err != nil {
			t.Fatal(err)
		}
		msg := compressStream(t, kind, payloads(1))[0]
		bad := bytes.Clone(msg)
		for i := 2; i < len(bad)-4; i++ {
			bad[i] ^= 0x5a
		}
		if _, err := in.inflate(websocket.BinaryMessage, bad); err == nil {
			t.Errorf("%s: corrupt message decoded without error", kind)
		}
	}
}

func TestUnknownCompressionRefused(t *testing.T) {
	_, err := New(Config{Token: "t", ShardIDs: []int{0}, ShardCount: 1, IdentifyLimiter: noLimit{}, Compression: "gzip"})
	if err == nil {
		t.Fatal("New accepted Compression gzip")
	}
}

// TestGroupCompression runs a group with each transport compression:
// events arrive once each, and after a dropped connection the shard
// resumes on a new connection with a new decompression context.
func TestGroupCompression(t *testing.T) {
	for _, kind := range []Compression{CompressionNone, CompressionZlib, CompressionZstd} {
		t.Run(string(kind), func(t *testing.T) {
			srv := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithIdentifyWindow(time.Millisecond))
			defer srv.Close()
			sn := newSeen()
			g, err := New(Config{
				ShardIDs: []int{0, 1}, ShardCount: 2, Token: Token(srv.Token()), GatewayURL: srv.GatewayURL(),
				IdentifyLimiter: noLimit{}, Compression: kind,
				ClientOptions: []bot.ConfigOpt{quietREST, sn.listener()},
			})
			if err != nil {
				t.Fatal(err)
			}
			g.Start(t.Context())
			defer func() { _, _ = g.Stop(context.Background(), false) }()
			waitReady(t, g)
			dispatch(t, srv, 0, 20)
			sn.waitN(t, 20)
			srv.DropShard(0)
			srv.DropShard(1)
			waitFor(t, func() bool { return srv.Stats().Resumes >= 2 && g.Group().State() == StateReady })
			dispatch(t, srv, 20, 20)
			exactlyOnce(t, sn.waitN(t, 40), 40)
		})
	}
}

func BenchmarkInflate(b *testing.B) {
	frame := []byte(`{"op":0,"s":42,"t":"MESSAGE_CREATE","d":{"id":"1234567890123456789","channel_id":"1234567890123456790","guild_id":"1234567890123456000","author":{"id":"1234567890123451111","username":"user1","discriminator":"0","global_name":"User 1","avatar":null,"bot":false},"content":"load","timestamp":"2024-01-01T00:00:00Z","edited_timestamp":null,"tts":false,"mention_everyone":false,"mentions":[],"mention_roles":[],"attachments":[],"embeds":[],"pinned":false,"type":0,"nonce":"12"}}`)
	for _, kind := range []Compression{CompressionZlib, CompressionZstd} {
		b.Run(string(kind), func(b *testing.B) {
			ps := make([][]byte, 1000)
			for i := range ps {
				ps[i] = frame
			}
			msgs := compressStream(b, kind, ps)
			in := newInflater(kind)
			b.ReportAllocs()
			i := len(msgs)
			for b.Loop() {
				if i == len(msgs) {
					b.StopTimer()
					if err := in.reset(); err != nil {
						b.Fatal(err)
					}
					i = 0
					b.StartTimer()
				}
				if _, err := in.inflate(websocket.BinaryMessage, msgs[i]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// TestInflateZstdExactFill decodes zstd payloads whose output exactly
// fills the room the inflater has for it, so that it reads on and the
// message ends at the source: the stream goes on after each.
func TestInflateZstdExactFill(t *testing.T) {
	var ps [][]byte
	for _, n := range []int{4096, 8192, 100, 16384, 3, 32768, 4096} {
		p := bytes.Repeat([]byte("x"), n)
		copy(p, fmt.Sprintf("payload %d ", len(ps)))
		ps = append(ps, p)
	}
	in := newInflater(CompressionZstd)
	if err := in.reset(); err != nil {
		t.Fatal(err)
	}
	for i, m := range compressStream(t, CompressionZstd, ps) {
		got, err := in.inflate(websocket.BinaryMessage, m)
		if err != nil {
			t.Fatalf("payload %d: %v", i, err)
		}
		if !bytes.Equal(got, ps[i]) {
			t.Fatalf("payload %d: got %d bytes %.20q, want %d", i, len(got), got, len(ps[i]))
		}
	}
}
