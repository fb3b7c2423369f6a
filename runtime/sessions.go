package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gofleet/fleet/shardgroup"
)

// SessionStore keeps shards' sessions across process restarts, so that a
// new binary RESUMEs instead of spending IDENTIFYs. With
// Config.SessionStore set, Run resumes the saved sessions that are still
// fresh and match the shard count, identifies only the other shards, and
// when it stops closes every shard with a resumable code and saves the
// sessions.
type SessionStore interface {
	Save(ctx context.Context, sessions []shardgroup.Session) error
	Load(ctx context.Context) ([]shardgroup.Session, error)
}

// MemorySessionStore is a SessionStore in memory, for tests and for
// several runtimes in one process. Its zero value is ready to use.
type MemorySessionStore struct {
	mu       sync.Mutex // guards sessions
	sessions []shardgroup.Session
}

// Save replaces the stored sessions with a copy of sessions.
func (m *MemorySessionStore) Save(_ context.Context, sessions []shardgroup.Session) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sessions = append([]shardgroup.Session(nil), sessions...)
	return nil
}

// Load returns a copy of the stored sessions.
func (m *MemorySessionStore) Load(context.Context) ([]shardgroup.Session, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]shardgroup.Session(nil), m.sessions...), nil
}

// FileSessionStore keeps sessions in a JSON file, written atomically (a
// temporary file renamed over the old one) with mode 0600: session IDs let
// anyone with the token take the sessions over.
type FileSessionStore struct {
	Path string
}

// sessionFileFormat marks the files FileSessionStore writes.
const sessionFileFormat = "gofleet-sessions/1"

type sessionFile struct {
	Format   string               `json:"format"`
	Sessions []shardgroup.Session `json:"sessions"`
}

// ErrForeignSessionFile means a session file was not written by this
// package (or by an incompatible version).
var ErrForeignSessionFile = errors.New("runtime: not a session file of this version")

// Save writes the sessions.
func (f FileSessionStore) Save(_ context.Context, sessions []shardgroup.Session) error {
	data, err := json.Marshal(sessionFile{Format: sessionFileFormat, Sessions: sessions})
	if err != nil {
		return err
	}
	dir := filepath.Dir(f.Path)
	tmp, err := os.CreateTemp(dir, ".sessions-*")
	if err != nil {
		return fmt.Errorf("runtime: save sessions: %w", err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("runtime: save sessions: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("runtime: save sessions: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("runtime: save sessions: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("runtime: save sessions: %w", err)
	}
	if err := os.Rename(tmp.Name(), f.Path); err != nil {
		return fmt.Errorf("runtime: save sessions: %w", err)
	}
	return nil
}

// Load reads the sessions. A missing file is no sessions; a corrupt,
// truncated or foreign one is an error (Run then warns and identifies).
//
// A file that other users can write is refused: whoever can write it can
// make the fleet send the token to a host of their choosing. It must not
// be writable by group or others, and must belong to the process's user.
func (f FileSessionStore) Load(context.Context) ([]shardgroup.Session, error) {
	file, err := os.Open(f.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("runtime: load sessions: %w", err)
	}
	defer file.Close()
	fi, err := file.Stat()
	if err != nil {
		return nil, fmt.Errorf("runtime: load sessions: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return nil, fmt.Errorf("runtime: session file %s is writable by other users (mode %#o): run chmod 600 on it, or remove it", f.Path, perm)
	}
	if err := checkOwner(f.Path, fi); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(file)
	if err != nil {
		return nil, fmt.Errorf("runtime: load sessions: %w", err)
	}
	var sf sessionFile
	if err := json.Unmarshal(data, &sf); err != nil {
		return nil, fmt.Errorf("runtime: load sessions from %s: %w", f.Path, err)
	}
	if sf.Format != sessionFileFormat {
		return nil, fmt.Errorf("%w: %s has format %q", ErrForeignSessionFile, f.Path, sf.Format)
	}
	return sf.Sessions, nil
}

// loadSessions returns the stored sessions worth resuming, by shard ID.
// Nothing stored, or nothing usable, means every shard identifies; a
// store that cannot be read is a warning, never a failure. A stored
// session is checked before it is trusted (see checkSession); the ones
// refused are summed up in one warning.
func (r *Runtime) loadSessions(ctx context.Context, total int, gatewayURL string) map[int]shardgroup.Session {
	if r.cfg.SessionStore == nil {
		return nil
	}
	sessions, err := r.cfg.SessionStore.Load(ctx)
	if err != nil {
		r.cfg.Logger.Warn("session store unreadable: every shard identifies", "err", err.Error())
		return nil
	}
	gw, err := url.Parse(gatewayURL)
	if err != nil {
		r.cfg.Logger.Warn("gateway URL unparsable: stored sessions not trusted, every shard identifies", "err", err.Error())
		return nil
	}
	out := map[int]shardgroup.Session{}
	now := time.Now()
	refused := map[string]int{}
	for _, s := range sessions {
		if why := checkSession(s, now, total, gw, r.cfg.SessionMaxAge); why != "" {
			refused[why]++
			continue
		}
		out[s.ShardID] = s
	}
	if n := len(sessions) - len(out); n > 0 {
		reasons := make([]string, 0, len(refused))
		for why, k := range refused {
			reasons = append(reasons, fmt.Sprintf("%d %s", k, why))
		}
		slices.Sort(reasons)
		r.cfg.Logger.Warn(fmt.Sprintf("%d of %d stored sessions unusable: %s: those shards identify", n, len(sessions), strings.Join(reasons, ", ")),
			"unusable", n, "stored", len(sessions))
	}
	return out
}

// checkSession says why a stored session must not be resumed, or "" if it
// may be: it must name a shard of this fleet's count, be younger than
// maxAge and not from the future, and resume on the gateway's own host
// (see resumeURLTrusted), since a RESUME sends the token there.
func checkSession(s shardgroup.Session, now time.Time, total int, gateway *url.URL, maxAge time.Duration) string {
	switch {
	case s.SessionID == "":
		return "without a session ID"
	case s.ShardCount != total || s.ShardID < 0 || s.ShardID >= total:
		return "foreign shard count"
	case s.SavedAt.After(now):
		return "saved in the future"
	case now.Sub(s.SavedAt) > maxAge:
		return "stale"
	case s.ResumeURL != "" && !resumeURLTrusted(gateway, s.ResumeURL):
		return "foreign resume URL"
	}
	return ""
}

// resumeURLTrusted reports whether a resume URL is on the gateway's host:
// wss:// (ws:// only when the gateway itself is on a loopback address, as
// a test gateway is), and either the gateway's own host and port, or,
// for a gateway named by DNS, a host of the same parent domain on the same
// port (Discord's resume_gateway_url is gateway-us-east1-b.discord.gg for
// gateway.discord.gg).
func resumeURLTrusted(gateway *url.URL, resume string) bool {
	u, err := url.Parse(resume)
	if err != nil || u.User != nil || u.Host == "" {
		return false
	}
	loopback := isLoopback(gateway.Hostname())
	switch {
	case u.Scheme == "wss":
	case u.Scheme == "ws" && loopback && isLoopback(u.Hostname()):
	default:
		return false
	}
	if port(u) != port(gateway) {
		return false
	}
	host, gwHost := strings.ToLower(u.Hostname()), strings.ToLower(gateway.Hostname())
	if host == gwHost {
		return true
	}
	if loopback || net.ParseIP(gwHost) != nil {
		return false
	}
	_, parent, ok := strings.Cut(gwHost, ".")
	return ok && strings.Contains(parent, ".") && strings.HasSuffix(host, "."+parent)
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// port is a URL's port, or its scheme's default.
func port(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if u.Scheme == "ws" {
		return "80"
	}
	return "443"
}

// keepSessions collects sessions of stopped groups for saveSessions.
func (r *Runtime) keepSessions(sessions map[int]shardgroup.Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.kept == nil {
		r.kept = map[int]shardgroup.Session{}
	}
	now := time.Now()
	for id, s := range sessions {
		s.SavedAt = now
		r.kept[id] = s
	}
}

// saveSessions writes the kept sessions to the store.
func (r *Runtime) saveSessions() {
	if r.cfg.SessionStore == nil {
		return
	}
	r.mu.Lock()
	list := make([]shardgroup.Session, 0, len(r.kept))
	for _, s := range r.kept {
		list = append(list, s)
	}
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.ShutdownTimeout)
	defer cancel()
	if err := r.cfg.SessionStore.Save(ctx, list); err != nil {
		r.cfg.Logger.Error("saving sessions failed: the next start identifies", "err", err.Error())
		return
	}
	r.cfg.Logger.Info("sessions saved", "sessions", len(list))
}

// checkpointLoop saves the live sessions of every cluster each interval
// until stop closes, so that a process that dies without stopping can be
// resumed from its last checkpoint. A save is bounded by the interval (at
// least a second) and ends with stop.
func (r *Runtime) checkpointLoop(stop <-chan struct{}, interval time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer context.AfterFunc(r.lifeContext(), cancel)()
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		list := r.liveSessions()
		if len(list) == 0 {
			continue
		}
		sctx, scancel := context.WithTimeout(ctx, max(interval, time.Second))
		err := r.cfg.SessionStore.Save(sctx, list)
		scancel()
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			failing = true
			r.cfg.Logger.Warn("session checkpoint failed: a crash now costs IDENTIFYs for the shards whose sessions are not saved", "err", err.Error())
		case err == nil && failing:
			failing = false
			r.cfg.Logger.Info("session checkpoints saved again", "sessions", len(list))
		}
	}
}

// liveSessions is a snapshot of the sessions of every running cluster.
func (r *Runtime) liveSessions() []shardgroup.Session {
	r.mu.Lock()
	clusters := slices.Clone(r.clusters)
	r.mu.Unlock()
	var list []shardgroup.Session
	for _, c := range clusters {
		c.mu.Lock()
		run := c.runner
		c.mu.Unlock()
		if run == nil {
			continue
		}
		for _, s := range run.Sessions() {
			list = append(list, s)
		}
	}
	return list
}
