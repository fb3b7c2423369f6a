package admin_test

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain stops the browser the tests share before looking for leaked
// goroutines.
func TestMain(m *testing.M) {
	code := m.Run()
	stopChrome()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
