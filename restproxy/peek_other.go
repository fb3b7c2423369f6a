//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package restproxy

import "syscall"

// canPeek says that alive does not work here: every upstream request
// goes through net/http's Transport.
const canPeek = false

func alive(syscall.RawConn) bool { return false }
