package natsfleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
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
	return s, nil
}

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
func (s *Server) Close() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
	s.removeTemp()
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
