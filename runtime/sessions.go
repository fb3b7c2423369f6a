package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
func (f FileSessionStore) Load(context.Context) ([]shardgroup.Session, error) {
	data, err := os.ReadFile(f.Path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
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
// store that cannot be read is a warning, never a failure.
func (r *Runtime) loadSessions(ctx context.Context, total int) map[int]shardgroup.Session {
	if r.cfg.SessionStore == nil {
		return nil
	}
	sessions, err := r.cfg.SessionStore.Load(ctx)
	if err != nil {
		r.cfg.Logger.Warn("session store unreadable: every shard identifies", "err", err.Error())
		return nil
	}
	out := map[int]shardgroup.Session{}
	now := time.Now()
	for _, s := range sessions {
		switch {
		case s.SessionID == "" || s.ShardCount != total || s.ShardID < 0 || s.ShardID >= total:
			r.cfg.Logger.Warn("stored session does not match the fleet: shard identifies", "shard", s.ShardID, "shard_count", s.ShardCount, "fleet_shards", total)
		case now.Sub(s.SavedAt) > r.cfg.SessionMaxAge:
			r.cfg.Logger.Warn("stored session is stale: shard identifies", "shard", s.ShardID, "age", now.Sub(s.SavedAt).Round(time.Second))
		default:
			out[s.ShardID] = s
		}
	}
	return out
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
