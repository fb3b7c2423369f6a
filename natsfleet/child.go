package natsfleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/rest"
	"github.com/nats-io/nats.go"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/restproxy"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// parentGoneGrace bounds a child's stop once its parent has gone: it
// closes its shards resumably and tries to save their sessions, then
// exits even if the parent's store cannot be reached.
const parentGoneGrace = 2 * time.Second

// Child serves the cluster the parent gave this process, if it is a
// child (ChildEnv is set); it implements runtime.Processes. The cluster
// runs as a runtime.Member of the parent's fleet on the parent's NATS:
// its bus, identify queue and session store, and REST calls through the
// parent's proxy. It stops when ctx ends, when the parent asks, or when
// its stdin (the pipe from the parent) closes: the parent has gone.
func (p *ProcessMode) Child(ctx context.Context, cfg runtime.Config, ready func()) (bool, error) {
	raw, ok := os.LookupEnv(ChildEnv)
	if !ok || raw == "" {
		return false, nil
	}
	_ = os.Unsetenv(ChildEnv) // not for the processes this one starts
	var spec childSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		return true, fmt.Errorf("natsfleet: %s is not a child's spec: %w", ChildEnv, err)
	}
	return true, runChild(ctx, spec, cfg, p.cfg, ready)
}

// sessionRecorder is the child's session store: the fleet's, which also
// remembers what the last saves gave it once asked to, so that a
// hand-over returns the exact sessions the stop saved.
type sessionRecorder struct {
	runtime.SessionStore
	mu  sync.Mutex // guards got
	got map[int]shardgroup.Session
}

func (s *sessionRecorder) Save(ctx context.Context, sessions []shardgroup.Session) error {
	s.mu.Lock()
	if s.got != nil {
		for _, sess := range sessions {
			s.got[sess.ShardID] = sess
		}
	}
	s.mu.Unlock()
	return s.SessionStore.Save(ctx, sessions)
}

// record starts remembering what is saved.
func (s *sessionRecorder) record() {
	s.mu.Lock()
	s.got = map[int]shardgroup.Session{}
	s.mu.Unlock()
}

func (s *sessionRecorder) recorded() map[int]shardgroup.Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got
}

// child is one child process's side of process mode.
type child struct {
	spec   childSpec
	nc     *nats.Conn
	rt     *runtime.Runtime
	store  *sessionRecorder
	log    *slog.Logger
	resume chan map[int]shardgroup.Session
	busy   sync.Mutex // held while a request of the parent, or a stop, is handled
	// standby is set for a reshard's new child until its switch.
	standby *standby
	last    atomic.Bool // a last sync was asked: deliver nothing more
}

func runChild(ctx context.Context, spec childSpec, cfg runtime.Config, pcfg ProcessConfig, ready func()) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("cluster", spec.Cluster, "pid", os.Getpid())
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	nc, err := Connect(cctx, spec.NATS.URL, append(spec.NATS.Options(), Logger(log),
		Name(fmt.Sprintf("fleet-cluster-%d", spec.Cluster)))...)
	if err != nil {
		return fmt.Errorf("natsfleet: child of cluster %d: join the parent: %w", spec.Cluster, err)
	}
	defer nc.Close()
	// The address of the cluster is taken over from a child it replaces;
	// the old one releases it when it stops.
	tr, err := NewTransport(nc, TransportConfig{Prefix: spec.Prefix, Logger: log, OnHandover: func(bus.Address) {}})
	if err != nil {
		return err
	}
	defer tr.Close()
	btr, sb := childTransport(tr, spec)
	b := bus.New(bus.Options{Transport: btr, DefaultTimeout: cfg.RequestTimeout, Strict: cfg.StrictBus, Logger: log})
	defer b.Close()
	// The parent serves the fleet's identify queue.
	q := newParentIdentifyQueue(nc, spec.Prefix, spec.ID)
	defer func() {
		// Bounded: if the parent has gone, its store cannot be reached.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		q.Close(ctx)
	}()
	kv, err := NewKVSessionStore(cctx, nc, spec.Prefix, fmt.Sprintf("cluster-%d-pid-%d", spec.Cluster, os.Getpid()))
	if err != nil {
		return err
	}
	c := &child{spec: spec, nc: nc, store: &sessionRecorder{SessionStore: sb.store(kv)}, log: log,
		resume: make(chan map[int]shardgroup.Session, 1), standby: sb}

	cfg.Processes = nil
	cfg.Bus, cfg.IdentifyQueue, cfg.SessionStore = b, q, c.store
	cfg.Shards, cfg.TotalShards, cfg.FirstShardID, cfg.LastShardID = spec.Total, 0, 0, 0
	cfg.Clusters, cfg.ShardsPerCluster, cfg.Services = 0, 0, nil
	cfg.GatewayURL, cfg.MaxConcurrencyOverride, cfg.IdentifyInterval = spec.GatewayURL, spec.MaxConc, spec.Interval
	if spec.Proxy != "" {
		opts, err := RESTProxy{URL: spec.Proxy}.ClientOpts()
		if err != nil {
			return err
		}
		opts = append(opts, rest.WithHTTPClient(&http.Client{Transport: restproxy.SecretTransport(nil, spec.Secret), Timeout: time.Minute}))
		cfg.ClientOptions = append(slices.Clone(cfg.ClientOptions), bot.WithRestClientConfigOpts(opts...))
		cfg.RESTURL, cfg.RESTLimiter, cfg.NoSharedRESTLimiter = "", nil, true
	}
	if err := asMember(&cfg, spec, c.resumeSessions); err != nil {
		return err
	}
	cfg.Member.Delivering = c.delivering
	if spec.Warm {
		cfg.Member.Await = awaitWarm(nc, spec.Prefix)
	}
	// The child's records go to the parent's logger, which adds the
	// cluster and the pid.
	var logs *LogHandler
	if pcfg.LogBuffer >= 0 {
		if logs, err = childLogger(nc, spec, pcfg); err != nil {
			return err
		}
		cfg.Logger = slog.New(logs)
	}
	rt, err := runtime.New(cfg)
	if err != nil {
		return err
	}
	c.rt = rt
	obs, err := observe(nc, spec, rt, logs)
	if err != nil {
		return err
	}
	defer obs.stop()
	out := outSubject(spec.Prefix, spec.ID)
	unsubscribe := rt.Subscribe(func(e runtime.Event) {
		if w, ok := toWire(e); ok {
			data, _ := json.Marshal(w)
			_ = nc.Publish(out, data)
		}
		if _, ok := e.(runtime.ClusterReady); ok && ready != nil {
			ready()
		}
	})
	defer unsubscribe()
	ctl, err := nc.Subscribe(ctlSubject(spec.Prefix, spec.ID), c.onControl)
	if err != nil {
		return err
	}
	defer func() { _ = ctl.Unsubscribe() }()

	// The parent's end of stdin closes when it exits, however it exits.
	pipe := parentPipe()
	gone := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer pipe.Close()
	wg.Go(func() {
		_, _ = io.Copy(io.Discard, pipe)
		close(gone)
	})

	runDone := make(chan error, 1)
	// Run's goroutine is waited for, except when the parent has gone and
	// the cluster does not stop within parentGoneGrace: the process then
	// exits without it.
	go func() { runDone <- rt.Run(ctx) }()
	finish := func(err error) error {
		c.busy.Lock() // a request being handled answers before the connection closes
		defer c.busy.Unlock()
		_ = ctl.Unsubscribe()
		return err
	}
	select {
	case err := <-runDone:
		return finish(err)
	case <-gone:
	}
	log.Warn("the parent has gone: stopping, sessions saved if the parent's store can still be reached")
	sctx, cancelStop := context.WithTimeout(context.Background(), parentGoneGrace)
	defer cancelStop()
	wg.Go(func() {
		c.busy.Lock()
		defer c.busy.Unlock()
		_ = c.stop(sctx, true)
	})
	select {
	case err = <-runDone:
	case <-sctx.Done():
		err = errors.New("natsfleet: the parent has gone; the cluster did not stop within its grace")
	}
	// What still waits on the parent's server fails now instead of
	// timing out.
	nc.Close()
	return err
}

// resumeSessions is the member's Resume: it tells the parent the child is
// set up, then returns the sessions its spec says to resume.
func (c *child) resumeSessions(ctx context.Context, _ int) (map[int]shardgroup.Session, error) {
	data, _ := json.Marshal(wireEvent{Kind: kindSetup, Cluster: c.spec.Cluster})
	if err := c.nc.Publish(outSubject(c.spec.Prefix, c.spec.ID), data); err != nil {
		return nil, err
	}
	switch c.spec.Resume {
	case runtime.ResumeNone:
		return map[int]shardgroup.Session{}, nil
	case runtime.ResumeHandOver:
		select {
		case s := <-c.resume:
			return s, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("natsfleet: no sessions handed over: %w", ctx.Err())
		}
	}
	return nil, nil
}

// onControl serves the parent's requests, one at a time.
func (c *child) onControl(m *nats.Msg) {
	c.busy.Lock()
	defer c.busy.Unlock()
	var req control
	var rep controlReply
	if err := json.Unmarshal(m.Data, &req); err != nil {
		rep.Err = err.Error()
		c.respond(m, rep)
		return
	}
	switch req.Op {
	case "handover":
		c.store.record()
		if err := c.stop(context.Background(), true); err != nil {
			rep.Err = err.Error()
		}
		rep.Sessions = c.store.recorded()
		c.respond(m, rep)
	case "resume":
		select {
		case c.resume <- req.Sessions:
		default:
			rep.Err = "sessions already handed over"
		}
		c.respond(m, rep)
	case "sync":
		if err := c.sync(req.Wait, req.Last); err != nil {
			rep.Err = err.Error()
		}
		c.respond(m, rep)
	case "deliver":
		if err := c.standby.end(); err != nil {
			rep.Err = err.Error()
		}
		c.respond(m, rep)
	case "stop":
		c.respond(m, rep)
		_ = c.stop(context.Background(), req.Keep)
	default:
		rep.Err = fmt.Sprintf("unknown request %q", req.Op)
		c.respond(m, rep)
	}
}

func (c *child) respond(m *nats.Msg, rep controlReply) {
	data, _ := json.Marshal(rep)
	_ = m.Respond(data)
	_ = c.nc.Flush()
}

// stop stops the member: its shards close resumably and their sessions
// are saved if keep, else they end.
func (c *child) stop(ctx context.Context, keep bool) error {
	if !keep {
		if err := c.rt.ShutdownCluster(ctx, c.spec.Cluster); err != nil && !errors.Is(err, runtime.ErrNotRunning) {
			c.log.Warn("cluster shutdown failed", "err", err.Error())
		}
	}
	return c.rt.Shutdown(ctx)
}
