//go:build unix

package runtime

import (
	"fmt"
	"os"
	"syscall"
)

// checkOwner refuses a session file another user owns.
func checkOwner(path string, fi os.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if uid := os.Getuid(); int(st.Uid) != uid {
		return fmt.Errorf("runtime: session file %s belongs to uid %d, not to this process's user (uid %d): remove it, or give it to uid %d", path, st.Uid, uid, uid)
	}
	return nil
}
