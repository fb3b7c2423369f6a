package shardgroup

import (
	"encoding/json"
	"errors"
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
// does: the envelope in one pass (scanEnvelope, or the general decoder for
// shapes it leaves), then d by the payload's opcode and type alone; the d
// of a usual message is read in the envelope's pass. RawD
// is d's text and shares data's memory: it is valid only as long as data
// is (in the read loop, until the next frame is read).
func decodeMessage(data []byte) (gateway.Message, error) {
	var ms messageScan
	e, ok := scanEnvelope(data, &ms)
	if ok && ms.of(e) {
		// A message read with its envelope: what decodeData's
		// scanMessage would read.
		m := gateway.Message{Op: e.Op, S: e.S, T: e.T, RawD: e.D}
		if e.T == gateway.EventTypeMessageCreate {
			m.D = gateway.EventMessageCreate{Message: ms.m}
		} else {
			m.D = gateway.EventMessageUpdate{Message: ms.m}
		}
		return m, nil
	}
	if !ok {
		e = envelope{}
		if err := gojson.Unmarshal(data, &e); err != nil {
			return gateway.Message{}, err
		}
	}
	return decodeData(data, e)
}

func decodeData(data []byte, e envelope) (m gateway.Message, err error) {
	defer func() {
		// Some of disgo's UnmarshalJSON methods panic on shapes they do
		// not expect (an unknown channel type); the payload is then
		// undecodable, and the shard goes on.
		if v := recover(); v != nil {
			m, err = gateway.Message{}, fmt.Errorf("op %d %s: decoder panicked: %v", e.Op, e.T, v)
		}
	}()
	m = gateway.Message{Op: e.Op, S: e.S, T: e.T, RawD: e.D}
	switch e.Op {
	case gateway.OpcodeDispatch:
		switch e.T {
		// The most frequent dispatches skip UnmarshalEventData's call of
		// json.Unmarshal, which would only find and call the same
		// UnmarshalJSON (discord.Message's, promoted) after scanning d.
		// Messages of the usual shape are read in one pass (scanMessage).
		case gateway.EventTypeMessageCreate:
			var d gateway.EventMessageCreate
			if !scanMessage(e.D, &d.Message) {
				d = gateway.EventMessageCreate{}
				err = d.UnmarshalJSON(e.D)
			}
			m.D = d
		case gateway.EventTypeMessageUpdate:
			var d gateway.EventMessageUpdate
			if !scanMessage(e.D, &d.Message) {
				d = gateway.EventMessageUpdate{}
				err = d.UnmarshalJSON(e.D)
			}
			m.D = d
		default:
			m.D, err = gateway.UnmarshalEventData(e.D, e.T)
			if _, unknown := m.D.(gateway.EventUnknown); unknown && err == nil && !gojson.Valid(e.D) {
				err = errors.New("invalid JSON in d")
			}
		}
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
		m = gateway.Message{}
		err = djson.Unmarshal(data, &m)
	}
	if err != nil {
		return gateway.Message{}, fmt.Errorf("op %d %s: %w", e.Op, e.T, err)
	}
	return m, nil
}
