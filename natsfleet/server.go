package natsfleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// ServerConfig configures an embedded NATS server. The zero value means
// the defaults: a random loopback port, JetStream in a temporary
// directory removed by Close, generated credentials.
type ServerConfig struct {
	// Port is the client port on 127.0.0.1; 0 picks a free one.
	Port int
	// DataDir is JetStream's storage directory. Empty: a temporary
	// directory that Close removes.
	DataDir string
	// MaxPayload is the largest message the server accepts, in bytes
	// (default NATS's 1 MiB).
	MaxPayload int32
	// User and Password are the one account's credentials; empty: generated.
	// Give them to restart a server that the fleet's connections rejoin.
	User, Password string
	// ReadyTimeout bounds the wait for the server to accept clients
	// (default 10 s).
	ReadyTimeout time.Duration
	// Logger, if set, receives the server's warnings and errors; nil
	// keeps the server quiet.
	Logger *slog.Logger

	// Cluster, if set, makes the server a node of the NATS cluster of
	// that name, with JetStream clustered over the nodes. Every node of a
	// cluster has the same Cluster, User and Password (routes between
	// nodes authenticate with them too, so nothing without them can join
	// as a client or as a node) and its own Name. [StartCluster] starts
	// the nodes of a cluster in one process.
	Cluster string
	// Name is the server's name, unique in its cluster and kept across
	// restarts of a node (default generated).
	Name string
	// ClusterPort is the port on 127.0.0.1 where the node accepts routes
	// from the other nodes (0: a free one; see [Server.RouteAddr]).
	ClusterPort int
	// Routes are the route addresses (host:port, as [Server.RouteAddr]
	// returns them) of the cluster's nodes, this one's included if
	// convenient (a node does not route to itself): the same list on
	// every node. JetStream needs at least one.
	Routes []string
}

// Server is a NATS server running inside this process, on loopback, with
// JetStream and one generated user: nothing else on the machine can join
// without the credentials from [Server.ConnectInfo]. Create it with
// [StartServer]; Close stops it.
type Server struct {
	ns      *server.Server
	info    ConnectInfo
	dataDir string
	tempDir bool
	route   string // host:port of the route listener; "" when not clustered
	once    sync.Once
}

// ConnectInfo is what another process needs to join a fleet's NATS: the
// URL and the credentials. Its LogValue and String hide the password.
type ConnectInfo struct {
	URL      string `json:"url"`
	User     string `json:"user"`
	Password string `json:"password"`
}

// String returns the URL and user, with the password hidden.
func (c ConnectInfo) String() string { return c.URL + " (user " + c.User + ", password REDACTED)" }

// LogValue hides the password from slog.
func (c ConnectInfo) LogValue() slog.Value {
	return slog.GroupValue(slog.String("url", c.URL), slog.String("user", c.User), slog.String("password", "REDACTED"))
}

// Options returns the connect options carrying the credentials.
func (c ConnectInfo) Options() []Option {
	if c.User == "" {
		return nil
	}
	return []Option{UserPassword(c.User, c.Password)}
}

// StartServer starts an embedded NATS server and waits until it accepts
// clients.
func StartServer(cfg ServerConfig) (*Server, error) {
	if cfg.Port < 0 || cfg.Port > 65535 {
		return nil, fmt.Errorf("natsfleet: ServerConfig.Port (%d) out of range: use 0 for a free port or 1-65535", cfg.Port)
	}
	if cfg.MaxPayload < 0 {
		return nil, fmt.Errorf("natsfleet: ServerConfig.MaxPayload (%d) < 0: use 0 for NATS's default (1 MiB)", cfg.MaxPayload)
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	clusterOpts, routes, err := routeOptions(cfg)
	if err != nil {
		return nil, err
	}
	s := &Server{dataDir: cfg.DataDir}
	if s.dataDir == "" {
		d, err := os.MkdirTemp("", "natsfleet-*")
		if err != nil {
			return nil, fmt.Errorf("natsfleet: JetStream data directory: %w", err)
		}
		s.dataDir, s.tempDir = d, true
	}
	user, pass := cfg.User, cfg.Password
	if user == "" {
		user = "fleet-" + randomHex(6)
	}
	if pass == "" {
		pass = randomHex(24)
	}
	port := cfg.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	opts := &server.Options{
		Host:                   "127.0.0.1",
		Port:                   port,
		NoLog:                  cfg.Logger == nil,
		NoSigs:                 true,
		JetStream:              true,
		StoreDir:               s.dataDir,
		MaxPayload:             cfg.MaxPayload,
		DisableJetStreamBanner: true,
		Users:                  []*server.User{{Username: user, Password: pass}},
		HTTPPort:               0,
	}
	if cfg.Cluster != "" {
		opts.ServerName = cfg.Name
		if opts.ServerName == "" {
			opts.ServerName = cfg.Cluster + "-" + randomHex(4)
		}
		opts.Cluster = clusterOpts
		opts.Routes = routes
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		s.removeTemp()
		return nil, fmt.Errorf("natsfleet: embedded server: %w", err)
	}
	if cfg.Logger != nil {
		ns.SetLoggerV2(&serverLogger{log: cfg.Logger.With("component", "nats-server")}, false, false, false)
	}
	ns.Start()
	if !ns.ReadyForConnections(cfg.ReadyTimeout) {
		ns.Shutdown()
		ns.WaitForShutdown()
		s.removeTemp()
		return nil, fmt.Errorf("natsfleet: embedded server not ready within %v on 127.0.0.1:%d: is the port free?", cfg.ReadyTimeout, cfg.Port)
	}
	s.ns = ns
	s.info = ConnectInfo{URL: ns.ClientURL(), User: user, Password: pass}
	if a := ns.ClusterAddr(); cfg.Cluster != "" && a != nil {
		s.route = net.JoinHostPort("127.0.0.1", strconv.Itoa(a.Port))
	}
	return s, nil
}

// routeOptions checks a node's cluster fields and returns its route
// listener and the routes it joins, authenticated with User and Password.
func routeOptions(cfg ServerConfig) (server.ClusterOpts, []*url.URL, error) {
	if cfg.Cluster == "" {
		if cfg.ClusterPort != 0 || len(cfg.Routes) > 0 || cfg.Name != "" {
			return server.ClusterOpts{}, nil, errors.New("natsfleet: ServerConfig.ClusterPort, Routes or Name set without Cluster: name the cluster the node joins")
		}
		return server.ClusterOpts{}, nil, nil
	}
	if strings.ContainsAny(cfg.Cluster, " .*>") {
		return server.ClusterOpts{}, nil, fmt.Errorf("natsfleet: ServerConfig.Cluster %q has a space, '.', '*' or '>': use letters, digits, '-' and '_'", cfg.Cluster)
	}
	if cfg.User == "" || cfg.Password == "" {
		return server.ClusterOpts{}, nil, errors.New("natsfleet: ServerConfig.Cluster set without User and Password: the nodes of a cluster share them (StartCluster generates them)")
	}
	if len(cfg.Routes) == 0 {
		return server.ClusterOpts{}, nil, errors.New("natsfleet: ServerConfig.Cluster set without Routes: list the route addresses of the cluster's nodes (the same list on every node)")
	}
	if cfg.ClusterPort < 0 || cfg.ClusterPort > 65535 {
		return server.ClusterOpts{}, nil, fmt.Errorf("natsfleet: ServerConfig.ClusterPort (%d) out of range: use 0 for a free port or 1-65535", cfg.ClusterPort)
	}
	port := cfg.ClusterPort
	if port == 0 {
		port = server.RANDOM_PORT
	}
	co := server.ClusterOpts{
		Name: cfg.Cluster, Host: "127.0.0.1", Port: port,
		Username: cfg.User, Password: cfg.Password,
	}
	var routes []*url.URL
	for _, r := range cfg.Routes {
		host, p, err := net.SplitHostPort(strings.TrimPrefix(strings.TrimPrefix(r, "nats-route://"), "nats://"))
		if err != nil {
			return server.ClusterOpts{}, nil, fmt.Errorf("natsfleet: ServerConfig.Routes: %q: want host:port as Server.RouteAddr returns it", r)
		}
		routes = append(routes, &url.URL{Scheme: "nats-route", Host: net.JoinHostPort(host, p), User: url.UserPassword(cfg.User, cfg.Password)})
	}
	return co, routes, nil
}

// RouteAddr returns host:port where the node accepts routes from other
// nodes of its cluster ("" for a standalone server): what another node
// puts in its ServerConfig.Routes to join.
func (s *Server) RouteAddr() string { return s.route }

// Name returns the server's name (in a cluster, ServerConfig.Name or the
// generated one).
func (s *Server) Name() string { return s.ns.Name() }

// ClientURL returns the server's URL, nats://127.0.0.1:<port>.
func (s *Server) ClientURL() string { return s.info.URL }

// ConnectInfo returns the URL and the generated credentials. Hand them to
// the fleet's other processes privately (an inherited environment, a
// file of mode 0600), never on a command line.
func (s *Server) ConnectInfo() ConnectInfo { return s.info }

// Connect connects to the server with its credentials.
func (s *Server) Connect(ctx context.Context, opts ...Option) (*nats.Conn, error) {
	return Connect(ctx, s.info.URL, append(s.info.Options(), opts...)...)
}

// ConnectInProcess connects to the server through memory instead of TCP
// loopback: for the process that embeds it, where each message then
// skips a socket and its system calls on the way to and from the server
// (the fleet's other processes still use the URL). Such a connection
// cannot move to another server: if this one stops, it stays
// disconnected.
func (s *Server) ConnectInProcess(ctx context.Context, opts ...Option) (*nats.Conn, error) {
	return Connect(ctx, s.info.URL, append(append(s.info.Options(), opts...), NATSOptions(nats.InProcessServer(s.ns)))...)
}

// Close stops the server, waits for it, and removes its data directory
// if it was a temporary one.
// Closing a closed server does nothing.
func (s *Server) Close() {
	s.once.Do(func() {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
		s.removeTemp()
	})
}

func (s *Server) removeTemp() {
	if s.tempDir {
		_ = os.RemoveAll(s.dataDir)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("natsfleet: crypto/rand: " + err.Error())
	}
	return hex.EncodeToString(b)
}

// serverLogger passes the server's warnings and errors to slog.
type serverLogger struct{ log *slog.Logger }

func (l *serverLogger) Noticef(string, ...any) {}
func (l *serverLogger) Warnf(format string, v ...any) {
	l.log.Warn("nats server", "msg", fmt.Sprintf(format, v...))
}
func (l *serverLogger) Fatalf(format string, v ...any) {
	l.log.Error("nats server", "msg", fmt.Sprintf(format, v...))
}
func (l *serverLogger) Errorf(format string, v ...any) {
	l.log.Error("nats server", "msg", fmt.Sprintf(format, v...))
}
func (l *serverLogger) Debugf(string, ...any) {}
func (l *serverLogger) Tracef(string, ...any) {}
