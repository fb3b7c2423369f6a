package natsfleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gofleet/fleet/restproxy"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// Start starts what the children join: the embedded NATS server, on
// which it connects the parent's bus, and the REST proxy of the fleet's
// limiter on loopback. It implements runtime.Processes.
func (p *ProcessMode) Start(ctx context.Context, f runtime.ProcessFleet) (runtime.ProcessPool, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	if p.tr.nt.Load() != nil {
		return nil, errors.New("natsfleet: this ProcessMode has run a fleet already: give each runtime.Config its own natsfleet.Processes(...)")
	}
	log := f.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pl := &pool{mode: p, f: f, log: log.With("component", "processes"), children: map[*childProc]struct{}{},
		exe: p.cfg.Executable, args: p.cfg.Args}
	if pl.exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("natsfleet: the program's executable, to start the children: %w: set ProcessConfig.Executable", err)
		}
		pl.exe = exe
	}
	if pl.args == nil {
		pl.args = os.Args[1:]
	}
	ok := false
	defer func() {
		if !ok {
			if pl.warm != nil {
				wctx, cancel := context.WithTimeout(context.Background(), f.ShutdownTimeout)
				_ = pl.warm.close(wctx)
				if pl.sessions != nil {
					pl.exportSessions(wctx) // what the warm start opened
				}
				cancel()
			}
			pl.closeConns()
		}
	}()
	// The fleet's identify queue and the warm start need no NATS: the
	// warm start's first IDENTIFYs go out while the server starts.
	stored := pl.loadSessions(ctx)
	pl.stored = stored
	var err error
	if pl.idq, err = newIdentifyServer(f.MaxConcurrency, f.IdentifyInterval, p.cfg.IdentifyLease, pl.log); err != nil {
		return nil, err
	}
	if !p.cfg.ColdStart {
		if pl.warm, err = pl.startWarm(stored); err != nil {
			log.Warn("warm start failed: the children identify their shards", "err", err.Error())
		}
	}
	if pl.srv, err = StartServer(ServerConfig{DataDir: p.cfg.DataDir}); err != nil {
		return nil, err
	}
	if pl.nc, err = pl.srv.ConnectInProcess(ctx, Logger(log), Name("fleet-parent")); err != nil {
		return nil, err
	}
	if pl.tr, err = NewTransport(pl.nc, TransportConfig{Prefix: p.prefix(), Logger: log}); err != nil {
		return nil, err
	}
	if err := p.tr.connect(pl.tr); err != nil {
		return nil, fmt.Errorf("natsfleet: move the parent's bus to NATS: %w", err)
	}
	if err := pl.idq.listen(pl.nc, p.prefix()); err != nil {
		return nil, err
	}
	if pl.sessions, err = NewKVSessionStore(ctx, pl.nc, p.prefix(), "parent"); err != nil {
		return nil, err
	}
	pl.importSessions(ctx, stored)
	if pl.warm != nil {
		if err := pl.warm.listen(pl.nc); err != nil {
			return nil, err
		}
	}
	if f.RESTLimiter != nil {
		if err := pl.serveProxy(); err != nil {
			return nil, err
		}
	}
	if err := pl.startObserving(); err != nil {
		return nil, err
	}
	ok = true
	p.mu.Lock()
	p.pool = pl
	p.mu.Unlock()
	return pl, nil
}

// Sessions returns the fleet's stored sessions, with the child that wrote
// each and when: those the children checkpoint while they run and save
// when they stop. It works in the parent while Run runs.
func (p *ProcessMode) Sessions(ctx context.Context) ([]SessionRecord, error) {
	p.mu.Lock()
	pl := p.pool
	p.mu.Unlock()
	if pl == nil {
		return nil, errors.New("natsfleet: Sessions: the fleet is not running in this process")
	}
	return pl.sessions.Records(ctx)
}

// pool starts and tracks the children of one Run.
type pool struct {
	mode      *ProcessMode
	f         runtime.ProcessFleet
	log       *slog.Logger
	exe       string
	args      []string
	srv       *Server
	nc        *nats.Conn
	tr        *Transport
	hs        *http.Server
	proxy     *restproxy.Server
	sessions  *KVSessionStore // the fleet's, which the children share
	proxyURL  string
	secret    string
	seq       atomic.Int64
	wg        sync.WaitGroup // the proxy's HTTP server and each child's waiter
	mu        sync.Mutex     // guards children and closed
	children  map[*childProc]struct{}
	closed    bool
	closeOnce sync.Once
	idq       *identifyServer   // the fleet's identify queue
	warm      *warmStart        // the sessions the parent opens for the children; nil: none
	logs      *LogReceiver      // the children's log records, onto the fleet's logger
	collector *ProcessCollector // the children's metrics, while the fleet runs

	stored []shardgroup.Session // loaded from Config.SessionStore at Start
}

// serveProxy serves the fleet's REST limiter on loopback, behind a
// generated secret, for the children's REST clients.
func (pl *pool) serveProxy() error {
	pl.secret = randomHex(16)
	up := pl.f.RESTURL
	if i := strings.LastIndex(up, "/api/v"); i >= 0 {
		up = up[:i]
	}
	proxy, err := restproxy.NewServer(pl.f.RESTLimiter, restproxy.ServerConfig{Upstream: up, Token: string(pl.f.Token),
		Secret: pl.secret, Logger: pl.log})
	if err != nil {
		return fmt.Errorf("natsfleet: REST proxy for the children: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("natsfleet: REST proxy for the children: %w", err)
	}
	pl.proxy, pl.proxyURL = proxy, "http://"+ln.Addr().String()
	pl.hs = &http.Server{Handler: proxy, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	pl.wg.Add(1)
	go func() {
		defer pl.wg.Done()
		_ = pl.hs.Serve(ln)
	}()
	return nil
}

// Spawn starts a child and waits until it is set up.
func (pl *pool) Spawn(ctx context.Context, spec runtime.ChildSpec) (runtime.ChildProcess, error) {
	prefix := pl.mode.prefix()
	id := fmt.Sprintf("c%d-%d", spec.Cluster, pl.seq.Add(1))
	ch := &childProc{pool: pl, id: id, cluster: spec.Cluster, report: spec.Report,
		setup: make(chan struct{}), exited: make(chan struct{})}
	sub, err := pl.nc.Subscribe(outSubject(prefix, id), ch.onOut)
	if err != nil {
		return nil, fmt.Errorf("natsfleet: listen to the child of cluster %d: %w", spec.Cluster, err)
	}
	raw, err := json.Marshal(childSpec{ID: id, Cluster: spec.Cluster, Shards: spec.Shards, Resume: spec.Resume,
		Standby: spec.Standby, NATS: pl.srv.ConnectInfo(), Prefix: prefix, Total: pl.shardCount(spec), MaxConc: pl.f.MaxConcurrency,
		Interval: pl.f.IdentifyInterval, GatewayURL: pl.f.GatewayURL, Proxy: pl.proxyURL, Secret: pl.secret,
		Checkpoint: pl.mode.cfg.CheckpointInterval, StatsInterval: pl.mode.cfg.StatsInterval,
		Warm: pl.warm != nil && spec.Resume != runtime.ResumeNone && pl.shardCount(spec) == pl.f.Shards})
	if err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	cmd := exec.Command(pl.exe, pl.args...)
	cmd.Env = pl.environ(string(raw))
	cmd.Stdout, cmd.Stderr = pl.mode.cfg.Stdout, pl.mode.cfg.Stderr
	if cmd.Stdout == nil {
		cmd.Stdout = os.Stdout
	}
	if cmd.Stderr == nil {
		cmd.Stderr = os.Stderr
	}
	setProcessGroup(cmd)
	stats, err := pl.nc.Subscribe(statsSubject(prefix, id), ch.view.onReport)
	if err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("natsfleet: listen to the child of cluster %d: %w", spec.Cluster, err)
	}
	unsubscribe := func() {
		_ = sub.Unsubscribe()
		_ = stats.Unsubscribe()
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		unsubscribe()
		return nil, err
	}
	ch.cmd, ch.stdin = cmd, stdin
	pl.mu.Lock()
	if pl.closed {
		pl.mu.Unlock()
		unsubscribe()
		return nil, errors.New("natsfleet: the fleet is stopping")
	}
	if err := cmd.Start(); err != nil {
		pl.mu.Unlock()
		unsubscribe()
		return nil, fmt.Errorf("natsfleet: start the child of cluster %d (%s): %w", spec.Cluster, pl.exe, err)
	}
	pl.children[ch] = struct{}{}
	pl.wg.Add(1)
	pl.mu.Unlock()
	go func() {
		defer pl.wg.Done()
		err := cmd.Wait()
		if err == nil {
			err = errors.New("exited with status 0")
		}
		ch.err = ch.exitError(err)
		// What it held of the identify queue is free again.
		pl.idq.gone(id)
		unsubscribe()
		pl.mu.Lock()
		delete(pl.children, ch)
		pl.mu.Unlock()
		close(ch.exited)
	}()
	if pl.mode.cfg.MaxRSS > 0 {
		pl.wg.Go(func() { pl.watchMemory(ch) })
	}
	pl.log.Info("child process started", "cluster", spec.Cluster, "pid", cmd.Process.Pid)
	select {
	case <-ch.setup:
		return ch, nil
	case <-ch.exited:
		return nil, fmt.Errorf("child process %d exited before it was set up: %w", cmd.Process.Pid, ch.err)
	case <-ctx.Done():
		ch.kill()
		<-ch.exited
		return nil, fmt.Errorf("child process %d not set up: %w", cmd.Process.Pid, context.Cause(ctx))
	}
}

// environ is a child's environment: the parent's, without a ChildEnv of
// its own, with the configured limits and variables, and its spec.
func (pl *pool) environ(spec string) []string {
	env := make([]string, 0, len(os.Environ())+len(pl.mode.cfg.Env)+3)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, ChildEnv+"=") {
			env = append(env, kv)
		}
	}
	if n := pl.mode.cfg.GOMAXPROCS; n > 0 {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(n))
	}
	if n := pl.mode.cfg.GOMEMLIMIT; n > 0 {
		env = append(env, "GOMEMLIMIT="+strconv.FormatInt(n, 10))
	}
	env = append(env, pl.mode.cfg.Env...)
	return append(env, ChildEnv+"="+spec)
}

// Close kills the children left, waits for them, and stops the proxy,
// the connection and the server.
func (pl *pool) Close(ctx context.Context) error {
	pl.mode.mu.Lock()
	if pl.mode.pool == pl {
		pl.mode.pool = nil
	}
	pl.mode.mu.Unlock()
	pl.mu.Lock()
	pl.closed = true
	left := make([]*childProc, 0, len(pl.children))
	for ch := range pl.children {
		left = append(left, ch)
	}
	pl.mu.Unlock()
	for _, ch := range left {
		pl.log.Warn("child process still running at the fleet's stop: killed", "cluster", ch.cluster, "pid", ch.Pid())
		ch.kill()
	}
	var errs []error
	if pl.warm != nil {
		if err := pl.warm.close(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if pl.hs != nil {
		if err := pl.hs.Shutdown(ctx); err != nil {
			_ = pl.hs.Close()
		}
	}
	done := make(chan struct{})
	go func() {
		pl.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("natsfleet: child processes not reaped: %w", ctx.Err()))
	}
	pl.exportSessions(ctx)
	pl.closeConns()
	return errors.Join(errs...)
}

// loadSessions reads the sessions of Config.SessionStore, if set.
func (pl *pool) loadSessions(ctx context.Context) []shardgroup.Session {
	if pl.f.SessionStore == nil {
		return nil
	}
	sessions, err := pl.f.SessionStore.Load(ctx)
	if err != nil {
		pl.log.Warn("stored sessions not passed to the children: their shards identify", "err", err.Error())
		return nil
	}
	return sessions
}

// importSessions copies the sessions loaded from Config.SessionStore to
// the fleet's store, for the children to resume.
func (pl *pool) importSessions(ctx context.Context, sessions []shardgroup.Session) {
	if len(sessions) == 0 {
		return
	}
	if err := pl.sessions.Save(ctx, sessions); err != nil {
		pl.log.Warn("stored sessions not passed to the children: their shards identify", "err", err.Error())
	}
}

// saveStored saves sessions to Config.SessionStore, if set, with those
// loaded from it that they do not replace: for a fleet that stops before
// its own store opened.
func (pl *pool) saveStored(ctx context.Context, sessions []shardgroup.Session) {
	if pl.f.SessionStore == nil {
		return
	}
	byShard := map[int]shardgroup.Session{}
	for _, s := range pl.stored {
		byShard[s.ShardID] = s
	}
	for _, s := range sessions {
		byShard[s.ShardID] = s
	}
	all := make([]shardgroup.Session, 0, len(byShard))
	for _, s := range byShard {
		all = append(all, s)
	}
	slices.SortFunc(all, func(a, b shardgroup.Session) int { return a.ShardID - b.ShardID })
	if err := pl.f.SessionStore.Save(ctx, all); err != nil {
		pl.log.Error("saving sessions failed: the next start identifies", "err", err.Error())
		return
	}
	pl.log.Info("sessions saved", "sessions", len(all))
}

// exportSessions saves the fleet's sessions, as the children left them,
// to Config.SessionStore, if set.
func (pl *pool) exportSessions(ctx context.Context) {
	if pl.f.SessionStore == nil {
		return
	}
	sessions, err := pl.sessions.Load(ctx)
	if err == nil {
		err = pl.f.SessionStore.Save(ctx, sessions)
	}
	if err != nil {
		pl.log.Error("saving sessions failed: the next start identifies", "err", err.Error())
		return
	}
	pl.log.Info("sessions saved", "sessions", len(sessions))
}

// closeConns closes what Start opened.
func (pl *pool) closeConns() {
	pl.closeOnce.Do(func() {
		if pl.idq != nil {
			pl.idq.close()
		}
		pl.stopObserving()
		if pl.proxy != nil {
			pl.proxy.Close()
		}
		if pl.tr != nil {
			pl.tr.Close()
		}
		if pl.nc != nil {
			pl.nc.Close()
		}
		if pl.srv != nil {
			pl.srv.Close()
		}
	})
}

// childProc is the parent's handle on one child process.
type childProc struct {
	pool    *pool
	id      string
	cluster int
	report  func(runtime.Event)
	cmd     *exec.Cmd
	stdin   interface{ Close() error }
	setup   chan struct{}
	once    sync.Once
	exited  chan struct{}
	err     error // why it exited; set before exited closes

	view      childView                        // its last report
	overLimit atomic.Pointer[MemoryLimitError] // set when killed over MaxRSS
}

func (ch *childProc) Pid() int                { return ch.cmd.Process.Pid }
func (ch *childProc) Exited() <-chan struct{} { return ch.exited }

// Err says how the process exited, once Exited is closed.
func (ch *childProc) Err() error {
	select {
	case <-ch.exited:
		return ch.err
	default:
		return nil
	}
}

// onOut receives the child's events.
func (ch *childProc) onOut(m *nats.Msg) {
	var w wireEvent
	if err := json.Unmarshal(m.Data, &w); err != nil {
		ch.pool.log.Warn("child process sent an unreadable event", "cluster", ch.cluster, "err", err.Error())
		return
	}
	if w.Kind == kindSetup {
		ch.once.Do(func() { close(ch.setup) })
		return
	}
	if e, ok := fromWire(w); ok && ch.report != nil {
		ch.report(e)
	}
}

// request asks the child something and waits for its answer or ctx.
func (ch *childProc) request(ctx context.Context, c control) (controlReply, error) {
	data, err := json.Marshal(c)
	if err != nil {
		return controlReply{}, err
	}
	m, err := ch.pool.nc.RequestWithContext(ctx, ctlSubject(ch.pool.mode.prefix(), ch.id), data)
	if err != nil {
		return controlReply{}, fmt.Errorf("child process %d: %s: %w", ch.Pid(), c.Op, err)
	}
	var rep controlReply
	if err := json.Unmarshal(m.Data, &rep); err != nil {
		return controlReply{}, fmt.Errorf("child process %d: %s: %w", ch.Pid(), c.Op, err)
	}
	if rep.Err != "" {
		return rep, fmt.Errorf("child process %d: %s: %s", ch.Pid(), c.Op, rep.Err)
	}
	return rep, nil
}

// HandOver asks the child for its shards' exact sessions; it stops them.
func (ch *childProc) HandOver(ctx context.Context) (map[int]shardgroup.Session, error) {
	rep, err := ch.request(ctx, control{Op: "handover"})
	return rep.Sessions, err
}

// Resume gives a child waiting for its sessions those it resumes.
func (ch *childProc) Resume(ctx context.Context, sessions map[int]shardgroup.Session) error {
	_, err := ch.request(ctx, control{Op: "resume", Sessions: sessions})
	return err
}

// Stop asks the child to stop and waits for it to exit; it kills it when
// ctx ends first.
func (ch *childProc) Stop(ctx context.Context, keep bool) error {
	select {
	case <-ch.exited:
		return nil
	default:
	}
	_, err := ch.request(ctx, control{Op: "stop", Keep: keep})
	if err != nil {
		ch.pool.log.Warn("child process did not take the stop: it stops when its stdin closes", "cluster", ch.cluster,
			"pid", ch.Pid(), "err", err.Error())
		_ = ch.stdin.Close()
	}
	select {
	case <-ch.exited:
		return nil
	case <-ctx.Done():
	}
	ch.kill()
	<-ch.exited
	return fmt.Errorf("did not exit in time: killed: %w", ctx.Err())
}

var _ runtime.ChildProcess = (*childProc)(nil)
