package runtime

import (
	"context"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/shardgroup"
)

func TestCheckSession(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	good := shardgroup.Session{ShardID: 1, ShardCount: 4, SessionID: "s", Sequence: 3, SavedAt: now.Add(-time.Minute)}
	with := func(edit func(*shardgroup.Session)) shardgroup.Session {
		s := good
		edit(&s)
		return s
	}
	cases := []struct {
		gateway string
		s       shardgroup.Session
		want    string
	}{
		{"wss://gateway.discord.gg", good, ""},
		{"wss://gateway.discord.gg", with(func(s *shardgroup.Session) { s.ResumeURL = "wss://gateway-us-east1-b.discord.gg" }), ""},
		{"wss://gateway.discord.gg", with(func(s *shardgroup.Session) { s.ResumeURL = "wss://gateway.discord.gg:443/" }), ""},
		{"wss://gateway.discord.gg", with(func(s *shardgroup.Session) { s.ResumeURL = "ws://gateway-us-east1-b.discord.gg" }), "foreign resume URL"},
		{"wss://gateway.discord.gg", with(func(s *shardgroup.Session) { s.ResumeURL = "wss://evil.example" }), "foreign resume URL"},
		{"wss://gateway.discord.gg", with(func(s *shardgroup.Session) { s.ResumeURL = "wss://discord.gg.evil.example" }), "foreign resume URL"},
		{"wss://gateway.discord.gg", with(func(s *shardgroup.Session) { s.ResumeURL = "wss://x.discord.gg:8443" }), "foreign resume URL"},
		{"wss://gateway.discord.gg", with(func(s *shardgroup.Session) { s.ResumeURL = "wss://user@x.discord.gg" }), "foreign resume URL"},
		{"ws://127.0.0.1:4000", with(func(s *shardgroup.Session) { s.ResumeURL = "ws://127.0.0.1:4000/resume" }), ""},
		{"ws://127.0.0.1:4000", with(func(s *shardgroup.Session) { s.ResumeURL = "ws://127.0.0.1:4001/resume" }), "foreign resume URL"},
		{"ws://127.0.0.1:4000", with(func(s *shardgroup.Session) { s.ResumeURL = "ws://10.0.0.1:4000" }), "foreign resume URL"},
		{"wss://gateway.discord.gg", with(func(s *shardgroup.Session) { s.SavedAt = now.Add(time.Second) }), "saved in the future"},
		{"wss://gateway.discord.gg", with(func(s *shardgroup.Session) { s.SavedAt = now.Add(-time.Hour) }), "stale"},
		{"wss://gateway.discord.gg", with(func(s *shardgroup.Session) { s.ShardCount = 8 }), "foreign shard count"},
		{"wss://gateway.discord.gg", with(func(s *shardgroup.Session) { s.ShardID = 4 }), "foreign shard count"},
		{"wss://gateway.discord.gg", with(func(s *shardgroup.Session) { s.SessionID = "" }), "without a session ID"},
	}
	for i, tc := range cases {
		gw, _ := url.Parse(tc.gateway)
		if got := checkSession(tc.s, now, 4, gw, 3*time.Minute); got != tc.want {
			t.Errorf("case %d (%s, resume %q): %q, want %q", i, tc.gateway, tc.s.ResumeURL, got, tc.want)
		}
	}
}

func TestForeignResumeURLIsNeverDialled(t *testing.T) {
	s := smallServer()
	defer s.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var dialled atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			dialled.Add(1)
			c.Close()
		}
	}()
	defer func() { ln.Close(); <-done }()
	store := &MemorySessionStore{}
	_ = store.Save(context.Background(), []shardgroup.Session{{ShardID: 0, ShardCount: 1, SessionID: "planted", Sequence: 2,
		ResumeURL: "ws://" + ln.Addr().String(), SavedAt: time.Now()}})
	var logs syncBuffer
	cfg := testConfig(s)
	cfg.SessionStore = store
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	_, stop := startFleet(t, cfg)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := dialled.Load(); n != 0 {
		t.Fatalf("the planted resume URL was dialled %d times", n)
	}
	if st := s.Stats(); st.Identifies != 1 || st.Resumes != 0 {
		t.Fatalf("identifies %d, resumes %d; want the shard to identify", st.Identifies, st.Resumes)
	}
	if !strings.Contains(logs.String(), "1 of 1 stored sessions unusable: 1 foreign resume URL") {
		t.Fatalf("no summary warning in:\n%s", logs.String())
	}
}

func TestOneWarningPerLoad(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(16), discordtest.WithRecommendedShards(16),
		discordtest.WithMaxConcurrency(16), discordtest.WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	var stored []shardgroup.Session
	for i := range 16 {
		sess := shardgroup.Session{ShardID: i, ShardCount: 16, SessionID: "old", SavedAt: time.Now().Add(-time.Hour)}
		if i >= 12 {
			sess.ShardCount, sess.SavedAt = 32, time.Now()
		}
		stored = append(stored, sess)
	}
	store := &MemorySessionStore{}
	_ = store.Save(context.Background(), stored)
	var logs syncBuffer
	cfg := testConfig(s)
	cfg.SessionStore, cfg.Clusters = store, 2
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	_, stop := startFleet(t, cfg)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 || !strings.Contains(logs.String(), "16 of 16 stored sessions unusable: 12 stale, 4 foreign shard count") {
		t.Fatalf("%d warnings, want one summary:\n%s", n, logs.String())
	}
}

func TestFileSessionStoreRefusesFilesOthersCanWrite(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sessions.json")
	f := FileSessionStore{Path: p}
	if err := f.Save(context.Background(), []shardgroup.Session{{ShardID: 0, ShardCount: 1, SessionID: "s"}}); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o620, 0o602, 0o666} {
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		_, err := f.Load(context.Background())
		if err == nil || !strings.Contains(err.Error(), "writable by other users") || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("mode %#o: Load = %v, want a refusal saying to chmod 600", mode, err)
		}
	}
	if err := os.Chmod(p, 0o640); err != nil {
		t.Fatal(err)
	}
	if got, err := f.Load(context.Background()); err != nil || len(got) != 1 {
		t.Fatalf("mode 0640: %v, %v", got, err)
	}
}
