package bus

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
)

// Transport carries messages from callers to endpoints. The Bus binds each
// endpoint it registers and delivers every call through its Transport; the
// default keeps everything in memory. Another transport (between processes,
// or over NATS) can carry the same calls without any change to the typed
// API: it delivers local messages as the in-memory one does and forwards
// the others, encoding their payloads with a [Codec] and setting
// [Message.Encoded] on the receiving side.
type Transport interface {
	// Bind makes r reachable at the concrete address addr. It fails with
	// ErrAddressInUse if something is bound there already.
	Bind(addr Address, r Receiver) error
	// Unbind removes r from addr; it does nothing if r is not bound there.
	Unbind(addr Address, r Receiver)
	// Deliver hands m to the receiver bound at m.To, blocking while that
	// receiver is full, until ctx ends. It fails with ErrUnknownAddress if
	// nothing is bound there. When Deliver returns an error it must not
	// keep m: the Bus reuses m.Reply.
	Deliver(ctx context.Context, m Message) error
	// Members returns the concrete addresses bound in group, admiral
	// first, then clusters by id, then services by name. The caller owns
	// the slice.
	Members(group Address) []Address
}

// Receiver is what a Transport delivers to: the mailbox of an endpoint.
type Receiver interface {
	// Receive enqueues m, blocking while the mailbox is full, until ctx
	// ends. It returns ErrUnknownCommand at once if nothing handles
	// m.Name, and ErrClosed if the mailbox no longer accepts messages.
	Receive(ctx context.Context, m Message) error
}

// Kind says what a Message asks of its receiver.
type Kind uint8

// The kinds of message.
const (
	KindRequest Kind = iota + 1 // a command that is answered on Message.Reply
	KindSend                    // a command that is not answered
	KindEvent                   // an event for the receiver's subscribers
)

// Message is one envelope on the bus.
type Message struct {
	To   Address
	Kind Kind
	Name string // the command or the event
	// Payload is the value sent. In memory it is passed as it is (shared,
	// not copied, unless strict mode made a copy); when Encoded is true it
	// is the []byte encoding of the value made by the Codec.
	Payload any
	Encoded bool
	// Reply receives the single Response to a KindRequest; it is nil for
	// the other kinds. It has room for that Response, so answering never
	// blocks; a caller that gave up simply never reads it.
	Reply chan<- Response
}

// Response answers a KindRequest message.
type Response struct {
	Value   any   // the handler's result; its encoding ([]byte) when Encoded
	Encoded bool  // Value is the Codec encoding of the result
	Err     error // the handler's error, or the bus's
}

// memTransport is the in-memory Transport: a copy-on-write routing table.
type memTransport struct {
	mu     sync.Mutex                           // guards writes to routes
	routes atomic.Pointer[map[Address]Receiver] // read without a lock
}

func newMemTransport() *memTransport {
	t := &memTransport{}
	m := map[Address]Receiver{}
	t.routes.Store(&m)
	return t
}

func (t *memTransport) Bind(addr Address, r Receiver) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.routes.Load()
	if _, ok := old[addr]; ok {
		return fmt.Errorf("%w: %s", ErrAddressInUse, addr)
	}
	m := make(map[Address]Receiver, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	m[addr] = r
	t.routes.Store(&m)
	return nil
}

func (t *memTransport) Unbind(addr Address, r Receiver) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.routes.Load()
	if cur, ok := old[addr]; !ok || cur != r {
		return
	}
	m := make(map[Address]Receiver, len(old))
	for k, v := range old {
		if k != addr {
			m[k] = v
		}
	}
	t.routes.Store(&m)
}

func (t *memTransport) Deliver(ctx context.Context, m Message) error {
	r, ok := (*t.routes.Load())[m.To]
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownAddress, m.To)
	}
	return r.Receive(ctx, m)
}

func (t *memTransport) Members(group Address) []Address {
	var out []Address
	for a := range *t.routes.Load() {
		if group.Contains(a) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, compareAddress)
	return out
}
