package shardgroup

import (
	"bytes"
	"context"
	"encoding/json"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/cache"
	"github.com/disgoorg/disgo/events"
	"github.com/gorilla/websocket"
	"github.com/klauspost/compress/zstd"

	"github.com/gofleet/fleet/discordtest"
)

// loadFrames returns what one shard of the simulator sends a client, as
// plain JSON: READY and the GUILD_CREATEs of its guilds (start), then n
// MESSAGE_CREATEs spread over the guilds, as the simulator's Load sends
// them (msgs); and the simulator's bot token.
func loadFrames(tb testing.TB, guilds, n int) (start, msgs [][]byte, token string) {
	tb.Helper()
	srv := discordtest.NewServer(discordtest.WithGuilds(guilds), discordtest.WithIdentifyWindow(time.Millisecond))
	defer srv.Close()
	ws, _, err := websocket.DefaultDialer.Dial(srv.GatewayURL()+"?v=10&encoding=json", nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer ws.Close()
	identify, _ := json.Marshal(map[string]any{"op": 2, "d": map[string]any{"token": srv.Token(), "intents": 513,
		"properties": map[string]string{"os": "linux", "browser": "test", "device": "test"}}})
	if err := ws.WriteMessage(websocket.TextMessage, identify); err != nil {
		tb.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	read := func() (string, []byte) {
		tb.Helper()
		_, data, err := ws.ReadMessage()
		if err != nil {
			tb.Fatalf("read: %v", err)
		}
		var e struct {
			T string `json:"t"`
		}
		_ = json.Unmarshal(data, &e)
		return e.T, data
	}
	for created := 0; created < guilds; {
		t, data := read()
		switch t {
		case "READY", "GUILD_CREATE":
			start = append(start, data)
			if t == "GUILD_CREATE" {
				created++
			}
		}
	}
	for i := range n {
		gid := srv.GuildID(i % guilds)
		if _, err := srv.Dispatch(gid, "MESSAGE_CREATE", srv.MessageCreate(gid, "load", i)); err != nil {
			tb.Fatal(err)
		}
		for {
			if t, data := read(); t == "MESSAGE_CREATE" {
				msgs = append(msgs, data)
				break
			}
		}
	}
	return start, msgs, srv.Token()
}

// zstdMessages compresses payloads as the simulator's zstd-stream does:
// one stream, one flushed message per payload.
func zstdMessages(tb testing.TB, ps [][]byte) [][]byte {
	tb.Helper()
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithWindowSize(256<<10), zstd.WithLowerEncoderMem(true))
	if err != nil {
		tb.Fatal(err)
	}
	defer zw.Close()
	out := make([][]byte, len(ps))
	for i, p := range ps {
		buf.Reset()
		_, _ = zw.Write(p)
		_ = zw.Flush()
		out[i] = bytes.Clone(buf.Bytes())
	}
	return out
}

// processCPU is the CPU time the process has used, in nanoseconds.
func processCPU(tb testing.TB) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// BenchmarkFrame measures what a shard does with one MESSAGE_CREATE after
// reading it from its socket: decompress, decode, disgo's handler on the
// caches the runtime keeps by default, and a listener of
// events.MessageCreate. The messages are the simulator's.
func BenchmarkFrame(b *testing.B) {
	const guilds, distinct = 8, 64
	start, msgs, token := loadFrames(b, guilds, distinct)
	// A long stream, so that a zstd context rarely restarts.
	stream := make([][]byte, 0, 16*distinct)
	for range 16 {
		stream = append(stream, msgs...)
	}
	for _, kind := range []Compression{CompressionNone, CompressionZstd} {
		b.Run(string(kind), func(b *testing.B) {
			var got atomic.Int64
			g, err := New(Config{
				ShardIDs: []int{0}, ShardCount: 1, Token: Token(token), IdentifyLimiter: noLimit{}, Compression: kind,
				ClientOptions: []bot.ConfigOpt{quietREST,
					bot.WithCacheConfigOpts(cache.WithCaches(cache.FlagGuilds | cache.FlagChannels | cache.FlagRoles | cache.FlagMembers)),
					bot.WithEventListenerFunc(func(*events.MessageCreate) { got.Add(1) }),
				},
			})
			if err != nil {
				b.Fatal(err)
			}
			s := g.g.shards[0]
			for _, f := range start {
				m, err := decodeMessage(bytes.Clone(f))
				if err != nil {
					b.Fatal(err)
				}
				s.dispatch(context.Background(), m, f)
			}
			if !g.Group().Loaded() {
				b.Fatal("the guilds did not load")
			}
			wire, mt := stream, websocket.TextMessage
			if kind == CompressionZstd {
				wire, mt = zstdMessages(b, stream), websocket.BinaryMessage
			}
			s.in = newInflater(kind)
			if err := s.in.reset(); err != nil {
				b.Fatal(err)
			}
			frame := make([]byte, 0, 4096) // the read loop's buffer
			i := 0
			b.ReportAllocs()
			cpu0 := processCPU(b)
			for b.Loop() {
				if i == len(wire) {
					b.StopTimer()
					if err := s.in.reset(); err != nil {
						b.Fatal(err)
					}
					i = 0
					b.StartTimer()
				}
				frame = append(frame[:0], wire[i]...)
				i++
				data, err := s.in.inflate(mt, frame)
				if err != nil {
					b.Fatal(err)
				}
				m, err := decodeMessage(data)
				if err != nil {
					b.Fatal(err)
				}
				s.dispatch(context.Background(), m, data)
			}
			// The process's CPU time per frame, the garbage collector's
			// included: on a shared machine it varies less than wall time.
			b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
			if got.Load() == 0 {
				b.Fatal("no MESSAGE_CREATE reached the listener")
			}
		})
	}
}
