//go:build unix

package natsfleet

import (
	"os"
	"os/exec"
	"syscall"
)

// setProcessGroup starts the child in a process group of its own, so
// that a terminal's Ctrl-C reaches the parent only (which stops the
// children in order), and a kill reaches whatever the child started.
func setProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// kill kills the child's process group.
func (ch *childProc) kill() {
	_ = syscall.Kill(-ch.cmd.Process.Pid, syscall.SIGKILL)
	_ = ch.cmd.Process.Signal(os.Kill)
}

// parentPipe is the child's stdin, the pipe from the parent, made
// non-blocking so that closing it ends a read in progress.
func parentPipe() *os.File {
	if err := syscall.SetNonblock(0, true); err != nil {
		return os.Stdin
	}
	return os.NewFile(0, "parent")
}
