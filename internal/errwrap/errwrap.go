// Package errwrap wraps an error with the context a caller needs while
// naming each package once: the wrapped error's own package prefix
// ("services: ", "restproxy: ") is left out of the message, and
// errors.Is and errors.As still see the wrapped error.
package errwrap

import "strings"

// Error is an error with a message of its own that wraps others.
type Error struct {
	msg  string
	errs []error
}

func (e *Error) Error() string   { return e.msg }
func (e *Error) Unwrap() []error { return e.errs }

// Wrap returns err under prefix, "prefix: err", where err's message loses
// a leading "pkg: " (pkg is the package prefix without its colon). The
// result wraps err and each of also (sentinels the caller matches with
// errors.Is, whose own text stays out of the message).
func Wrap(prefix, pkg string, err error, also ...error) error {
	msg := strings.TrimPrefix(err.Error(), pkg+": ")
	return &Error{msg: prefix + ": " + msg, errs: append([]error{err}, also...)}
}

// Trim returns err without its leading "pkg: ", for a message that goes
// under another of the same package; the result wraps err.
func Trim(pkg string, err error) error {
	return &Error{msg: strings.TrimPrefix(err.Error(), pkg+": "), errs: []error{err}}
}
