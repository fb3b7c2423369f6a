package natsfleet

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/gofleet/fleet/bus"
)

// Messages. Calls to one address, and replies to one process, are
// coalesced: one NATS message carries every frame queued meanwhile, each
// as uvarint length | frame.
//
//	call:  id (uvarint) | kind (1 byte) | timeout ns (uvarint, 0 = none) | deadline (uvarint, unix ns) | len(name) (uvarint) | name | payload
//	reply: id (uvarint) | status (1 byte) | rest
//
// A message of calls has the reply subject <inbox>.<batch>; the replies
// go to <inbox>.r, and NATS's no-responders status to <inbox>.<batch>,
// which names the calls of that batch.
//
// The receiver's deadline is the earlier of its receipt time plus the
// timeout and the sender's deadline: the first bounds what a clock skew
// between hosts can do, the second keeps the time a message waited
// behind others for its address's mailbox.
//
// On a direct link (direct.go) the same frames travel in messages of
// uvarint length | address (uvarint length and bytes; empty for replies)
// | frames.
//
// status replyValue carries the encoded result, replyAck an empty
// acknowledgement (the message was queued), replyError an error:
// sentinel mask (uvarint) | remote (1 byte) | address | command | message,
// each string as uvarint length and bytes.
const (
	kindPing byte = 0xff // asks whether anyone serves the subject

	replyValue byte = 1
	replyAck   byte = 2
	replyError byte = 3
	// replyMoved, on a direct link only: the process no longer serves the
	// address, and did not accept the call; send it over NATS.
	replyMoved byte = 4
)

// sentinels are the errors a call's error keeps across processes; the
// order fixes the bits of the mask.
var sentinels = []error{
	bus.ErrHandlerPanic, bus.ErrUnknownAddress, bus.ErrUnknownCommand, bus.ErrTimeout,
	bus.ErrClosed, bus.ErrStrict, bus.ErrType, bus.ErrAddressInUse,
	context.DeadlineExceeded, context.Canceled,
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func readString(b []byte) (string, []byte, bool) {
	n, k := binary.Uvarint(b)
	if k <= 0 || uint64(len(b)-k) < n {
		return "", nil, false
	}
	return string(b[k : k+int(n)]), b[k+int(n):], true
}

func appendCallHeader(b []byte, id uint64, kind bus.Kind, timeout int64, deadline int64, name string) []byte {
	b = binary.AppendUvarint(b, id)
	b = append(b, byte(kind))
	b = binary.AppendUvarint(b, uint64(max(timeout, 0)))
	b = binary.AppendUvarint(b, uint64(max(deadline, 0)))
	return appendString(b, name)
}

type call struct {
	id       uint64
	kind     byte
	timeout  int64
	deadline int64
	name     string
	payload  []byte
}

func parseCall(b []byte) (call, error) {
	var c call
	id, k := binary.Uvarint(b)
	if k <= 0 || len(b) < k+1 {
		return c, errors.New("short frame")
	}
	c.id = id
	b = b[k:]
	c.kind = b[0]
	if c.kind == kindPing {
		return c, nil
	}
	t, k := binary.Uvarint(b[1:])
	if k <= 0 {
		return c, errors.New("bad timeout")
	}
	c.timeout = int64(t)
	b = b[1+k:]
	d, k := binary.Uvarint(b)
	if k <= 0 {
		return c, errors.New("bad deadline")
	}
	c.deadline = int64(d)
	name, rest, ok := readString(b[k:])
	if !ok {
		return c, errors.New("bad name")
	}
	c.name, c.payload = name, rest
	return c, nil
}

func sentinelMask(err error) uint64 {
	var m uint64
	for i, s := range sentinels {
		if errors.Is(err, s) {
			m |= 1 << i
		}
	}
	return m
}

func appendError(b []byte, id uint64, err error) []byte {
	b = binary.AppendUvarint(b, id)
	b = append(b, replyError)
	b = binary.AppendUvarint(b, sentinelMask(err))
	var re *bus.RemoteError
	if errors.As(err, &re) {
		b = append(b, 1)
		b = appendString(b, string(re.Address))
		b = appendString(b, re.Command)
		return appendString(b, re.Message)
	}
	b = append(b, 0, 0, 0)
	return appendString(b, err.Error())
}

// parseError rebuilds an error frame (after its status byte).
func parseError(b []byte) error {
	mask, k := binary.Uvarint(b)
	if k <= 0 || len(b) < k+1 {
		return errors.New("natsfleet: malformed error reply")
	}
	remote := b[k] == 1
	rest := b[k+1:]
	addr, rest, ok1 := readString(rest)
	cmd, rest, ok2 := readString(rest)
	msg, _, ok3 := readString(rest)
	if !ok1 || !ok2 || !ok3 {
		return errors.New("natsfleet: malformed error reply")
	}
	if remote {
		var code error
		for i, s := range sentinels[:8] {
			if mask&(1<<i) != 0 {
				code = s
				break
			}
		}
		return bus.NewRemoteError(bus.Address(addr), cmd, msg, code)
	}
	return &wireError{msg: msg, mask: mask}
}

// wireError is a bus error that crossed a process: its message, and the
// sentinels it matched, which errors.Is still matches.
type wireError struct {
	msg  string
	mask uint64
}

func (e *wireError) Error() string { return e.msg }

func (e *wireError) Is(target error) bool {
	for i, s := range sentinels {
		if e.mask&(1<<i) != 0 && s == target {
			return true
		}
	}
	return false
}

// subjectToken turns an address into subject tokens: admiral,
// cluster.<id>, service.<name> with the name escaped so that it is one
// token (bytes other than letters, digits, '-' and '_' as %XX).
func subjectToken(a bus.Address) string {
	if name, ok := a.ServiceName(); ok {
		var sb strings.Builder
		sb.WriteString("service.")
		for i := 0; i < len(name); i++ {
			c := name[i]
			if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
				sb.WriteByte(c)
			} else {
				fmt.Fprintf(&sb, "%%%02X", c)
			}
		}
		return sb.String()
	}
	return strings.Replace(string(a), "/", ".", 1)
}

// ctxError explains why ctx ended a call, as the bus does.
func ctxError(ctx context.Context, to bus.Address, name string) error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %s %s: %w", bus.ErrTimeout, to, name, err)
	}
	return fmt.Errorf("bus: %s %s: %w", to, name, err)
}

// nextFrame splits the first frame off a message.
func nextFrame(b []byte) (frame, rest []byte, ok bool) {
	n, k := binary.Uvarint(b)
	if k <= 0 || uint64(len(b)-k) < n {
		return nil, nil, false
	}
	return b[k : k+int(n)], b[k+int(n):], true
}
