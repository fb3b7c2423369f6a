//go:build !unix

package natsfleet

import (
	"os"
	"os/exec"
)

func setProcessGroup(*exec.Cmd) {}

// kill kills the child.
func (ch *childProc) kill() { _ = ch.cmd.Process.Kill() }

// parentPipe is the child's stdin, the pipe from the parent.
func parentPipe() *os.File { return os.Stdin }
