package shardgroup

import (
	"encoding/json"
	"fmt"

	"github.com/disgoorg/disgo/gateway"
	djson "github.com/disgoorg/json"
	gojson "github.com/goccy/go-json"
)

// disgo decodes every JSON value through github.com/disgoorg/json, whose
// Unmarshal is a variable meant to be replaced by a compatible codec. The
// fleet replaces it, once, before any goroutine runs, with
// github.com/goccy/go-json: a pure-Go decoder (every platform) that
// follows encoding/json's rules, calls the same UnmarshalJSON methods,
// copies the strings and raw values it keeps, and decodes a
// MESSAGE_CREATE for about a fifth of encoding/json's CPU. The fleet's
// tests compare its results with encoding/json's on a corpus of
// dispatches (decode_test.go).
//
// A program that wants encoding/json back sets djson.Unmarshal =
// json.Unmarshal in its main, before starting anything.
func init() { djson.Unmarshal = gojson.Unmarshal }

// envelope is a gateway payload with its data left raw: the envelope is
// read once and d is decoded by its type alone.
type envelope struct {
	Op gateway.Opcode    `json:"op"`
	S  int               `json:"s"`
	T  gateway.EventType `json:"t"`
	D  json.RawMessage   `json:"d"`
}

// decodeMessage decodes one gateway payload as disgo's gateway.Message
// does: the envelope once, then d by the payload's opcode and type alone.
// RawD is d's text, in memory of its own (data may be reused).
func decodeMessage(data []byte) (gateway.Message, error) {
	var e envelope
	if err := gojson.Unmarshal(data, &e); err != nil {
		return gateway.Message{}, err
	}
	m := gateway.Message{Op: e.Op, S: e.S, T: e.T, RawD: e.D}
	var err error
	switch e.Op {
	case gateway.OpcodeDispatch:
		m.D, err = gateway.UnmarshalEventData(e.D, e.T)
	case gateway.OpcodeHello:
		var d gateway.MessageDataHello
		err = djson.Unmarshal(e.D, &d)
		m.D = d
	case gateway.OpcodeInvalidSession:
		var d gateway.MessageDataInvalidSession
		err = djson.Unmarshal(e.D, &d)
		m.D = d
	case gateway.OpcodeHeartbeat:
		var d gateway.MessageDataHeartbeat
		err = djson.Unmarshal(e.D, &d)
		m.D = d
	case gateway.OpcodeReconnect, gateway.OpcodeHeartbeatACK:
	default:
		// Commands a client sends never arrive; decode the rest as
		// disgo does, the whole message.
		err = djson.Unmarshal(data, &m)
	}
	if err != nil {
		return gateway.Message{}, fmt.Errorf("op %d %s: %w", e.Op, e.T, err)
	}
	return m, nil
}
