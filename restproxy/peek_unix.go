//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package restproxy

import "syscall"

// canPeek says that alive works here.
const canPeek = true

// alive reports whether an idle connection is still open and has nothing
// to read: a non-blocking peek at its socket says "would block". One that
// reads the end, an error or unexpected bytes is not reused.
func alive(raw syscall.RawConn) bool {
	var (
		buf [1]byte
		err error
	)
	if cerr := raw.Read(func(fd uintptr) bool {
		_, _, err = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true
	}); cerr != nil {
		return false
	}
	return err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
}
