package natsfleet

import (
	"os"
	"syscall"
	"time"
	"unsafe"
)

// sleepFine sleeps d (at most fineWait) on a kernel timer, read through
// the Go runtime's poller, and on the runtime's own timer, whichever ends
// first. The runtime's timer wakes an idle process to the millisecond
// (its poller waits in whole milliseconds), which every turn of a bucket
// would add to the next; a timerfd's expiry wakes the poller within
// microseconds, and the goroutine waits as for any other file, holding no
// thread. A busy process looks at its poller less often than at its
// timers: the read's deadline, a runtime timer, then ends the sleep.
func sleepFine(d time.Duration) {
	deadline := time.Now().Add(d)
	fd, _, errno := syscall.Syscall(syscall.SYS_TIMERFD_CREATE, clockMonotonic, syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if errno != 0 {
		time.Sleep(d)
		return
	}
	f := os.NewFile(fd, "timerfd")
	defer f.Close()
	spec := itimerspec{value: syscall.NsecToTimespec(int64(d))}
	if _, _, errno := syscall.Syscall6(syscall.SYS_TIMERFD_SETTIME, fd, 0, uintptr(unsafe.Pointer(&spec)), 0, 0, 0); errno != 0 {
		time.Sleep(d)
		return
	}
	if f.SetReadDeadline(deadline) != nil {
		time.Sleep(d) // not a pollable file: the runtime's timer alone
		return
	}
	var expirations [8]byte
	_, _ = f.Read(expirations[:]) // the expiry, or the deadline
}

// clockMonotonic is CLOCK_MONOTONIC, the clock Go's monotonic readings
// come from.
const clockMonotonic = 1

// itimerspec is the kernel's struct itimerspec: no interval, one expiry.
type itimerspec struct {
	interval, value syscall.Timespec
}
