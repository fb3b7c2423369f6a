package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Errors returned by the bus. Match them with [errors.Is]: the bus wraps
// them with the address and command concerned.
var (
	// ErrUnknownAddress: nothing is registered at the address.
	ErrUnknownAddress = errors.New("bus: unknown address")
	// ErrUnknownCommand: the endpoint has no handler for the command.
	ErrUnknownCommand = errors.New("bus: unknown command")
	// ErrTimeout: the context's deadline, or [Options.DefaultTimeout],
	// ended the call. The error also wraps [context.DeadlineExceeded].
	ErrTimeout = errors.New("bus: timeout")
	// ErrHandlerPanic: the handler panicked; the error carries the panic value.
	ErrHandlerPanic = errors.New("bus: handler panicked")
	// ErrAddressInUse: another endpoint is registered at the address.
	ErrAddressInUse = errors.New("bus: address in use")
	// ErrClosed: the bus or the endpoint is closed.
	ErrClosed = errors.New("bus: closed")
	// ErrStrict: strict mode could not encode or decode a value through the Codec.
	ErrStrict = errors.New("bus: strict mode")
	// ErrType: a payload or reply does not have the type the other side expects.
	ErrType = errors.New("bus: type mismatch")
)

// sentinels are the errors a RemoteError keeps across an encoding, so that
// errors.Is still matches them in strict mode.
var sentinels = []error{
	ErrHandlerPanic, ErrUnknownAddress, ErrUnknownCommand, ErrTimeout,
	ErrClosed, ErrStrict, ErrType,
}

// RemoteError is the error a caller gets when the handler at the other end
// returned an error or panicked.
//
// Without [Options.Strict], the handler's error is kept and RemoteError
// unwraps to it, so errors.Is and errors.As see through it. In strict mode
// only what could cross a process boundary is kept: the message, and which
// of the bus's own sentinel errors (such as [ErrHandlerPanic]) it wrapped,
// so errors.Is still matches those but not the handler's own sentinels.
type RemoteError struct {
	Address Address // where the handler ran
	Command string  // the command it handled
	Message string  // the handler error's message

	code error // a bus sentinel the error wrapped, kept in strict mode
	err  error // the handler's error; nil in strict mode
}

// Error returns "bus: <address> <command>: <message>", the message
// without a "bus: " of its own (a handler whose own bus call failed), so
// that the package is named once.
func (e *RemoteError) Error() string {
	return "bus: " + string(e.Address) + " " + e.Command + ": " + strings.TrimPrefix(e.Message, "bus: ")
}

// Unwrap returns the handler's own error; it is nil in strict mode.
func (e *RemoteError) Unwrap() error { return e.err }

// Is reports whether target is the bus sentinel error the handler's error
// wrapped; it makes errors.Is(err, ErrHandlerPanic) work in strict mode.
func (e *RemoteError) Is(target error) bool {
	return e.code != nil && e.code == target
}

func newRemoteError(addr Address, command string, err error, strict bool) *RemoteError {
	re := &RemoteError{Address: addr, Command: command, Message: err.Error()}
	if strict {
		for _, s := range sentinels {
			if errors.Is(err, s) {
				re.code = s
				break
			}
		}
	} else {
		re.err = err
	}
	return re
}

// ctxError explains why ctx ended a call to command at to. A deadline
// wraps both ErrTimeout and context.DeadlineExceeded.
func ctxError(ctx context.Context, to Address, command string) error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %s %s: %w", ErrTimeout, to, command, err)
	}
	return fmt.Errorf("bus: %s %s: %w", to, command, err)
}

// NewRemoteError rebuilds, on the caller's side of a Transport that
// leaves the process, the error a handler returned at addr: its message,
// and code, the bus sentinel it wrapped (nil if none), which errors.Is
// matches as it does in strict mode.
func NewRemoteError(addr Address, command, message string, code error) *RemoteError {
	return &RemoteError{Address: addr, Command: command, Message: message, code: code}
}
