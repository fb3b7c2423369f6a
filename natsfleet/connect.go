package natsfleet

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Option configures [Connect]. Options check their input and return an
// error that says what to change.
type Option func(*connectOptions) error

type connectOptions struct {
	nats []nats.Option
	auth string // which credential was given, for error messages
	log  *slog.Logger
}

// Logger receives the connection's asynchronous errors (a slow consumer,
// a failed write) instead of nats.go's default, stderr (default
// slog.Default()).
func Logger(l *slog.Logger) Option {
	return func(o *connectOptions) error {
		o.log = l
		return nil
	}
}

func (o *connectOptions) setAuth(kind string) error {
	if o.auth != "" && o.auth != kind {
		return fmt.Errorf("natsfleet: both %s and %s given: give one kind of credential", o.auth, kind)
	}
	o.auth = kind
	return nil
}

// UserPassword authenticates with a user and password.
func UserPassword(user, password string) Option {
	return func(o *connectOptions) error {
		if user == "" {
			return errors.New("natsfleet: UserPassword: empty user")
		}
		o.nats = append(o.nats, nats.UserInfo(user, password))
		return o.setAuth("a user/password")
	}
}

// Token authenticates with a token.
func Token(token string) Option {
	return func(o *connectOptions) error {
		if token == "" {
			return errors.New("natsfleet: Token: empty token")
		}
		o.nats = append(o.nats, nats.Token(token))
		return o.setAuth("a token")
	}
}

// NKeySeedFile authenticates with the nkey whose seed is in path.
func NKeySeedFile(path string) Option {
	return func(o *connectOptions) error {
		opt, err := nats.NkeyOptionFromSeed(path)
		if err != nil {
			return fmt.Errorf("natsfleet: NKeySeedFile %s: %w", path, err)
		}
		o.nats = append(o.nats, opt)
		return o.setAuth("an nkey")
	}
}

// CredsFile authenticates with a NATS credentials file (a user JWT and
// its nkey seed).
func CredsFile(path string) Option {
	return func(o *connectOptions) error {
		if path == "" {
			return errors.New("natsfleet: CredsFile: empty path")
		}
		o.nats = append(o.nats, nats.UserCredentials(path))
		return o.setAuth("a creds file")
	}
}

// TLS uses cfg for the connection (a nil cfg means the system roots).
func TLS(cfg *tls.Config) Option {
	return func(o *connectOptions) error {
		if cfg == nil {
			o.nats = append(o.nats, nats.Secure())
		} else {
			o.nats = append(o.nats, nats.Secure(cfg))
		}
		return nil
	}
}

// Name names the connection in the server's monitoring.
func Name(name string) Option {
	return func(o *connectOptions) error {
		o.nats = append(o.nats, nats.Name(name))
		return nil
	}
}

// NATSOptions passes options of nats.go itself, for what this package
// does not cover (reconnect policy, handlers).
func NATSOptions(opts ...nats.Option) Option {
	return func(o *connectOptions) error {
		o.nats = append(o.nats, opts...)
		return nil
	}
}

// Connect connects to the NATS server at serverURL (a comma-separated
// list for a cluster). It fails at once, naming the URL, if no server
// answers there or if the server refuses the credentials. ctx's deadline,
// if any, bounds the dial. The connection reconnects by itself after a
// drop; close it with Close when done.
func Connect(ctx context.Context, serverURL string, opts ...Option) (*nats.Conn, error) {
	var o connectOptions
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	shown := redactURL(serverURL)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("natsfleet: connect to %s: %w", shown, err)
	}
	log := o.log
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "natsfleet", "nats", shown)
	nopts := []nats.Option{
		nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				log.Warn("nats connection error", "subject", sub.Subject, "err", err)
			} else {
				log.Warn("nats connection error", "err", err)
			}
		}),
	}
	if d, ok := ctx.Deadline(); ok {
		nopts = append(nopts, nats.Timeout(time.Until(d)))
	}
	nopts = append(nopts, o.nats...)
	nc, err := nats.Connect(serverURL, nopts...)
	if err != nil {
		return nil, connectError(shown, o.auth, err)
	}
	return nc, nil
}

func connectError(shown, auth string, err error) error {
	switch {
	case errors.Is(err, nats.ErrAuthorization) || strings.Contains(strings.ToLower(err.Error()), "authorization"):
		if auth == "" {
			auth = "no credentials"
		}
		return fmt.Errorf("natsfleet: connect to %s: the server refused the credentials (%s given): check the user/password, token, nkey or creds file: %w", shown, auth, err)
	case errors.Is(err, nats.ErrNoServers):
		return fmt.Errorf("natsfleet: connect to %s: no NATS server answers there: start one or correct the URL: %w", shown, err)
	}
	return fmt.Errorf("natsfleet: connect to %s: %w", shown, err)
}

// redactURL hides the password or token in a URL's user information.
func redactURL(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil || u.User == nil {
			continue
		}
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "REDACTED")
		} else {
			u.User = url.User("REDACTED")
		}
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}

// PayloadError is returned when a message is larger than the server's
// max payload.
type PayloadError struct {
	Size, Max int64
	What      string
}

func (e *PayloadError) Error() string {
	return fmt.Sprintf("natsfleet: %s of %d bytes exceeds the NATS server's max payload of %d bytes: send less, or raise max_payload on the server", e.What, e.Size, e.Max)
}

// Is makes errors.Is(err, nats.ErrMaxPayload) hold.
func (e *PayloadError) Is(target error) bool { return target == nats.ErrMaxPayload }

func checkPayload(nc *nats.Conn, what string, n int) error {
	if max := nc.MaxPayload(); max > 0 && int64(n) > max {
		return &PayloadError{Size: int64(n), Max: max, What: what}
	}
	return nil
}
