package services

import (
	"errors"
	"fmt"
)

// Errors returned by the Manager. Match them with [errors.Is]: they are
// wrapped with the service concerned.
var (
	// ErrUnknownService: no service of that name is managed.
	ErrUnknownService = errors.New("services: unknown service")
	// ErrClosed: the Manager is closed.
	ErrClosed = errors.New("services: manager closed")
	// ErrFailed: the service kept failing to start and was given up on
	// after MaxRestarts restarts; the error also wraps the last starting
	// error.
	ErrFailed = errors.New("services: service failed")
	// ErrStartTimeout: Start did not return within StartTimeout.
	ErrStartTimeout = errors.New("services: start timed out")
	// ErrNotReady: the operation needs a ready service.
	ErrNotReady = errors.New("services: service not ready")
)

// PanicError is the error of a Start or Stop that panicked (or of a
// Spec.New that did): the panic value and the stack where it was
// recovered.
type PanicError struct {
	Value any
	Stack []byte
}

// Error returns "services: panic: <value>".
func (e *PanicError) Error() string { return fmt.Sprintf("services: panic: %v", e.Value) }
