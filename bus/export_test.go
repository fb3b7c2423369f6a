package bus

import "testing"

// DefaultTransport returns a new in-memory Transport, for tests that wrap it.
func DefaultTransport(testing.TB) Transport { return newMemTransport() }
