package discordtest

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
	"github.com/klauspost/compress/zstd"
)

func TestZstdStreamHello(t *testing.T) {
	s := NewServer()
	defer s.Close()
	ws, _, err := websocket.DefaultDialer.Dial(s.GatewayURL()+"?v=10&encoding=json&compress=zstd-stream", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	mt, data, err := ws.ReadMessage()
	if err != nil || mt != websocket.BinaryMessage {
		t.Fatalf("read: type %d err %v", mt, err)
	}
	zr, err := zstd.NewReader(struct{ io.Reader }{bytes.NewReader(data)}, zstd.WithDecoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	// The frame does not end with the message: reading past it fails.
	var out bytes.Buffer
	if _, err := out.ReadFrom(zr); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("stream ended with %v, want io.ErrUnexpectedEOF", err)
	}
	if !strings.HasPrefix(out.String(), `{"op":10,"d":{"heartbeat_interval":`) {
		t.Fatalf("HELLO decoded as %q", out.String())
	}
}

func TestUnknownCompressRefused(t *testing.T) {
	for _, tc := range []struct {
		compress string
		opts     []Option
	}{
		{"gzip", nil},
		{"zstd-stream", []Option{WithCompressions("zlib-stream")}},
	} {
		s := NewServer(tc.opts...)
		ws, _, err := websocket.DefaultDialer.Dial(s.GatewayURL()+"?v=10&encoding=json&compress="+tc.compress, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, data, err := ws.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != CloseDecodeError {
			t.Errorf("%s: got message %q, err %v; want close %d before HELLO", tc.compress, data, err, CloseDecodeError)
		}
		ws.Close()
		s.Close()
	}
}
