package natsfleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Cluster is a NATS cluster of embedded servers in this process, routed
// to each other on loopback, with JetStream clustered over the nodes: the
// fleet's key-value buckets are replicated on up to three of them, so
// they survive the loss of one node of three. Its nodes share one
// generated user, for clients and routes alike. Create it with
// [StartCluster]; Close stops every node.
//
// A Cluster serves tests, examples and small setups; in production each
// node runs on its own machine (an external NATS cluster, or one node
// embedded per host with [StartServer] and ServerConfig.Cluster).
type Cluster struct {
	nodes []*Server
	info  ConnectInfo
}

// StartCluster starts n (at least 1) nodes of a NATS cluster and waits,
// bounded by cfg.ReadyTimeout for each node and again for the cluster
// (default 10 s and 30 s), until their routes are up and JetStream has a
// leader that every node follows. cfg gives what the
// nodes share (Cluster, default "fleet"; User and Password, default
// generated; MaxPayload, ReadyTimeout, Logger); Port, DataDir,
// ClusterPort, Routes and Name are per node and must be empty.
func StartCluster(n int, cfg ServerConfig) (*Cluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("natsfleet: StartCluster: %d nodes: start at least 1 (3 to survive the loss of one)", n)
	}
	if cfg.Port != 0 || cfg.DataDir != "" || cfg.ClusterPort != 0 || len(cfg.Routes) > 0 || cfg.Name != "" {
		return nil, errors.New("natsfleet: StartCluster: Port, DataDir, ClusterPort, Routes and Name are per node: leave them empty, or start each node with StartServer")
	}
	if cfg.Cluster == "" {
		cfg.Cluster = "fleet"
	}
	if cfg.User == "" {
		cfg.User = "fleet-" + randomHex(6)
	}
	if cfg.Password == "" {
		cfg.Password = randomHex(24)
	}
	ready := cfg.ReadyTimeout
	if ready == 0 {
		ready = 30 * time.Second // electing JetStream's leader takes seconds on a busy machine
	}
	// JetStream needs each node's routes configured from the start: every
	// node lists every route address, its own included (a node does not
	// route to itself).
	routes := make([]string, n)
	for i := range routes {
		port, err := freeLoopbackPort()
		if err != nil {
			return nil, fmt.Errorf("natsfleet: StartCluster: route port: %w", err)
		}
		routes[i] = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	}
	c := &Cluster{}
	for i := range n {
		node := cfg
		node.Name = fmt.Sprintf("%s-%d", cfg.Cluster, i)
		node.ClusterPort, _ = strconv.Atoi(routes[i][strings.LastIndexByte(routes[i], ':')+1:])
		node.Routes = routes
		s, err := StartServer(node)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("natsfleet: StartCluster: node %d: %w", i, err)
		}
		c.nodes = append(c.nodes, s)
	}
	urls := make([]string, n)
	for i, s := range c.nodes {
		urls[i] = s.ClientURL()
	}
	c.info = ConnectInfo{URL: strings.Join(urls, ","), User: cfg.User, Password: cfg.Password}
	if err := c.waitReady(ready); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// waitReady waits until every node has a route to every other and
// JetStream's meta group has a leader that every node follows.
func (c *Cluster) waitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		routed, leader, current := true, false, true
		for _, s := range c.nodes {
			if len(c.nodes) > 1 && s.ns.NumRoutes() < len(c.nodes)-1 {
				routed = false
			}
			leader = leader || s.ns.JetStreamIsLeader()
			current = current && s.ns.JetStreamIsCurrent()
		}
		if len(c.nodes) == 1 {
			leader = true
		}
		if routed && leader && current {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("natsfleet: StartCluster: not ready within %v (routes to every node: %v, a JetStream leader: %v, every node current: %v)", limit, routed, leader, current)
		}
		<-tick.C
	}
}

// freeLoopbackPort returns a port that was free on 127.0.0.1 a moment ago.
func freeLoopbackPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Len returns the number of nodes, running or closed.
func (c *Cluster) Len() int { return len(c.nodes) }

// Node returns node i (0 ≤ i < Len); closing it stops that node alone,
// as a crash of its machine would.
func (c *Cluster) Node(i int) *Server { return c.nodes[i] }

// ConnectInfo returns every node's URL (comma-separated) and the shared
// credentials: a connection made with them moves to another node when
// its node goes away.
func (c *Cluster) ConnectInfo() ConnectInfo { return c.info }

// Connect connects to the cluster with its credentials.
func (c *Cluster) Connect(ctx context.Context, opts ...Option) (*nats.Conn, error) {
	return Connect(ctx, c.info.URL, append(c.info.Options(), opts...)...)
}

// Close stops every node still running and waits for them.
func (c *Cluster) Close() {
	for _, s := range c.nodes {
		s.Close()
	}
}
