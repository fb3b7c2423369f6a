package natsfleet_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"testing"
	"testing/slogtest"
	"time"

	"github.com/gofleet/fleet/natsfleet"
)

// recorder is a slog.Handler keeping the records it is given.
type recorder struct {
	mu      sync.Mutex // guards records
	records []slog.Record
	added   chan struct{} // one token per record, never blocking
}

func newRecorder() *recorder { return &recorder{added: make(chan struct{}, 1000)} }

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *recorder) WithGroup(string) slog.Handler            { return r }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	r.records = append(r.records, rec.Clone())
	r.mu.Unlock()
	select {
	case r.added <- struct{}{}:
	default:
	}
	return nil
}

// wait returns the first record with message msg, waiting for it until
// ctx ends.
func (r *recorder) wait(t *testing.T, ctx context.Context, msg string) slog.Record {
	t.Helper()
	for {
		r.mu.Lock()
		for _, rec := range r.records {
			if rec.Message == msg {
				r.mu.Unlock()
				return rec
			}
		}
		r.mu.Unlock()
		select {
		case <-r.added:
		case <-ctx.Done():
			r.mu.Lock()
			for _, rec := range r.records {
				t.Logf("received %q %v", rec.Message, attrs(rec))
			}
			r.mu.Unlock()
			t.Fatalf("no record %q received: %v", msg, ctx.Err())
		}
	}
}

// waitN waits until n records have arrived, until ctx ends.
func (r *recorder) waitN(t *testing.T, ctx context.Context, n int) {
	t.Helper()
	for {
		r.mu.Lock()
		got := len(r.records)
		r.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-r.added:
		case <-ctx.Done():
			t.Fatalf("%d records received, want %d: %v", got, n, ctx.Err())
		}
	}
}

// attrs flattens a record's attributes to key (dotted for groups) →
// value.
func attrs(rec slog.Record) map[string]slog.Value {
	m := map[string]slog.Value{}
	var add func(prefix string, a slog.Attr)
	add = func(prefix string, a slog.Attr) {
		if a.Value.Kind() == slog.KindGroup {
			p := prefix
			if a.Key != "" {
				p += a.Key + "."
			}
			for _, g := range a.Value.Group() {
				add(p, g)
			}
			return
		}
		m[prefix+a.Key] = a.Value
	}
	rec.Attrs(func(a slog.Attr) bool { add("", a); return true })
	return m
}

type secret string

func (secret) LogValue() slog.Value { return slog.StringValue("REDACTED") }

// runLogHandler runs h until the test ends.
func runLogHandler(t *testing.T, h *natsfleet.LogHandler) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func TestLogsReachTheReceiverWithClusterAndPID(t *testing.T) {
	ctx := testCtx(t)
	prefix := newPrefix()
	rec := newRecorder()
	lr, err := natsfleet.ReceiveLogs(connect(t), prefix, slog.New(rec))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lr.Close)
	h, err := natsfleet.NewLogHandler(connect(t), natsfleet.LogConfig{Prefix: prefix, Cluster: 3})
	if err != nil {
		t.Fatal(err)
	}
	runLogHandler(t, h)

	log := slog.New(h).With("component", "cluster").WithGroup("shard")
	when := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	log.Warn("shard resumed", "id", 7, "latency", 42*time.Millisecond, "ok", true, "ratio", 0.5,
		"big", uint64(1<<63), "at", when, "err", errors.New("boom"), "token", secret("hunter2"),
		slog.Group("session", "seq", 99), "list", []int{1, 2})
	log.Debug("below the level")

	got := rec.wait(t, ctx, "shard resumed")
	if got.Level != slog.LevelWarn {
		t.Errorf("level %v, want WARN", got.Level)
	}
	a := attrs(got)
	want := map[string]any{
		"cluster": int64(3), "pid": int64(os.Getpid()), "component": "cluster",
		"shard.id": int64(7), "shard.latency": 42 * time.Millisecond, "shard.ok": true, "shard.ratio": 0.5,
		"shard.big": uint64(1 << 63), "shard.at": when, "shard.err": "boom", "shard.token": "REDACTED",
		"shard.session.seq": int64(99),
	}
	for k, v := range want {
		if !a[k].Equal(slog.AnyValue(v)) {
			t.Errorf("%s = %v, want %v", k, a[k], v)
		}
	}
	if l := a["shard.list"].Any(); l == nil {
		t.Error("shard.list missing")
	}
	// cluster and pid come first.
	var keys []string
	got.Attrs(func(at slog.Attr) bool { keys = append(keys, at.Key); return len(keys) < 2 })
	if len(keys) < 2 || keys[0] != "cluster" || keys[1] != "pid" {
		t.Errorf("first attributes %v, want [cluster pid]", keys)
	}
	// The debug record was not sent; a later record proves the order.
	log.Info("after")
	rec.wait(t, ctx, "after")
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, r := range rec.records {
		if r.Message == "below the level" {
			t.Error("a record below Level was sent")
		}
	}
}

func TestLogHandlerDropsWhenFullAndReportsIt(t *testing.T) {
	ctx := testCtx(t)
	prefix := newPrefix()
	rec := newRecorder()
	lr, err := natsfleet.ReceiveLogs(connect(t), prefix, slog.New(rec))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lr.Close)
	h, err := natsfleet.NewLogHandler(connect(t), natsfleet.LogConfig{Prefix: prefix, Cluster: 1, Buffer: 2})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(h)
	// Nothing sends yet: two records fill the buffer, three are dropped,
	// and Info returns at once each time.
	for range 5 {
		log.Info("queued")
	}
	if n := h.Dropped(); n != 3 {
		t.Fatalf("Dropped() = %d, want 3", n)
	}
	runLogHandler(t, h)
	// Once both queued records have arrived, the buffer has room again.
	rec.waitN(t, ctx, 2)
	log.Info("later")
	got := rec.wait(t, ctx, "log records dropped by a fleet process")
	if d := attrs(got)["dropped"]; d.Int64() != 3 {
		t.Errorf("dropped = %v, want 3", d)
	}
	rec.wait(t, ctx, "later")
}

func TestLogConfigErrors(t *testing.T) {
	nc := connect(t)
	if _, err := natsfleet.NewLogHandler(nc, natsfleet.LogConfig{Buffer: -1}); err == nil {
		t.Error("Buffer -1 accepted")
	}
	if _, err := natsfleet.NewLogHandler(nc, natsfleet.LogConfig{Prefix: "a.>"}); err == nil {
		t.Error("prefix a.> accepted")
	}
	if _, err := natsfleet.NewLogHandler(nil, natsfleet.LogConfig{}); err == nil {
		t.Error("nil connection accepted")
	}
}

// The handler and the receiver together pass slog's conformance suite:
// what a child logs reaches the parent's handler as it was logged.
func TestLogsConformToSlogtest(t *testing.T) {
	var rec *recorder
	slogtest.Run(t, func(t *testing.T) slog.Handler {
		prefix := newPrefix()
		rec = newRecorder()
		lr, err := natsfleet.ReceiveLogs(connect(t), prefix, slog.New(rec))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(lr.Close)
		h, err := natsfleet.NewLogHandler(connect(t), natsfleet.LogConfig{Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		runLogHandler(t, h)
		return h
	}, func(t *testing.T) map[string]any {
		rec.waitN(t, testCtx(t), 1)
		rec.mu.Lock()
		r := rec.records[0]
		rec.mu.Unlock()
		m := map[string]any{slog.LevelKey: r.Level, slog.MessageKey: r.Message}
		if !r.Time.IsZero() {
			m[slog.TimeKey] = r.Time
		}
		r.Attrs(func(a slog.Attr) bool {
			if a.Key != "cluster" && a.Key != "pid" {
				addAttr(m, a)
			}
			return true
		})
		return m
	})
}

// addAttr puts a into m as slogtest expects: groups as nested maps, an
// empty group's attributes inlined.
func addAttr(m map[string]any, a slog.Attr) {
	if a.Value.Kind() != slog.KindGroup {
		m[a.Key] = a.Value.Any()
		return
	}
	if a.Key == "" {
		for _, g := range a.Value.Group() {
			addAttr(m, g)
		}
		return
	}
	sub := map[string]any{}
	for _, g := range a.Value.Group() {
		addAttr(sub, g)
	}
	m[a.Key] = sub
}
