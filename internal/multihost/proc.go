package multihost

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
)

// Proc is a child process that speaks in lines: it writes its events on
// stdout, reads commands from stdin, and stops when stdin closes.
type Proc struct {
	Name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // stdout, closed at EOF
	done  chan struct{}
	err   error // the process's exit, valid once done is closed
	once  sync.Once
}

// StartProc starts name's binary exe with args and env added to this
// process's environment; its stderr goes to this process's stderr.
func StartProc(name, exe string, args, env []string) (*Proc, error) {
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, cmd: cmd, stdin: stdin, lines: make(chan string, 256), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the process ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Await reads lines until one starts with prefix and returns it, failing
// when ctx ends or the process exits first, saying which line it waited
// for.
func (p *Proc) Await(ctx context.Context, prefix string) (string, error) {
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				<-p.done
				return "", fmt.Errorf("%s exited (%v) while waiting for a line %q", p.Name, p.err, prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return l, nil
			}
		case <-ctx.Done():
			return "", fmt.Errorf("%s: no line %q: %w", p.Name, prefix, context.Cause(ctx))
		}
	}
}

// Lines returns the process's stdout lines; read them only when not
// using Await.
func (p *Proc) Lines() <-chan string { return p.lines }

// Send writes a command line to the process's stdin.
func (p *Proc) Send(cmd string) error {
	_, err := io.WriteString(p.stdin, cmd+"\n")
	return err
}

// Kill sends SIGKILL and waits for the process to be reaped.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Kill()
	p.drain()
}

// Stop closes stdin and waits for the process to exit, killing it when
// ctx ends first; it returns the exit error.
func (p *Proc) Stop(ctx context.Context) error {
	p.once.Do(func() { _ = p.stdin.Close() })
	go func() {
		select {
		case <-p.done:
		case <-ctx.Done():
			_ = p.cmd.Process.Kill()
		}
	}()
	p.drain()
	if ctx.Err() != nil {
		return fmt.Errorf("%s did not stop in time: killed", p.Name)
	}
	return p.err
}

func (p *Proc) drain() {
	for range p.lines {
	}
	<-p.done
}

// Exited reports whether the process has exited and been reaped.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Children returns the IDs of this process's live (not yet reaped)
// children, read from /proc; on systems without it, none.
func Children() ([]int, error) {
	tasks, err := os.ReadDir("/proc/self/task")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, t := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + t.Name() + "/children")
		if err != nil {
			continue // the thread ended
		}
		for f := range strings.FieldsSeq(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids, nil
}

// LineReader lets a child process read its commands from stdin: each
// line is sent on the returned channel, which closes when stdin closes
// (the parent stopped it or died).
func LineReader() <-chan string {
	ch := make(chan string)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			ch <- sc.Text()
		}
	}()
	return ch
}
