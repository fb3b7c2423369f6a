// Package bus is the fleet's IPC: addressed, typed request/reply, one-way
// sends, scatter-gather and publish/subscribe between the admiral, the
// clusters and the services of one process, the job eris-fleet's IPC does
// between Node.js processes.
//
// # Addresses and endpoints
//
// Every participant has an [Address]: [Admiral], [Cluster](id) or
// [Service](name). [Bus.Register] gives an address an [Endpoint]: a
// bounded mailbox and its workers (one by default, so a service handles
// one message at a time, in order). Commands are added to an endpoint with
// [Handle], events with [Endpoint.Subscribe]. The groups [AllClusters],
// [AllServices] and [Everyone] address several endpoints at once.
//
//	b := bus.New(bus.Options{})
//	defer b.Close()
//	ep, err := b.Register(bus.Service("store"))
//	bus.Handle(ep, "get", func(ctx context.Context, key string) (string, error) { ... })
//	v, err := bus.Request[string, string](ctx, b, bus.Service("store"), "get", "k")
//
// # Calls
//
// [Request] waits for the reply, [Send] only for the message to be queued,
// [Gather] asks every member of a group and returns each member's answer
// or error, keeping what arrived when time runs out. [Publish] delivers an
// event to the subscribers of an address or a group; [Subscribe] watches
// the events of the whole bus. They take a [Client]: the *Bus itself, or
// [Bus.Client] for code that may call but must not close the bus or
// register endpoints.
//
// # Timeouts and errors
//
// Calls are bounded by their context, or by [Options.DefaultTimeout]
// (10 s) when it has no deadline; a timeout wraps [ErrTimeout] and
// [context.DeadlineExceeded]. An unknown address or command fails at once,
// before anything is queued. A handler's error reaches the caller as a
// [*RemoteError]; a handler's panic becomes an error wrapping
// [ErrHandlerPanic] for its caller, and the endpoint keeps serving.
//
// # Back-pressure
//
// Mailboxes are bounded (256 messages unless [Options.MailboxSize] or
// [Mailbox] say otherwise). A sender facing a full mailbox waits for room
// until its context ends. A caller that gives up frees its reply slot: no
// goroutine or buffer waits for the late answer. The bus starts no
// goroutine per call and keeps no unbounded queue.
//
// # Soft replacement
//
// A service is restarted without losing a command: [Bus.Standby] creates
// a second endpoint for its address, which gets the new instance's
// handlers; [Bus.Replace] switches the address to it atomically (the
// mailbox and its queued messages carry over), and closing the old
// endpoint waits for the handlers it was still running. Then the old
// instance can be shut down.
//
// # Strict mode
//
// In memory, values pass without serialization. [Options.Strict]
// round-trips every payload and every reply through the [Codec] (JSON by
// default), as a process boundary would: a value that cannot be encoded
// fails with an error naming its type, receivers get copies, and handler
// errors keep only their message and the bus's sentinels. Code that works
// in strict mode also works when a [Transport] carries the bus between
// processes.
//
// # Performance
//
// A Request in memory, without strict mode and with a context that has a
// deadline, allocates only to box a payload and a reply that are not
// pointers (2 allocations for a []byte, none for pointers), starts no
// goroutine and creates no timer; replies travel on pooled one-slot
// channels. A context without a deadline adds a context.WithTimeout (5
// allocations): pass one with a deadline on hot paths. [Cluster] does not
// allocate for ids below 256; [Service] does, so keep service addresses.
package bus
