package multihost

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gofleet/fleet/natsfleet"
)

// Nodes is the fleet's NATS cluster, run in a process of its own (the
// caller's binary again, as the hosts are), as a production fleet's NATS
// servers run apart from its hosts. Apart from production's layout, it
// keeps nats-server's clustered JetStream out of the process that runs
// the checks: a data race inside nats-server itself is printed on stderr
// with the rest of that process's output, but is not a race of the
// fleet's code and does not fail the caller's tests (the process runs
// with GORACE exitcode=0). Races in the hosts and in the caller still do.
type Nodes struct {
	proc *Proc
	info natsfleet.ConnectInfo
	urls []string
}

// nodesReport is the NATS process's "nats" line.
type nodesReport struct {
	Info natsfleet.ConnectInfo `json:"info"`
	URLs []string              `json:"urls"`
}

// StartNodes starts n NATS nodes in a process of exe (which must call
// [RunHostFromEnv] when HostEnv is set) and waits, bounded by ctx, until
// their cluster is ready.
func StartNodes(ctx context.Context, exe string, args []string, n int) (*Nodes, error) {
	raw, err := json.Marshal(HostArgs{ID: "nats", NATSNodes: n})
	if err != nil {
		return nil, err
	}
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " exitcode=0") // the caller's options kept
	p, err := StartProc("nats", exe, args, []string{HostEnv + "=" + string(raw), "GORACE=" + gorace})
	if err != nil {
		return nil, err
	}
	line, err := p.Await(ctx, "nats ")
	if err != nil {
		p.Kill()
		return nil, err
	}
	var r nodesReport
	if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "nats ")), &r); err != nil || len(r.URLs) != n {
		p.Kill()
		return nil, fmt.Errorf("the NATS process's line %q: want %d nodes' URLs (%v)", line, n, err)
	}
	return &Nodes{proc: p, info: r.Info, urls: r.URLs}, nil
}

// Len returns the number of nodes, running or closed.
func (c *Nodes) Len() int { return len(c.urls) }

// ClientURL returns node i's client URL.
func (c *Nodes) ClientURL(i int) string { return c.urls[i] }

// ConnectInfo returns every node's URL and the cluster's credentials.
func (c *Nodes) ConnectInfo() natsfleet.ConnectInfo { return c.info }

// Connect connects to the cluster with its credentials.
func (c *Nodes) Connect(ctx context.Context, opts ...natsfleet.Option) (*nats.Conn, error) {
	return natsfleet.Connect(ctx, c.info.URL, append(c.info.Options(), opts...)...)
}

// CloseNode stops node i alone, as a crash of its machine would, and
// waits (bounded by ctx) until it has stopped.
func (c *Nodes) CloseNode(ctx context.Context, i int) error {
	if err := c.proc.Send("close " + strconv.Itoa(i)); err != nil {
		return fmt.Errorf("close NATS node %d: %w", i, err)
	}
	_, err := c.proc.Await(ctx, "closed "+strconv.Itoa(i))
	return err
}

// Close stops every node: it closes the process's stdin and waits for
// it, killing it after 30 s.
func (c *Nodes) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return c.proc.Stop(ctx)
}

// runNodes is the NATS process: it starts n nodes, prints "nats" and
// their addresses, closes node i on "close i" (answering "closed i"), and
// stops every node when commands closes.
func runNodes(n int, commands <-chan string) error {
	c, err := natsfleet.StartCluster(n, natsfleet.ServerConfig{})
	if err != nil {
		return err
	}
	defer c.Close()
	r := nodesReport{Info: c.ConnectInfo()}
	for i := range c.Len() {
		r.URLs = append(r.URLs, c.Node(i).ClientURL())
	}
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	fmt.Println("nats " + string(raw))
	for cmd := range commands {
		arg, ok := strings.CutPrefix(cmd, "close ")
		i, err := strconv.Atoi(arg)
		if !ok || err != nil || i < 0 || i >= c.Len() {
			fmt.Fprintf(os.Stderr, "nats: unknown command %q (want \"close i\", 0 <= i < %d)\n", cmd, c.Len())
			continue
		}
		c.Node(i).Close()
		fmt.Println("closed " + arg)
	}
	return nil // stdin closed: the deferred Close stops every node
}
