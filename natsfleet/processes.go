package natsfleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// ChildEnv is the environment variable that marks a child process of a
// fleet in process mode. It carries what the child needs to join the
// parent (the NATS URL and credentials among them), so it is passed in
// the environment, which only the user's own processes can read, and
// never on the command line. A child removes it from its environment as
// it starts.
const ChildEnv = "GOFLEET_PROCESS_CHILD"

// ProcessConfig configures process mode. The zero value is ready to use.
type ProcessConfig struct {
	// Prefix is the first subject token of the fleet's NATS messages and
	// the name of its key-value buckets (default "fleet").
	Prefix string
	// DataDir keeps the embedded server's JetStream data (the
	// checkpointed sessions among them) across runs of the parent; empty:
	// a temporary directory removed when the fleet stops.
	DataDir string
	// GOMAXPROCS and GOMEMLIMIT (bytes) are set in every child's
	// environment; 0 leaves the Go runtime's defaults.
	GOMAXPROCS int
	GOMEMLIMIT int64
	// CheckpointInterval is how often a child saves its shards' sessions
	// to the parent, for a crash to resume from (0: the runtime's
	// default, 1 s).
	CheckpointInterval time.Duration
	// Env is added to every child's environment (NAME=value).
	Env []string
	// Executable and Args start a child (default: os.Executable() and
	// os.Args[1:], the program itself as it is on disk when the child
	// starts, so that a soft restart runs new code).
	Executable string
	Args       []string
	// Stdout and Stderr receive the children's output (default the
	// parent's).
	Stdout, Stderr io.Writer

	// MaxRSS (bytes), if set, is each child's memory limit, measured by
	// the parent every MemoryCheckInterval (default 250 ms): a child whose
	// RSS stays above it for MaxRSSFor (default 1 s) is killed and its
	// cluster restarts as after a crash, with a *MemoryLimitError in the
	// ClusterRestarted event. Linux only (read from /proc).
	MaxRSS              int64
	MaxRSSFor           time.Duration
	MemoryCheckInterval time.Duration
	// StatsInterval is how often a child reports its cluster's state to
	// the parent's Stats and Clusters (default 1 s).
	StatsInterval time.Duration
	// LogLevel is the lowest level of the children's records sent to the
	// parent's logger (default slog.LevelInfo), LogBuffer how many wait to
	// be sent at most (default 1024; past it they are dropped and
	// counted). A negative LogBuffer keeps each child's records on its
	// own Config.Logger instead.
	LogLevel  slog.Leveler
	LogBuffer int

	// ColdStart turns the warm start off: each child then identifies its
	// own shards once it has started. By default (the warm start), at Run
	// the parent opens the sessions of the shards without a stored session
	// itself, through the fleet's identify queue, while the children start
	// (exec, joining the parent, Setup), and each child RESUMEs its shards'
	// sessions as they open, so that the fleet is ready one identify
	// schedule after Run rather than after the children's start plus the
	// schedule. The price: the parent holds the shards' connections
	// during that schedule (up to ceil(shards / max_concurrency) identify
	// intervals for the last ones), each closed resumably at its READY;
	// the session then waits for its child, its events kept by Discord
	// and replayed to the RESUME. A child's listeners see the READY, then
	// a RESUMED. Set ColdStart when the parent must hold no gateway
	// connection, or the listeners must see no RESUMED at start.
	ColdStart bool
	// IdentifyLease bounds how long a child's identify turn stays taken
	// without word from the child (a lost message): the turn is given
	// back when the child says its READY came or it gave up, when its
	// process exits, or after IdentifyLease at the latest (default 10 s).
	// It must cover the time from a turn's grant to its READY.
	IdentifyLease time.Duration
}

// ProcessMode is a runtime.Processes on NATS: the parent embeds a NATS
// server (loopback, generated credentials) that carries the fleet's bus,
// its identify queue and its sessions, and serves the fleet's REST
// limiter as a proxy on loopback; each child joins them. Create it with
// [Processes]; one serves one runtime, once.
type ProcessMode struct {
	cfg       ProcessConfig
	tr        *lateTransport
	collector atomic.Pointer[ProcessCollector] // the running fleet's, for Collector

	mu   sync.Mutex // guards pool
	pool *pool      // the running parent's, between Start and its Close
}

// Processes returns the process mode for runtime.Config.Processes:
//
//	rt, err := runtime.New(runtime.Config{
//		Token:     token,
//		Bot:       newBot,
//		Processes: natsfleet.Processes(natsfleet.ProcessConfig{}),
//	})
//
// The same program runs as the parent and as the children, so it must
// build the same Config in both (a child reads its token and options as
// the parent does). Run in a child serves only its cluster; the user's
// events, Observer and Subscribe then see that cluster, and the parent's
// see the fleet.
func Processes(cfg ProcessConfig) *ProcessMode {
	return &ProcessMode{cfg: cfg, tr: &lateTransport{local: map[bus.Address]bus.Receiver{}}}
}

// IsChild reports whether this process is a child of a fleet in process
// mode (its ChildEnv is set).
func IsChild() bool { return os.Getenv(ChildEnv) != "" }

// Transport is the parent's bus transport: in memory until Start
// connects it to the fleet's NATS.
func (p *ProcessMode) Transport() bus.Transport { return p.tr }

func (p *ProcessMode) prefix() string {
	if p.cfg.Prefix == "" {
		return "fleet"
	}
	return p.cfg.Prefix
}

func (p *ProcessMode) check() error {
	switch {
	case p.cfg.GOMAXPROCS < 0:
		return fmt.Errorf("natsfleet: ProcessConfig.GOMAXPROCS (%d) < 0: use 0 for the Go default", p.cfg.GOMAXPROCS)
	case p.cfg.GOMEMLIMIT < 0:
		return fmt.Errorf("natsfleet: ProcessConfig.GOMEMLIMIT (%d) < 0: use 0 for no limit", p.cfg.GOMEMLIMIT)
	case p.cfg.CheckpointInterval < 0:
		return fmt.Errorf("natsfleet: ProcessConfig.CheckpointInterval (%v) < 0: use 0 for the default", p.cfg.CheckpointInterval)
	case p.cfg.MaxRSS < 0:
		return fmt.Errorf("natsfleet: ProcessConfig.MaxRSS (%d) < 0: use 0 for no limit", p.cfg.MaxRSS)
	case p.cfg.MaxRSSFor < 0 || p.cfg.MemoryCheckInterval < 0 || p.cfg.StatsInterval < 0 || p.cfg.IdentifyLease < 0:
		return errors.New("natsfleet: ProcessConfig: MaxRSSFor, MemoryCheckInterval, StatsInterval and IdentifyLease must be >= 0 (0 for the default)")
	}
	return nil
}

// childSpec is what the parent passes to a child in ChildEnv.
type childSpec struct {
	ID         string             `json:"id"`
	Cluster    int                `json:"cluster"`
	Shards     []int              `json:"shards"`
	Resume     runtime.ResumeMode `json:"resume"`
	Standby    bool               `json:"standby,omitempty"` // a reshard's new child: see standby
	NATS       ConnectInfo        `json:"nats"`
	Prefix     string             `json:"prefix"`
	Total      int                `json:"total"`
	MaxConc    int                `json:"max_concurrency"`
	Interval   time.Duration      `json:"identify_interval"`
	GatewayURL string             `json:"gateway_url"`
	Proxy      string             `json:"rest_proxy,omitempty"`
	Secret     string             `json:"rest_secret,omitempty"`
	Checkpoint time.Duration      `json:"checkpoint,omitempty"`
	// StatsInterval is how often the child reports its cluster.
	StatsInterval time.Duration `json:"stats_interval,omitempty"`
	// Warm: the parent opens sessions for the shards without one; the
	// child asks for them (the warm start).
	Warm bool `json:"warm,omitempty"`
}

// Subjects between the parent and a child: the child publishes its
// events on <prefix>.proc.<id>.out; the parent asks it on
// <prefix>.proc.<id>.ctl.
func outSubject(prefix, id string) string { return prefix + ".proc." + id + ".out" }
func ctlSubject(prefix, id string) string { return prefix + ".proc." + id + ".ctl" }

// wireEvent is a child's lifecycle event on its way to the parent.
type wireEvent struct {
	Kind    string        `json:"k"` // a runtime.EventKind, or "setup"
	Cluster int           `json:"cl"`
	Shard   int           `json:"s,omitempty"`
	Code    int           `json:"c,omitempty"`
	D       time.Duration `json:"d,omitempty"` // waited, took
	Value   string        `json:"v,omitempty"` // a panic's value, an error
}

// kindSetup is the child's word that it is set up.
const kindSetup = "setup"

// toWire encodes the events the parent needs; ok is false for the others.
func toWire(e runtime.Event) (w wireEvent, ok bool) {
	w.Kind = string(e.Kind())
	switch e := e.(type) {
	case runtime.ShardIdentify:
		w.Cluster, w.Shard, w.D = e.Cluster, e.Shard, e.Waited
	case runtime.ShardReady:
		w.Cluster, w.Shard = e.Cluster, e.Shard
	case runtime.ShardResumed:
		w.Cluster, w.Shard = e.Cluster, e.Shard
	case runtime.ShardDisconnected:
		w.Cluster, w.Shard = e.Cluster, e.Shard
	case runtime.ShardClosed:
		w.Cluster, w.Shard, w.Code = e.Cluster, e.Shard, e.Code
	case runtime.ShardZombie:
		w.Cluster, w.Shard = e.Cluster, e.Shard
	case runtime.ListenerPanic:
		w.Cluster, w.Shard, w.Value = e.Cluster, e.Shard, fmt.Sprint(e.Value)
	case runtime.ClusterReady:
		w.Cluster, w.D = e.Cluster, e.Took
	case runtime.Fatal:
		w.Value = e.Err.Error()
	default:
		return w, false
	}
	return w, true
}

// fromWire decodes an event for the parent's runtime.
func fromWire(w wireEvent) (runtime.Event, bool) {
	switch runtime.EventKind(w.Kind) {
	case runtime.EventShardIdentify:
		return runtime.ShardIdentify{Cluster: w.Cluster, Shard: w.Shard, Waited: w.D}, true
	case runtime.EventShardReady:
		return runtime.ShardReady{Cluster: w.Cluster, Shard: w.Shard}, true
	case runtime.EventShardResumed:
		return runtime.ShardResumed{Cluster: w.Cluster, Shard: w.Shard}, true
	case runtime.EventShardDisconnected:
		return runtime.ShardDisconnected{Cluster: w.Cluster, Shard: w.Shard}, true
	case runtime.EventShardClosed:
		return runtime.ShardClosed{Cluster: w.Cluster, Shard: w.Shard, Code: w.Code}, true
	case runtime.EventShardZombie:
		return runtime.ShardZombie{Cluster: w.Cluster, Shard: w.Shard}, true
	case runtime.EventListenerPanic:
		return runtime.ListenerPanic{Cluster: w.Cluster, Shard: w.Shard, Value: w.Value}, true
	case runtime.EventClusterReady:
		return runtime.ClusterReady{Cluster: w.Cluster, Took: w.D}, true
	case runtime.EventFatal:
		return runtime.Fatal{Err: fmt.Errorf("cluster %d: %s", w.Cluster, w.Value)}, true
	}
	return nil, false
}

// control is a request from the parent to a child.
type control struct {
	Op       string                     `json:"op"` // "handover", "resume", "stop", "deliver", "sync"
	Keep     bool                       `json:"keep,omitempty"`
	Wait     time.Duration              `json:"wait,omitempty"` // how long the parent waits for a "sync"
	Last     bool                       `json:"last,omitempty"` // a "sync" after which the child delivers nothing
	Sessions map[int]shardgroup.Session `json:"sessions,omitempty"`
}

// controlReply is a child's answer.
type controlReply struct {
	Sessions map[int]shardgroup.Session `json:"sessions,omitempty"`
	Err      string                     `json:"err,omitempty"`
}

// lateTransport is the parent's bus transport: it keeps the addresses
// bound before the fleet's NATS is up in memory, as the bus's default
// transport does, and moves them to NATS when connect is called.
type lateTransport struct {
	nt    atomic.Pointer[Transport]
	mu    sync.Mutex // guards local, and connect against Bind
	local map[bus.Address]bus.Receiver
}

func (t *lateTransport) Bind(addr bus.Address, r bus.Receiver) error {
	t.mu.Lock()
	if nt := t.nt.Load(); nt != nil {
		t.mu.Unlock()
		return nt.Bind(addr, r)
	}
	defer t.mu.Unlock()
	if _, ok := t.local[addr]; ok {
		return fmt.Errorf("%w: %s", bus.ErrAddressInUse, addr)
	}
	t.local[addr] = r
	return nil
}

func (t *lateTransport) Unbind(addr bus.Address, r bus.Receiver) {
	t.mu.Lock()
	if nt := t.nt.Load(); nt != nil {
		t.mu.Unlock()
		nt.Unbind(addr, r)
		return
	}
	defer t.mu.Unlock()
	if t.local[addr] == r {
		delete(t.local, addr)
	}
}

func (t *lateTransport) Deliver(ctx context.Context, m bus.Message) error {
	if nt := t.nt.Load(); nt != nil {
		return nt.Deliver(ctx, m)
	}
	t.mu.Lock()
	r, ok := t.local[m.To]
	t.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s", bus.ErrUnknownAddress, m.To)
	}
	return r.Receive(ctx, m)
}

func (t *lateTransport) Members(group bus.Address) []bus.Address {
	if nt := t.nt.Load(); nt != nil {
		return nt.Members(group)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []bus.Address
	for a := range t.local {
		if group.Contains(a) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, compareAddress)
	return out
}

// connect moves the addresses bound so far to nt and sends everything
// through it from now on.
func (t *lateTransport) connect(nt *Transport) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for a, r := range t.local {
		if err := nt.Bind(a, r); err != nil {
			return err
		}
	}
	t.local = map[bus.Address]bus.Receiver{}
	t.nt.Store(nt)
	return nil
}

var (
	_ runtime.Processes = (*ProcessMode)(nil)
	_ bus.Transport     = (*lateTransport)(nil)
)
