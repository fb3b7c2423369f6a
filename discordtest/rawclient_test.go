package discordtest

import (
	"bytes"
	"compress/zlib"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// rawClient is a bare websocket client that speaks the gateway protocol by
// hand, for provoking exact server behaviour.
type rawClient struct {
	t  testing.TB
	ws *websocket.Conn
}

type rawMsg struct {
	Op int             `json:"op"`
	S  *int            `json:"s"`
	T  string          `json:"t"`
	D  json.RawMessage `json:"d"`
}

func dialRaw(t testing.TB, url string) *rawClient {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial(url+"?v=10&encoding=json", nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c := &rawClient{t: t, ws: ws}
	t.Cleanup(func() { _ = ws.Close() })
	hello := c.read()
	if hello.Op != opHello {
		t.Fatalf("first payload op %d, want HELLO", hello.Op)
	}
	return c
}

func (c *rawClient) send(v any) {
	c.t.Helper()
	b, ok := v.([]byte)
	if !ok {
		var err error
		if b, err = json.Marshal(v); err != nil {
			c.t.Fatal(err)
		}
	}
	if err := c.ws.WriteMessage(websocket.TextMessage, b); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// next reads one payload or returns the close error.
func (c *rawClient) next() (rawMsg, error) {
	_ = c.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	mt, data, err := c.ws.ReadMessage()
	if err != nil {
		return rawMsg{}, err
	}
	if mt == websocket.BinaryMessage {
		zr, err := zlib.NewReader(bytes.NewReader(data))
		if err != nil {
			return rawMsg{}, err
		}
		if data, err = io.ReadAll(zr); err != nil {
			return rawMsg{}, err
		}
	}
	var m rawMsg
	if err := json.Unmarshal(data, &m); err != nil {
		return rawMsg{}, fmt.Errorf("decode %q: %w", data, err)
	}
	return m, nil
}

func (c *rawClient) read() rawMsg {
	c.t.Helper()
	m, err := c.next()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return m
}

// readDispatch reads until a dispatch of type t and returns it.
func (c *rawClient) readDispatch(t string) rawMsg {
	c.t.Helper()
	for {
		m := c.read()
		if m.Op == opDispatch && m.T == t {
			return m
		}
	}
}

// closeCode reads until the server closes and returns the close code.
func (c *rawClient) closeCode() int {
	c.t.Helper()
	for {
		_, err := c.next()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		c.t.Fatalf("connection ended without a close frame: %v", err)
	}
}

func identifyMsg(token string, shard, shards int, intents int64) map[string]any {
	return map[string]any{"op": opIdentify, "d": map[string]any{
		"token": token, "intents": intents, "shard": [2]int{shard, shards},
		"properties": map[string]string{"os": "linux", "browser": "test", "device": "test"},
	}}
}

// identify sends IDENTIFY and reads READY; it returns the session ID.
func (c *rawClient) identify(token string, shard, shards int) (string, int) {
	c.t.Helper()
	c.send(identifyMsg(token, shard, shards, 513))
	m := c.readDispatch("READY")
	var r struct {
		SessionID string `json:"session_id"`
	}
	if err := json.Unmarshal(m.D, &r); err != nil {
		c.t.Fatal(err)
	}
	return r.SessionID, *m.S
}
