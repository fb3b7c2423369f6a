//go:build !linux

package natsfleet

import "time"

// sleepFine sleeps d (at most fineWait).
func sleepFine(d time.Duration) { time.Sleep(d) }
