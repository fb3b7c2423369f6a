package bus

// Client is what the calls take: [Request], [Send], [Gather], [Publish],
// [Subscribe] and the typed helpers built on them accept any Client. A
// *Bus is one; [Bus.Client] returns one that can only call: it cannot
// close the bus, register or replace endpoints, and cannot be turned back
// into the *Bus. Hand that one to code that must not own the bus, such as
// a cluster's or a service's user code.
//
// Only this package implements Client.
type Client interface {
	bus() *Bus
}

// bus makes *Bus a Client.
func (b *Bus) bus() *Bus { return b }

// Client returns b for calls only (see [Client]). Its calls behave as
// b's, and fail with [ErrClosed] once b is closed.
func (b *Bus) Client() Client { return client{b} }

// client is a Client without the Bus's methods.
type client struct{ b *Bus }

func (c client) bus() *Bus { return c.b }
