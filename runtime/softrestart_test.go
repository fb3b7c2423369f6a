package runtime

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	devents "github.com/disgoorg/disgo/events"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/shardgroup"
)

// ledger records every MESSAGE_CREATE user code sees by shard and
// sequence, across every instance of the bot.
type ledger struct {
	mu   sync.Mutex
	seen map[[2]int]int
	n    int
	ch   chan struct{}
}

func newLedger() *ledger { return &ledger{seen: map[[2]int]int{}, ch: make(chan struct{}, 1)} }

func (l *ledger) bot(int) Bot {
	return BotFunc(func(_ context.Context, g *shardgroup.Group) error {
		g.Client().AddEventListeners(bot.NewListenerFunc(func(e *devents.MessageCreate) {
			l.mu.Lock()
			l.seen[[2]int{e.ShardID(), e.SequenceNumber()}]++
			l.n++
			l.mu.Unlock()
			select {
			case l.ch <- struct{}{}:
			default:
			}
		}))
		return nil
	})
}

// waitN waits until n events were seen, then checks none was seen twice.
func (l *ledger) waitN(t *testing.T, n int64) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		l.mu.Lock()
		got := l.n
		l.mu.Unlock()
		if int64(got) >= n {
			break
		}
		select {
		case <-l.ch:
		case <-timeout:
			t.Fatalf("user code saw %d events, want %d: events were lost", got, n)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if int64(l.n) != n {
		t.Fatalf("user code saw %d events, want %d", l.n, n)
	}
	for k, c := range l.seen {
		if c != 1 {
			t.Fatalf("shard %d seq %d seen %d times", k[0], k[1], c)
		}
	}
}

// runReady runs a runtime in the background until its fleet is ready;
// its Done and Err tell when Run returns and what.
func runReady(t *testing.T, cfg Config) *Runtime {
	t.Helper()
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go rt.Run(context.Background())
	waitReady(t, rt)
	return rt
}

// startFleet runs a runtime and waits for it to be ready; it returns a
// func that shuts the runtime down and returns Run's error.
func startFleet(t *testing.T, cfg Config) (*Runtime, func() error) {
	t.Helper()
	rt, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop := runUntil(t, rt)
	waitReady(t, rt)
	return rt, stop
}

func loadServer() *discordtest.Server {
	return discordtest.NewServer(discordtest.WithGuilds(64), discordtest.WithRecommendedShards(8),
		discordtest.WithMaxConcurrency(8), discordtest.WithIdentifyWindow(10*time.Millisecond))
}

func TestSoftRestartUnderLoad(t *testing.T) {
	s := loadServer()
	defer s.Close()
	l := newLedger()
	cfg := testConfig(s)
	cfg.Bot, cfg.Clusters = l.bot, 4
	rt, stop := startFleet(t, cfg)
	defer stop()

	var paused []time.Duration
	var mu sync.Mutex
	rt.Subscribe(func(e Event) {
		if e, ok := e.(SoftRestartHandedOver); ok {
			mu.Lock()
			paused = append(paused, e.Pause)
			mu.Unlock()
		}
	})
	var total int64
	for _, step := range []struct {
		name string
		op   func(context.Context) error
	}{
		{"one cluster", func(ctx context.Context) error { return rt.SoftRestart(ctx, 1) }},
		{"all clusters", rt.SoftRestartAll},
	} {
		before := s.Stats()
		loaded := make(chan discordtest.LoadResult, 1)
		go func() {
			res, err := s.Load(context.Background(), discordtest.Load{Events: 1000, Rate: 2000})
			if err != nil {
				t.Error(err)
			}
			loaded <- res
		}()
		if err := step.op(context.Background()); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		res := <-loaded
		total += res.Dispatches
		l.waitN(t, total) // every event so far, each once
		after := s.Stats()
		if after.Identifies != before.Identifies {
			t.Fatalf("%s: %d IDENTIFYs during the soft restart", step.name, after.Identifies-before.Identifies)
		}
		if len(after.Violations) != 0 {
			t.Fatalf("%s: violations %v", step.name, after.Violations)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(paused) != 5 {
		t.Fatalf("%d hand-overs, want 5", len(paused))
	}
	t.Logf("pauses: %v", paused)
}

func TestSoftRestartFallsBackToIdentify(t *testing.T) {
	s := loadServer()
	defer s.Close()
	l := newLedger()
	cfg := testConfig(s)
	cfg.Bot, cfg.Clusters = l.bot, 4
	rt, stop := startFleet(t, cfg)
	defer stop()
	before := s.Stats()
	s.RefuseResumes(0, 1) // cluster 0 runs shards 0 and 1
	if err := rt.SoftRestart(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	after := s.Stats()
	if after.Identifies != before.Identifies+1 || after.ResumesRefused != before.ResumesRefused+1 {
		t.Fatalf("identifies %d -> %d, refused resumes %d -> %d: shard 0 should have identified once",
			before.Identifies, after.Identifies, before.ResumesRefused, after.ResumesRefused)
	}
	// Shard 0 serves again.
	g := s.GuildID(0)
	if discordtest.ShardFor(g, 8) != 0 {
		t.Fatal("guild 0 is not on shard 0")
	}
	base := int64(s.Stats().TotalEventsSent())
	if n, _ := s.Dispatch(g, "MESSAGE_CREATE", s.MessageCreate(g, "after", 1)); n != 1 {
		t.Fatalf("dispatched to %d sessions", n)
	}
	waitFor(t, func() bool { return int64(s.Stats().TotalEventsSent()) > base })
	l.waitN(t, 1)
}

func TestResumeAcrossProcessRestart(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(64), discordtest.WithRecommendedShards(16),
		discordtest.WithMaxConcurrency(16), discordtest.WithIdentifyWindow(10*time.Millisecond))
	defer s.Close()
	store := &MemorySessionStore{}
	l := newLedger()
	cfg := testConfig(s)
	cfg.Bot, cfg.Clusters, cfg.SessionStore = l.bot, 4, store
	_, stop := startFleet(t, cfg)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	saved, _ := store.Load(context.Background())
	if len(saved) != 16 {
		t.Fatalf("%d sessions saved, want 16", len(saved))
	}
	// Events while no process runs: Discord keeps them for the RESUME.
	for i := range 64 {
		g := s.GuildID(i)
		if n, _ := s.Dispatch(g, "MESSAGE_CREATE", s.MessageCreate(g, "between", i)); n != 1 {
			t.Fatalf("guild %d: no resumable session", i)
		}
	}
	identifies := s.Stats().Identifies
	_, stop2 := startFleet(t, cfg) // the "new binary"
	l.waitN(t, 64)
	if err := stop2(); err != nil {
		t.Fatal(err)
	}
	if got := s.Stats().Identifies; got != identifies {
		t.Fatalf("the second run identified %d times, want 0", got-identifies)
	}
	if s.Stats().Resumes < 16 {
		t.Fatalf("resumes %d, want 16", s.Stats().Resumes)
	}
}

func TestBadSessionStoresFallBackToIdentify(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) SessionStore {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return FileSessionStore{Path: p}
	}
	good, _ := (&sessionFile{}).marshalFor(t, 2)
	stale := &MemorySessionStore{}
	_ = stale.Save(context.Background(), []shardgroup.Session{{ShardID: 0, ShardCount: 2, SessionID: "x", Sequence: 1, SavedAt: time.Now().Add(-time.Hour)}})
	cases := []struct {
		name  string
		store SessionStore
		warn  string
	}{
		{"corrupt", write("corrupt.json", "{not json"), "session store unreadable"},
		{"truncated", write("truncated.json", good[:len(good)/2]), "session store unreadable"},
		{"foreign", write("foreign.json", `{"format":"someone-else/7","sessions":[]}`), "session store unreadable"},
		{"stale", stale, "1 of 1 stored sessions unusable: 1 stale"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := discordtest.NewServer(discordtest.WithGuilds(4), discordtest.WithRecommendedShards(2),
				discordtest.WithMaxConcurrency(2), discordtest.WithIdentifyWindow(time.Millisecond))
			defer s.Close()
			var logs syncBuffer
			cfg := testConfig(s)
			cfg.SessionStore = tc.store
			cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			_, stop := startFleet(t, cfg)
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if n := s.Stats().Identifies; n != 2 {
				t.Fatalf("identifies %d, want 2", n)
			}
			if !strings.Contains(logs.String(), tc.warn) {
				t.Fatalf("no warning %q in:\n%s", tc.warn, logs.String())
			}
		})
	}
}

// marshalFor builds a valid session file for n shards.
func (*sessionFile) marshalFor(t *testing.T, n int) (string, error) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, `{"format":%q,"sessions":[`, sessionFileFormat)
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"shard_id":%d,"shard_count":%d,"session_id":"abc%d","sequence":5,"resume_url":"ws://127.0.0.1:1/resume","saved_at":%q}`,
			i, n, i, time.Now().Format(time.RFC3339Nano))
	}
	b.WriteString("]}")
	return b.String(), nil
}

func TestFileSessionStore(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sessions.json")
	f := FileSessionStore{Path: p}
	if got, err := f.Load(context.Background()); err != nil || got != nil {
		t.Fatalf("missing file: %v %v", got, err)
	}
	want := []shardgroup.Session{{ShardID: 3, ShardCount: 4, SessionID: "s", Sequence: 9, ResumeURL: "ws://x", SavedAt: time.Now().UTC().Round(0)}}
	if err := f.Save(context.Background(), want); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v err %v, want 0600", st.Mode(), err)
	}
	got, err := f.Load(context.Background())
	if err != nil || len(got) != 1 || got[0] != want[0] {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
}
