package natsfleet_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/gofleet/fleet/natsfleet"
)

// A test child is this test binary run again with childEnv set to its
// kind and childArgsEnv to its JSON arguments; it says "ready" on stdout,
// and stops when its stdin closes.
const (
	childEnv     = "NATSFLEET_TEST_CHILD"
	childArgsEnv = "NATSFLEET_TEST_CHILD_ARGS"
)

// childArgs is what a child needs.
type childArgs struct {
	NATS   natsfleet.ConnectInfo `json:"nats"`
	Prefix string                `json:"prefix"`
	// identify children
	Token, GatewayURL, RESTURL string
	Total, First, Last         int
	MaxConcurrency             int
	Interval                   time.Duration
	// rest children
	ProxyURL string
	Requests int
	Channels []uint64
}

var childKinds = map[string]func(childArgs) error{}

func runChild() int {
	var a childArgs
	if err := json.Unmarshal([]byte(os.Getenv(childArgsEnv)), &a); err != nil {
		fmt.Fprintln(os.Stderr, "child args:", err)
		return 2
	}
	fn, ok := childKinds[os.Getenv(childEnv)]
	if !ok {
		fmt.Fprintln(os.Stderr, "unknown child kind", os.Getenv(childEnv))
		return 2
	}
	if err := fn(a); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	return 0
}

// testChild is a running child process.
type testChild struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

// startChild starts a child of kind and waits for its "ready"; the test's
// end closes its stdin and waits for it (killing it after 10 s).
func startChild(t *testing.T, kind string, a childArgs) *testChild {
	t.Helper()
	raw, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+kind, childArgsEnv+"="+string(raw))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &testChild{cmd: cmd, stdin: stdin, lines: make(chan string, 16)}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	t.Cleanup(c.stop)
	if line, err := c.line(60 * time.Second); err != nil || line != "ready" {
		t.Fatalf("child %s: %q, %v; want ready", kind, line, err)
	}
	return c
}

func (c *testChild) line(limit time.Duration) (string, error) {
	select {
	case l, ok := <-c.lines:
		if !ok {
			return "", errors.New("the child exited")
		}
		return l, nil
	case <-time.After(limit):
		return "", fmt.Errorf("no line within %v", limit)
	}
}

func (c *testChild) stop() {
	_ = c.stdin.Close()
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
	for range c.lines {
	}
}

// childConnect connects a child to the parent's server.
func childConnect(a childArgs) (*natsfleetConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := natsfleet.Connect(ctx, a.NATS.URL, append(a.NATS.Options(), natsfleet.Logger(quiet))...)
	if err != nil {
		return nil, err
	}
	return &natsfleetConn{nc}, nil
}

// waitStdin blocks until the parent closes the child's stdin.
func waitStdin() { _, _ = io.Copy(io.Discard, os.Stdin) }
