package discordtest

import (
	"bytes"
	"compress/zlib"
	"io"
	"testing"

	"github.com/gorilla/websocket"
)

// zlibClient reads a zlib-stream connection: one inflate context for the
// connection's life, each message ending in a sync flush.
type zlibClient struct {
	ws  *websocket.Conn
	buf bytes.Buffer
	zr  io.ReadCloser
}

func dialZlib(url string) (*zlibClient, *websocket.Conn, error) {
	ws, _, err := websocket.DefaultDialer.Dial(url+"?v=10&encoding=json&compress=zlib-stream", nil)
	if err != nil {
		return nil, nil, err
	}
	return &zlibClient{ws: ws}, ws, nil
}

func (z *zlibClient) Close() { _ = z.ws.Close() }

func (z *zlibClient) read(t *testing.T) string {
	t.Helper()
	mt, data, err := z.ws.ReadMessage()
	if err != nil || mt != websocket.BinaryMessage {
		t.Fatalf("read: type %d err %v", mt, err)
	}
	if !bytes.HasSuffix(data, []byte{0, 0, 0xff, 0xff}) {
		t.Fatal("message does not end with a sync flush")
	}
	z.buf.Write(data)
	if z.zr == nil {
		if z.zr, err = zlib.NewReader(&z.buf); err != nil {
			t.Fatal(err)
		}
	}
	out := make([]byte, 64<<10)
	n, err := z.zr.Read(out)
	if err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return string(out[:n])
}
