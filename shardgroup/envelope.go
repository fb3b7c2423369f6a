package shardgroup

import (
	"bytes"

	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/gateway"
)

// scanEnvelope reads a gateway payload's top-level object in one pass:
// op, s and t, and where d's text lies (d aliases data). It handles the
// shapes Discord sends; ok is false for anything else (escaped keys or
// type names, numbers it does not expect, malformed text), and the caller
// then decodes the payload with the general decoder, which gives the same
// result or the error. d itself is only delimited here: the decoder of its
// type validates it; except that, when ms is not nil and t came before d
// and names a message create or update, d is read into ms in the same
// pass (see messageScan).
func scanEnvelope(data []byte, ms *messageScan) (e envelope, ok bool) {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return e, false
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		return e, skipSpace(data, i+1) == len(data)
	}
	for {
		if i >= len(data) || data[i] != '"' {
			return e, false
		}
		k := i + 1
		for k < len(data) && data[k] != '"' && data[k] != '\\' {
			k++
		}
		if k >= len(data) || data[k] != '"' {
			return e, false
		}
		key := data[i+1 : k]
		i = skipSpace(data, k+1)
		if i >= len(data) || data[i] != ':' {
			return e, false
		}
		i = skipSpace(data, i+1)
		end := -1
		if ms != nil && string(key) == "d" && (e.T == gateway.EventTypeMessageCreate || e.T == gateway.EventTypeMessageUpdate) {
			ms.m, ms.d = discord.Message{}, nil
			if end = messageAt(data, i, &ms.m); end >= 0 {
				ms.t, ms.d = e.T, data[i:end]
			}
		}
		if end < 0 {
			end = skipValue(data, i)
		}
		if end < 0 {
			return e, false
		}
		v := data[i:end]
		switch string(key) {
		case "op":
			n, ok := parseInt(v)
			if !ok {
				return e, false
			}
			e.Op = gateway.Opcode(n)
		case "s":
			if string(v) == "null" {
				break // null leaves a value as it is, as in encoding/json
			}
			n, ok := parseInt(v)
			if !ok {
				return e, false
			}
			e.S = n
		case "t":
			if string(v) == "null" {
				break
			}
			if len(v) < 2 || v[0] != '"' || !plainASCII(v) {
				return e, false // not a string, escaped or not ASCII: the general decoder reads it
			}
			e.T = eventType(v[1 : len(v)-1])
		case "d":
			e.D = v
		default:
			// encoding/json matches keys without regard to case.
			if len(key) <= 2 && (bytes.EqualFold(key, []byte("op")) || bytes.EqualFold(key, []byte("s")) ||
				bytes.EqualFold(key, []byte("t")) || bytes.EqualFold(key, []byte("d"))) {
				return e, false
			}
		}
		i = skipSpace(data, end)
		if i >= len(data) {
			return e, false
		}
		switch data[i] {
		case ',':
			i = skipSpace(data, i+1)
		case '}':
			return e, skipSpace(data, i+1) == len(data)
		default:
			return e, false
		}
	}
}

// messageScan is the d of a MESSAGE_CREATE or MESSAGE_UPDATE read by
// scanMessage's readers while its envelope is read: t names the dispatch
// and d is the text it was read from (nil if it was not read).
type messageScan struct {
	m discord.Message
	t gateway.EventType
	d []byte
}

// of reports whether the scan is of e's d, and e a dispatch of its type.
func (ms *messageScan) of(e envelope) bool {
	return ms.d != nil && e.Op == gateway.OpcodeDispatch && ms.t == e.T && len(ms.d) == len(e.D) && &ms.d[0] == &e.D[0]
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
}

// skipValue returns the index just past the JSON value at b[i], or -1.
// Strings may hold escapes; objects and arrays are matched by depth,
// with the strings inside them skipped. Literals and numbers run to the
// next delimiter.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				j := skipString(b, i)
				if j < 0 {
					return -1
				}
				i = j - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return -1
	}
	j := i
	for j < len(b) {
		switch b[j] {
		case ',', '}', ']', ' ', '\n', '\r', '\t':
			return j
		}
		j++
	}
	if j == i {
		return -1
	}
	return j
}

// skipString returns the index just past the string starting at b[i].
func skipString(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return -1
}

// eventTypes holds the dispatch names, so that reading one does not
// allocate.
var eventTypes = func() map[string]gateway.EventType {
	m := map[string]gateway.EventType{}
	for _, t := range []gateway.EventType{
		gateway.EventTypeReady, gateway.EventTypeResumed, gateway.EventTypeMessageCreate, gateway.EventTypeMessageUpdate,
		gateway.EventTypeMessageDelete, gateway.EventTypeMessageDeleteBulk, gateway.EventTypeMessageReactionAdd,
		gateway.EventTypeMessageReactionRemove, gateway.EventTypeGuildCreate, gateway.EventTypeGuildUpdate,
		gateway.EventTypeGuildDelete, gateway.EventTypeGuildMemberAdd, gateway.EventTypeGuildMemberUpdate,
		gateway.EventTypeGuildMemberRemove, gateway.EventTypeGuildMembersChunk, gateway.EventTypePresenceUpdate,
		gateway.EventTypeTypingStart, gateway.EventTypeVoiceStateUpdate, gateway.EventTypeInteractionCreate,
		gateway.EventTypeChannelCreate, gateway.EventTypeChannelUpdate, gateway.EventTypeChannelDelete,
		gateway.EventTypeThreadCreate, gateway.EventTypeThreadUpdate, gateway.EventTypeUserUpdate,
	} {
		m[string(t)] = t
	}
	return m
}()

// eventType names a dispatch type without allocating for the usual ones.
func eventType(b []byte) gateway.EventType {
	if t, ok := eventTypes[string(b)]; ok {
		return t
	}
	return gateway.EventType(b)
}

func plainASCII(b []byte) bool {
	for _, c := range b {
		if c == '\\' || c >= 0x80 {
			return false
		}
	}
	return true
}

// parseInt reads a JSON integer: an optional minus, then digits without
// a leading zero.
func parseInt(b []byte) (int, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 18 || (b[0] == '0' && len(b) > 1) {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}
