package natsfleet

import (
	"syscall"
	"time"
)

// sleepFine sleeps d (at most fineWait) on the kernel's high-resolution
// timer. The Go runtime's timers wake an idle process to the millisecond
// (its poller waits in whole milliseconds), which every turn of a bucket
// would add to the next; this thread's sleep ends within tens of
// microseconds of d. It blocks its thread, not the others: the runtime
// hands the thread's processor to other goroutines.
func sleepFine(d time.Duration) {
	ts := syscall.NsecToTimespec(int64(d))
	for syscall.Nanosleep(&ts, &ts) == syscall.EINTR {
	}
}
