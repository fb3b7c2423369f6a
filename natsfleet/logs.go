package natsfleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// LogConfig configures a [LogHandler]. The zero value means the defaults.
type LogConfig struct {
	// Prefix is the fleet's subject prefix (default "fleet"): records
	// go out on <prefix>.log.
	Prefix string
	// Cluster is the cluster the process serves; the receiving side adds
	// it to every record as "cluster".
	Cluster int
	// Level is the lowest level sent (default slog.LevelInfo).
	Level slog.Leveler
	// Buffer is how many records wait to be sent at most (default 1024);
	// past it, records are dropped and counted.
	Buffer int
}

// LogHandler is a slog.Handler that sends each record over NATS to the
// process running a [LogReceiver] (in process mode, the parent), which
// logs it on its own logger with the sender's cluster and pid. Handle
// never waits: it encodes the record and queues it for [LogHandler.Run],
// dropping it (and counting it in [LogHandler.Dropped]) when Buffer
// records already wait, so a slow or lost connection never holds up a
// shard. The next record sent carries the number dropped, which the
// receiver reports. Create it with [NewLogHandler] and run Run.
type LogHandler struct {
	sink  *logSink
	level slog.Leveler
	goas  []groupOrAttrs // WithGroup and WithAttrs, in order
}

// logSink is what the handlers derived by WithAttrs and WithGroup share.
type logSink struct {
	nc       *nats.Conn
	subject  string
	cluster  int
	pid      int
	queue    chan []byte
	dropped  atomic.Int64 // since NewLogHandler
	reported atomic.Int64 // dropped as of the last record sent
}

type groupOrAttrs struct {
	group string
	attrs []slog.Attr
}

// NewLogHandler returns a LogHandler sending on nc.
func NewLogHandler(nc *nats.Conn, cfg LogConfig) (*LogHandler, error) {
	if nc == nil {
		return nil, errors.New("natsfleet: NewLogHandler: nil connection")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "fleet"
	}
	if err := checkPrefix(cfg.Prefix, "LogConfig.Prefix"); err != nil {
		return nil, err
	}
	if cfg.Buffer < 0 {
		return nil, fmt.Errorf("natsfleet: LogConfig.Buffer (%d) < 0: use 0 for the default (1024)", cfg.Buffer)
	}
	if cfg.Buffer == 0 {
		cfg.Buffer = 1024
	}
	if cfg.Level == nil {
		cfg.Level = slog.LevelInfo
	}
	return &LogHandler{
		sink: &logSink{
			nc: nc, subject: cfg.Prefix + ".log", cluster: cfg.Cluster, pid: os.Getpid(),
			queue: make(chan []byte, cfg.Buffer),
		},
		level: cfg.Level,
	}, nil
}

func checkPrefix(p, field string) error {
	if strings.ContainsAny(p, " \t*>") || strings.HasPrefix(p, ".") || strings.HasSuffix(p, ".") {
		return fmt.Errorf("natsfleet: %s %q is not a subject prefix: use tokens of letters, digits, '-' and '_' separated by dots", field, p)
	}
	return nil
}

// Dropped returns how many records were dropped because Buffer records
// were waiting.
func (h *LogHandler) Dropped() int64 { return h.sink.dropped.Load() }

// Run sends the queued records until ctx ends, then sends those still
// queued and flushes the connection, waiting at most a second for it.
// It returns nil once done; run it once, on a goroutine the caller owns.
func (h *LogHandler) Run(ctx context.Context) error {
	s := h.sink
	for {
		select {
		case b := <-s.queue:
			s.publish(b)
		case <-ctx.Done():
			for {
				select {
				case b := <-s.queue:
					s.publish(b)
					continue
				default:
				}
				break
			}
			_ = s.nc.FlushTimeout(time.Second)
			return nil
		}
	}
}

func (s *logSink) publish(b []byte) {
	// A failed publish (connection closed, buffer of a reconnecting
	// connection full) is a dropped record.
	if err := s.nc.Publish(s.subject, b); err != nil {
		s.dropped.Add(1)
	}
}

// Enabled reports whether level is at least the configured Level.
func (h *LogHandler) Enabled(_ context.Context, level slog.Level) bool {
	return level >= h.level.Level()
}

// WithAttrs returns a handler that adds attrs to every record.
func (h *LogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	return h.with(groupOrAttrs{attrs: attrs})
}

// WithGroup returns a handler that puts the attributes that follow in
// the group name.
func (h *LogHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return h.with(groupOrAttrs{group: name})
}

func (h *LogHandler) with(g groupOrAttrs) *LogHandler {
	h2 := *h
	h2.goas = append(h.goas[:len(h.goas):len(h.goas)], g)
	return &h2
}

// Handle encodes r and queues it; it never blocks.
func (h *LogHandler) Handle(_ context.Context, r slog.Record) error {
	attrs := make([]wireAttr, 0, r.NumAttrs())
	r.Attrs(func(a slog.Attr) bool {
		if w, ok := encodeAttr(a); ok {
			attrs = append(attrs, w)
		}
		return true
	})
	for i := len(h.goas) - 1; i >= 0; i-- {
		g := h.goas[i]
		if g.group != "" {
			if len(attrs) > 0 {
				attrs = []wireAttr{{Key: g.group, Group: attrs}}
			}
			continue
		}
		pre := make([]wireAttr, 0, len(g.attrs)+len(attrs))
		for _, a := range g.attrs {
			if w, ok := encodeAttr(a); ok {
				pre = append(pre, w)
			}
		}
		attrs = append(pre, attrs...)
	}
	s := h.sink
	rec := wireRecord{
		Time: r.Time, Level: int(r.Level), Msg: r.Message, Attrs: attrs,
		Cluster: s.cluster, PID: s.pid,
	}
	// Claim the drops not yet reported; give them back if this record
	// is dropped too.
	d := s.dropped.Load()
	if prev := s.reported.Swap(d); d > prev {
		rec.Dropped = d - prev
	}
	b, err := json.Marshal(rec)
	if err != nil {
		s.reported.Add(-rec.Dropped)
		return fmt.Errorf("natsfleet: encode log record: %w", err)
	}
	select {
	case s.queue <- b:
	default:
		s.reported.Add(-rec.Dropped)
		s.dropped.Add(1)
	}
	return nil
}

var _ slog.Handler = (*LogHandler)(nil)

// wireRecord is a log record on the wire.
type wireRecord struct {
	Time    time.Time  `json:"t"`
	Level   int        `json:"l"`
	Msg     string     `json:"m"`
	Attrs   []wireAttr `json:"a,omitempty"`
	Cluster int        `json:"c"`
	PID     int        `json:"p"`
	Dropped int64      `json:"d,omitempty"` // records dropped before this one
}

// wireAttr is an attribute on the wire: a group (Group set) or a value of
// Kind: s string, i int64, u uint64, f float64, b bool, d duration (ns),
// t time, j JSON (any other value that encodes), or v (its text).
type wireAttr struct {
	Key   string          `json:"k"`
	Kind  string          `json:"t,omitempty"`
	Value json.RawMessage `json:"v,omitempty"`
	Group []wireAttr      `json:"g,omitempty"`
}

func encodeAttr(a slog.Attr) (wireAttr, bool) {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return wireAttr{}, false
	}
	w := wireAttr{Key: a.Key}
	var v any
	switch a.Value.Kind() {
	case slog.KindGroup:
		for _, g := range a.Value.Group() {
			if e, ok := encodeAttr(g); ok {
				w.Group = append(w.Group, e)
			}
		}
		if len(w.Group) == 0 {
			return wireAttr{}, false
		}
		return w, true // with an empty key, inlined by the receiving handler
	case slog.KindString:
		w.Kind, v = "s", a.Value.String()
	case slog.KindInt64:
		w.Kind, v = "i", a.Value.Int64()
	case slog.KindUint64:
		w.Kind, v = "u", a.Value.Uint64()
	case slog.KindFloat64:
		w.Kind, v = "f", a.Value.Float64()
	case slog.KindBool:
		w.Kind, v = "b", a.Value.Bool()
	case slog.KindDuration:
		w.Kind, v = "d", int64(a.Value.Duration())
	case slog.KindTime:
		w.Kind, v = "t", a.Value.Time()
	default:
		x := a.Value.Any()
		switch x := x.(type) {
		case error:
			w.Kind, v = "v", x.Error()
		case fmt.Stringer:
			w.Kind, v = "v", x.String()
		default:
			if b, err := json.Marshal(x); err == nil {
				w.Kind, w.Value = "j", b
				return w, true
			}
			w.Kind, v = "v", fmt.Sprintf("%+v", x)
		}
	}
	b, err := json.Marshal(v)
	if err != nil {
		w.Kind, b = "v", mustJSON(fmt.Sprintf("%+v", v))
	}
	w.Value = b
	return w, true
}

func mustJSON(s string) []byte {
	b, _ := json.Marshal(s)
	return b
}

func decodeAttr(w wireAttr) slog.Attr {
	if w.Kind == "" {
		as := make([]any, 0, len(w.Group))
		for _, g := range w.Group {
			as = append(as, decodeAttr(g))
		}
		return slog.Group(w.Key, as...)
	}
	switch w.Kind {
	case "s", "v":
		var s string
		if json.Unmarshal(w.Value, &s) == nil {
			return slog.String(w.Key, s)
		}
	case "i":
		var n int64
		if json.Unmarshal(w.Value, &n) == nil {
			return slog.Int64(w.Key, n)
		}
	case "u":
		var n uint64
		if json.Unmarshal(w.Value, &n) == nil {
			return slog.Uint64(w.Key, n)
		}
	case "f":
		var f float64
		if json.Unmarshal(w.Value, &f) == nil {
			return slog.Float64(w.Key, f)
		}
	case "b":
		var b bool
		if json.Unmarshal(w.Value, &b) == nil {
			return slog.Bool(w.Key, b)
		}
	case "d":
		var n int64
		if json.Unmarshal(w.Value, &n) == nil {
			return slog.Duration(w.Key, time.Duration(n))
		}
	case "t":
		var t time.Time
		if json.Unmarshal(w.Value, &t) == nil {
			return slog.Time(w.Key, t)
		}
	case "j":
		var x any
		if json.Unmarshal(w.Value, &x) == nil {
			return slog.Any(w.Key, x)
		}
	}
	return slog.String(w.Key, string(w.Value))
}

// LogReceiver logs, on a logger of the receiving process, the records that
// the fleet's [LogHandler]s send, each with "cluster" and "pid"
// attributes first. Records the senders dropped are reported as a
// warning with their count, and so are records NATS dropped because this
// process fell behind ([LogReceiver.Dropped]). Create it with
// [ReceiveLogs]; Close stops it.
type LogReceiver struct {
	log  *slog.Logger
	sub  *nats.Subscription
	done chan struct{} // closed when the subscription's goroutine has exited
}

// ReceiveLogs starts logging on log the records sent under prefix
// (default "fleet"). Records arrive on the connection's goroutine;
// NATS's pending limits on the subscription bound what waits.
func ReceiveLogs(nc *nats.Conn, prefix string, log *slog.Logger) (*LogReceiver, error) {
	if nc == nil || log == nil {
		return nil, errors.New("natsfleet: ReceiveLogs: nil connection or logger")
	}
	if prefix == "" {
		prefix = "fleet"
	}
	if err := checkPrefix(prefix, "ReceiveLogs prefix"); err != nil {
		return nil, err
	}
	lr := &LogReceiver{log: log, done: make(chan struct{})}
	sub, err := nc.Subscribe(prefix+".log", lr.receive)
	if err != nil {
		return nil, fmt.Errorf("natsfleet: subscribe to %s.log: %w", prefix, err)
	}
	sub.SetClosedHandler(func(string) { close(lr.done) })
	if err := nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("natsfleet: subscribe to %s.log: %w", prefix, err)
	}
	lr.sub = sub
	return lr, nil
}

func (lr *LogReceiver) receive(m *nats.Msg) {
	var w wireRecord
	if err := json.Unmarshal(m.Data, &w); err != nil {
		lr.log.Warn("undecodable log record from a fleet process", "err", err)
		return
	}
	ctx := context.Background()
	if w.Dropped > 0 {
		lr.log.Warn("log records dropped by a fleet process", "cluster", w.Cluster, "pid", w.PID, "dropped", w.Dropped)
	}
	level := slog.Level(w.Level)
	h := lr.log.Handler()
	if !h.Enabled(ctx, level) {
		return
	}
	r := slog.NewRecord(w.Time, level, w.Msg, 0)
	r.AddAttrs(slog.Int("cluster", w.Cluster), slog.Int("pid", w.PID))
	for _, a := range w.Attrs {
		r.AddAttrs(decodeAttr(a))
	}
	_ = h.Handle(ctx, r)
}

// Dropped returns how many records NATS dropped because this process
// did not take them fast enough.
func (lr *LogReceiver) Dropped() int64 {
	n, err := lr.sub.Dropped()
	if err != nil {
		return 0
	}
	return int64(n)
}

// Close stops receiving and waits (at most 5 s) for a record being
// logged.
func (lr *LogReceiver) Close() {
	_ = lr.sub.Unsubscribe()
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-lr.done:
	case <-t.C:
	}
}
