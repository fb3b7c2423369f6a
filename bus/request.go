package bus

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"time"
)

// replyPool recycles the one-slot reply channels of requests. A channel
// goes back only after its one Response was read; one whose caller gave up
// is left to the garbage collector, so a late answer can never reach the
// wrong caller.
var replyPool = sync.Pool{New: func() any { return make(chan Response, 1) }}

func getReply() chan Response  { return replyPool.Get().(chan Response) }
func putReply(c chan Response) { replyPool.Put(c) }

// Request sends req to the command handler at the concrete address to and
// returns its reply. It is bounded by ctx, or by the Bus's DefaultTimeout
// when ctx has no deadline (that path allocates a timer context; pass a
// context with a deadline on hot paths). When the time runs out the error
// wraps both [ErrTimeout] and [context.DeadlineExceeded], and the reply
// slot is released: nothing waits for the late answer.
//
// It fails at once with [ErrUnknownAddress] if nothing is registered at
// to, and with [ErrUnknownCommand] if the endpoint does not handle
// command. If the mailbox is full, Request waits for room. The handler's
// error comes back as a [*RemoteError].
//
// Without strict mode, req and the reply are passed as they are, not
// copied: do not change them after sending, or after replying.
func Request[Req, Resp any](ctx context.Context, c Client, to Address, command string, req Req) (Resp, error) {
	b := c.bus()
	if b.observe == nil {
		return request[Req, Resp](ctx, b, to, command, req)
	}
	start := time.Now()
	resp, err := request[Req, Resp](ctx, b, to, command, req)
	b.observe(command, time.Since(start), err)
	return resp, err
}

func request[Req, Resp any](ctx context.Context, b *Bus, to Address, command string, req Req) (Resp, error) {
	var zero Resp
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, b.timeout)
		defer cancel()
	}
	var payload any = req
	if b.strict {
		c, err := roundTrip(b.codec, req, "payload")
		if err != nil {
			return zero, err
		}
		payload = c
	}
	reply := getReply()
	err := b.transport.Deliver(ctx, Message{To: to, Kind: KindRequest, Name: command, Payload: payload, Reply: reply})
	if err != nil {
		putReply(reply)
		return zero, b.deliverError(err, to, "Request")
	}
	select {
	case r := <-reply:
		putReply(reply)
		return decodeResponse[Resp](b, r, to, command)
	case <-ctx.Done():
		return zero, ctxError(ctx, to, command)
	}
}

// Send sends req to the command handler at the concrete address to without
// waiting for it to be handled: it returns once the message is queued.
// Like Request it fails at once for an unknown address or command, and
// waits while the mailbox is full, until ctx ends (or the DefaultTimeout
// passes, if ctx has no deadline). The handler's error is logged.
func Send[Req any](ctx context.Context, c Client, to Address, command string, req Req) error {
	b := c.bus()
	var payload any = req
	if b.strict {
		c, err := roundTrip(b.codec, req, "payload")
		if err != nil {
			return err
		}
		payload = c
	}
	if err := b.transport.Deliver(ctx, Message{To: to, Kind: KindSend, Name: command, Payload: payload}); err != nil {
		return b.deliverError(err, to, "Send")
	}
	return nil
}

// Reply is one member's answer to [Gather].
type Reply[Resp any] struct {
	From  Address
	Value Resp
	Err   error
}

// Gather sends req to command at every member of group ([AllClusters],
// [AllServices], [Everyone], or one concrete address) and returns one
// Reply per member, in address order (clusters by id). A member that
// fails has its own Err; one that has not answered when ctx ends (or the
// DefaultTimeout, if ctx has no deadline) has an Err wrapping
// [ErrTimeout], and the answers that did arrive are kept. Gather's own
// error is for failures that concern every member: the Bus is closed, or
// req cannot be encoded in strict mode. A group with no member gives no
// Reply and no error.
//
// The members handle the request in parallel, each in its own workers.
// Gather queues it at one member after the other, so a member whose
// mailbox is full delays the queuing at the next ones, within ctx.
func Gather[Req, Resp any](ctx context.Context, c Client, group Address, command string, req Req) ([]Reply[Resp], error) {
	b := c.bus()
	if b.closed.Load() {
		return nil, fmt.Errorf("%w: Gather %s %s", ErrClosed, group, command)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, b.timeout)
		defer cancel()
	}
	members := []Address{group}
	if group.IsGroup() {
		members = b.transport.Members(group)
	}
	out := make([]Reply[Resp], len(members))
	replies := make([]chan Response, len(members))
	var payload any = req
	for i, to := range members {
		out[i].From = to
		if b.strict {
			c, err := roundTrip(b.codec, req, "payload")
			if err != nil {
				return nil, err
			}
			payload = c
		}
		if ctx.Err() != nil {
			out[i].Err = ctxError(ctx, to, command)
			continue
		}
		reply := getReply()
		if err := b.transport.Deliver(ctx, Message{To: to, Kind: KindRequest, Name: command, Payload: payload, Reply: reply}); err != nil {
			putReply(reply)
			out[i].Err = b.deliverError(err, to, "Gather")
			continue
		}
		replies[i] = reply
	}
	for i, reply := range replies {
		if reply == nil {
			continue
		}
		select {
		case r := <-reply:
			putReply(reply)
			out[i].Value, out[i].Err = decodeResponse[Resp](b, r, members[i], command)
		case <-ctx.Done():
			// Keep the answers that are in; the others time out.
			for j := i; j < len(replies); j++ {
				if replies[j] == nil {
					continue
				}
				select {
				case r := <-replies[j]:
					putReply(replies[j])
					out[j].Value, out[j].Err = decodeResponse[Resp](b, r, members[j], command)
				default:
					out[j].Err = ctxError(ctx, members[j], command)
				}
			}
			return out, nil
		}
	}
	return out, nil
}

// Event is what a subscriber receives.
type Event struct {
	Name string
	// Payload is the published value, as it was published: a zero or nil
	// payload arrives as that zero or nil value. In strict mode it is a
	// copy made through the Codec, of the same type.
	Payload any
}

// Publish sends event with payload to the subscribers of to: the concrete
// address (a cluster, a service, the admiral) or every member of a group
// ([Everyone] for a broadcast). Each endpoint's subscribers ([Endpoint.Subscribe])
// get it through its mailbox; bus-wide subscribers ([Subscribe]) are then
// called before Publish returns. Publish returns once the event is queued
// everywhere, waiting while a mailbox is full until ctx ends (or the
// DefaultTimeout passes, if ctx has no deadline). It fails with
// ErrUnknownAddress for a concrete address that is not registered; an
// endpoint without a subscriber for the event is skipped.
func Publish(ctx context.Context, c Client, to Address, event string, payload any) error {
	b := c.bus()
	if b.closed.Load() {
		return fmt.Errorf("%w: Publish %s %s", ErrClosed, to, event)
	}
	members := []Address{to}
	if to.IsGroup() {
		members = b.transport.Members(to)
	}
	p := payload
	if b.strict {
		// Fail before delivering anything if the payload cannot cross.
		if _, err := roundTripAny(b.codec, payload, "payload"); err != nil {
			return err
		}
	}
	for _, at := range members {
		if b.strict {
			p, _ = roundTripAny(b.codec, payload, "payload") // a copy for each receiver
		}
		err := b.transport.Deliver(ctx, Message{To: at, Kind: KindEvent, Name: event, Payload: p})
		if err == nil {
			continue
		}
		if to.IsGroup() && (errors.Is(err, ErrUnknownAddress) || errors.Is(err, ErrClosed)) {
			continue // the member left since Members
		}
		return b.deliverError(err, at, "Publish")
	}
	ev := Event{Name: event, Payload: payload}
	for _, s := range b.subs.get(event) {
		if b.strict {
			ev.Payload, _ = roundTripAny(b.codec, payload, "payload")
		}
		s.call(ctx, b, to, ev)
	}
	return nil
}

// Subscribe calls fn for every event named event published on c's bus, to
// any address. fn is called by [Publish], in its goroutine and with its
// context, after the event was queued for the endpoints: it must return
// quickly. A panic in fn is recovered and logged. Calling unsubscribe
// removes exactly this subscription; calling it again does nothing. To
// receive only the events for one address, in that endpoint's workers, use
// [Endpoint.Subscribe].
func Subscribe(c Client, event string, fn func(ctx context.Context, ev Event)) (unsubscribe func()) {
	return c.bus().subs.add(event, fn)
}

// deliverError adds context to an error from Transport.Deliver.
func (b *Bus) deliverError(err error, to Address, op string) error {
	switch {
	case errors.Is(err, ErrUnknownAddress) && b.closed.Load():
		return fmt.Errorf("%w: %s %s", ErrClosed, op, to)
	case errors.Is(err, ErrUnknownAddress) && to.IsGroup() && op != "Publish":
		return fmt.Errorf("%w: %s is a group: use Gather", ErrUnknownAddress, to)
	}
	return err
}

// decodeResponse turns r into the caller's type.
func decodeResponse[Resp any](b *Bus, r Response, to Address, command string) (Resp, error) {
	var v Resp
	if r.Err != nil {
		return v, r.Err
	}
	if r.Encoded {
		v, err := decode[Resp](b.codec, r.Value)
		if err != nil {
			return v, fmt.Errorf("%w: %s %s: cannot decode reply into %s: %w", ErrStrict, to, command, reflect.TypeFor[Resp](), err)
		}
		return v, nil
	}
	if r.Value == nil {
		return v, nil
	}
	v, ok := r.Value.(Resp)
	if !ok {
		return v, fmt.Errorf("%w: %s %s: reply is %T, caller wants %s", ErrType, to, command, r.Value, reflect.TypeFor[Resp]())
	}
	return v, nil
}
