package shardgroup

import "log/slog"

// Token is a bot token. It redacts itself wherever it could be printed or
// encoded: %v, %+v, %#v, slog, JSON and text encodings. Use string(t)
// only where the token must be sent to Discord.
type Token string

// String keeps the token out of formatted output.
func (Token) String() string { return "REDACTED" }

// GoString keeps the token out of %#v.
func (Token) GoString() string { return `"REDACTED"` }

// LogValue keeps the token out of logs.
func (Token) LogValue() slog.Value { return slog.StringValue("REDACTED") }

// MarshalText keeps the token out of JSON and other encodings.
func (Token) MarshalText() ([]byte, error) { return []byte("REDACTED"), nil }
