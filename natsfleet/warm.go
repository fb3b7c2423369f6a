package natsfleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/rest"
	"github.com/nats-io/nats.go"

	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// warmGrace is the part of the warm start's bound that is not the
// identify schedule: the handshakes and READYs.
const warmGrace = 30 * time.Second

// warmSubject is where a child asks the parent for the session it opened
// for a shard.
func warmSubject(prefix string) string { return prefix + ".proc.warm" }

// warmReply is the parent's answer: the session and its READY frame, or
// no session (the child identifies the shard).
type warmReply struct {
	Session *shardgroup.Session `json:"session,omitempty"`
	Ready   json.RawMessage     `json:"ready,omitempty"`
}

type warmState int

const (
	warmOpening warmState = iota // identifying in the parent
	warmOpen                     // opened, not handed yet
	warmHanded                   // given to a child
	warmNone                     // not opened: the child identifies
)

type warmShard struct {
	state   warmState
	sess    shardgroup.Session
	ready   json.RawMessage
	waiting []*nats.Msg // children's asks, answered once the shard is no longer opening
}

// warmStart opens the sessions of the fleet's shards in the parent while
// the children start: one group per cluster that runs no user code and
// delivers nothing, whose shards identify through the fleet's identify
// queue and close resumably as soon as their READY arrives. Each child
// asks for its shards' sessions (Member.Await) and RESUMEs them as they
// come; Discord replays what came after the READY. A session is handed
// once, and saved to the fleet's session store as it is handed, so that a
// child that dies before its first checkpoint is replaced by one that
// resumes it; the sessions not handed when the fleet stops are saved too.
//
// Its loop goroutine owns the groups and the queue, and answers the
// children; the shards' hooks and the children's asks change the shards'
// states under mu and wake it. A saver goroutine saves what is handed, so
// that a slow store never delays an answer.
type warmStart struct {
	pl     *pool
	runs   []*shardgroup.Runner
	cancel context.CancelFunc // ends the groups' context
	sub    *nats.Subscription
	kick   chan struct{} // the loop has work; capacity 1
	saving chan struct{} // the saver has work; capacity 1
	quit   chan struct{} // closed by close
	ended  chan struct{} // closed when the loop returns
	done   chan struct{} // closed when the saver returns, after the loop

	mu     sync.Mutex // guards shards, toSave, sub
	shards map[int]*warmShard
	toSave []shardgroup.Session // handed, to save
}

// startWarm starts opening the sessions of the planned shards that have
// no stored session worth resuming, through the fleet's identify queue;
// nil when there is none to open. It needs no NATS: listen then answers
// the children.
func (pl *pool) startWarm(stored []shardgroup.Session) (*warmStart, error) {
	f := pl.f
	skip := map[int]bool{}
	for _, s := range stored {
		if f.Resumable != nil && f.Resumable(s) {
			skip[s.ShardID] = true
		}
	}
	w := &warmStart{pl: pl, kick: make(chan struct{}, 1), saving: make(chan struct{}, 1), quit: make(chan struct{}),
		ended: make(chan struct{}), done: make(chan struct{}), shards: map[int]*warmShard{}}
	var plan []runtime.ClusterPlan
	for _, cp := range f.Clusters {
		var ids []int
		for _, id := range cp.Shards {
			if !skip[id] {
				ids = append(ids, id)
				w.shards[id] = &warmShard{}
			}
		}
		if len(ids) > 0 {
			plan = append(plan, runtime.ClusterPlan{ID: cp.ID, Shards: ids})
		}
	}
	if len(plan) == 0 {
		return nil, nil
	}
	q := pl.idq.local
	fail := func(err error) (*warmStart, error) {
		qctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		for _, run := range w.runs {
			run.Group().Client().Rest().Close(qctx)
		}
		return nil, err
	}
	// A session's connection here reads its READY only: it goes without
	// transport compression, whose stream set-up costs more than the
	// READY saves (the children's RESUMEs use the fleet's).
	for _, cp := range plan {
		run, err := shardgroup.New(shardgroup.Config{
			ID: cp.ID, ShardIDs: cp.Shards, ShardCount: f.Shards, Token: shardgroup.Token(f.Token),
			GatewayURL: f.GatewayURL, Intents: f.Intents, Presence: f.Presence, Compression: shardgroup.CompressionNone,
			IdentifyLimiter: q, Pacer: f.Pacer, Logger: pl.log.With("warm_start", true),
			// The client makes no REST call: a limiter without goroutines.
			ClientOptions: []bot.ConfigOpt{bot.WithRestClientConfigOpts(rest.WithRateLimiter(rest.NewNoopRateLimiter()))},
			Deliver:       func() bool { return false },
			StopAtReady:   w.opened,
			Hooks: shardgroup.Hooks{
				Identify: func(g *shardgroup.Group, shard int, waited time.Duration) {
					if f.Report != nil {
						f.Report(runtime.ShardIdentify{Cluster: g.ID(), Shard: shard, Waited: waited})
					}
				},
				ShardState: func(_ *shardgroup.Group, shard int, _, to shardgroup.State) {
					if to == shardgroup.StateStopped {
						w.stopped(shard)
					}
				},
			},
		})
		if err != nil {
			return fail(fmt.Errorf("natsfleet: warm start of cluster %d: %w", cp.ID, err))
		}
		w.runs = append(w.runs, run)
	}
	// The groups run on a context of their own: the fleet's stop closes
	// them resumably (close) rather than ending their sessions.
	rctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	for _, run := range w.runs {
		run.Start(rctx)
	}
	turns := (len(w.shards) + f.MaxConcurrency - 1) / max(f.MaxConcurrency, 1)
	bound := time.Duration(turns+1)*f.IdentifyInterval + warmGrace
	pl.wg.Go(func() { w.loop(bound) })
	pl.wg.Go(w.saver)
	pl.log.Info("warm start: opening the shards' sessions while the children start", "shards", len(w.shards))
	return w, nil
}

// listen answers the children's asks for sessions on nc.
func (w *warmStart) listen(nc *nats.Conn) error {
	sub, err := nc.Subscribe(warmSubject(w.pl.mode.prefix()), w.onAsk)
	if err != nil {
		return fmt.Errorf("natsfleet: warm start: %w", err)
	}
	w.mu.Lock()
	w.sub = sub
	w.mu.Unlock()
	return nil
}

// opened is StopAtReady: a shard's session is open.
func (w *warmStart) opened(sess shardgroup.Session, ready []byte) {
	w.mu.Lock()
	if sh := w.shards[sess.ShardID]; sh != nil && sh.state == warmOpening {
		sh.state, sh.sess, sh.ready = warmOpen, sess, ready
	}
	w.mu.Unlock()
	w.wake()
}

// stopped is a shard of the groups stopped: without a session opened, the
// child identifies it.
func (w *warmStart) stopped(shard int) {
	w.mu.Lock()
	if sh := w.shards[shard]; sh != nil && sh.state == warmOpening {
		sh.state = warmNone
	}
	w.mu.Unlock()
	w.wake()
}

func (w *warmStart) wake() { signal(w.kick) }

// signal wakes the goroutine waiting on a channel of capacity 1.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// onAsk answers a child's ask for a shard's session, at once unless the
// shard is still opening.
func (w *warmStart) onAsk(m *nats.Msg) {
	shard, err := strconv.Atoi(string(m.Data))
	w.mu.Lock()
	sh := w.shards[shard]
	if err == nil && sh != nil && sh.state == warmOpening {
		sh.waiting = append(sh.waiting, m)
		w.mu.Unlock()
		return
	}
	rep := w.handLocked(sh)
	w.mu.Unlock()
	w.respond(m, rep)
	if rep.Session != nil {
		signal(w.saving)
	}
}

// handLocked hands the shard's session over if it is open and not handed
// yet; otherwise the answer says to identify. w.mu is held.
func (w *warmStart) handLocked(sh *warmShard) warmReply {
	if sh == nil || sh.state != warmOpen {
		return warmReply{}
	}
	sh.state = warmHanded
	sess := sh.sess
	w.toSave = append(w.toSave, sess)
	rep := warmReply{Session: &sess, Ready: sh.ready}
	sh.ready = nil
	return rep
}

func (w *warmStart) respond(m *nats.Msg, rep warmReply) {
	data, err := json.Marshal(rep)
	if err != nil {
		data, _ = json.Marshal(warmReply{})
	}
	if err := m.Respond(data); err != nil {
		w.pl.log.Debug("warm start: answer to a child not sent", "err", err.Error())
	}
}

// answer answers the asks of the shards no longer opening, all of them
// when all.
func (w *warmStart) answer(all bool) {
	type ask struct {
		m   *nats.Msg
		rep warmReply
	}
	var asks []ask
	w.mu.Lock()
	for _, sh := range w.shards {
		if len(sh.waiting) == 0 || sh.state == warmOpening && !all {
			continue
		}
		for _, m := range sh.waiting {
			asks = append(asks, ask{m, w.handLocked(sh)})
		}
		sh.waiting = nil
	}
	w.mu.Unlock()
	for _, a := range asks {
		w.respond(a.m, a.rep)
	}
	if len(asks) > 0 {
		signal(w.saving)
	}
}

// opening reports whether a shard is still opening.
func (w *warmStart) opening() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, sh := range w.shards {
		if sh.state == warmOpening {
			return true
		}
	}
	return false
}

// loop answers the children until close; it stops the groups once every
// shard is opened or given up, or after bound, or at close.
func (w *warmStart) loop(bound time.Duration) {
	defer close(w.ended)
	t := time.NewTimer(bound)
	defer t.Stop()
	running := true
	for {
		select {
		case <-w.kick:
		case <-t.C:
			if running {
				w.pl.log.Warn("warm start: sessions not opened in time: the children identify those shards", "bound", bound)
				w.stopGroups()
			}
		case <-w.quit:
			if running {
				w.stopGroups()
			}
			w.answer(true)
			// The sessions never handed are saved too: the next start
			// resumes them.
			w.mu.Lock()
			for _, sh := range w.shards {
				if sh.state == warmOpen {
					sh.state = warmHanded
					w.toSave = append(w.toSave, sh.sess)
				}
			}
			w.mu.Unlock()
			if running {
				w.release()
			}
			return
		}
		w.answer(false)
		if running && !w.opening() {
			running = false
			w.release()
		}
	}
}

// stopGroups stops the groups' shards, resumably: a shard whose IDENTIFY
// is answered meanwhile still hands its session on.
func (w *warmStart) stopGroups() {
	ctx, cancel := context.WithTimeout(context.Background(), w.pl.f.ShutdownTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, run := range w.runs {
		wg.Go(func() {
			if _, err := run.Stop(ctx, true); err != nil {
				w.pl.log.Warn("warm start: shards did not stop", "err", err.Error())
			}
		})
	}
	wg.Wait()
}

// release closes the groups' clients and the identify queue, once every
// shard has stopped.
func (w *warmStart) release() {
	ctx, cancel := context.WithTimeout(context.Background(), w.pl.f.ShutdownTimeout)
	defer cancel()
	for _, run := range w.runs {
		select {
		case <-run.Done():
		case <-ctx.Done():
		}
		run.Group().Client().Rest().Close(ctx)
	}
	w.cancel()
}

// saver saves the sessions handed to the fleet's store, until the loop
// has returned and they are all saved.
func (w *warmStart) saver() {
	defer close(w.done)
	for {
		ended := false
		select {
		case <-w.saving:
		case <-w.ended:
			ended = true
		}
		w.mu.Lock()
		list := w.toSave
		w.toSave = nil
		w.mu.Unlock()
		w.save(list)
		if ended {
			return
		}
	}
}

// save saves sessions to the fleet's store.
func (w *warmStart) save(list []shardgroup.Session) {
	if len(list) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.pl.f.ShutdownTimeout)
	defer cancel()
	if w.pl.sessions == nil {
		// The fleet stopped before its store opened: straight to
		// Config.SessionStore.
		w.pl.saveStored(ctx, list)
		return
	}
	if err := w.pl.sessions.Save(ctx, list); err != nil {
		w.pl.log.Warn("warm start: opened sessions not saved: a child that dies before its first checkpoint identifies them",
			"err", err.Error())
	}
}

// close stops the warm start: shards still opening stop resumably, the
// children still waiting are told to identify, and the sessions opened
// and not handed are saved. It returns once the loop has returned, or ctx
// ends.
func (w *warmStart) close(ctx context.Context) error {
	w.mu.Lock()
	sub := w.sub
	w.mu.Unlock()
	if sub != nil {
		_ = sub.Unsubscribe()
	}
	close(w.quit)
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return errors.New("natsfleet: the warm start did not stop in time")
	}
}

// awaitWarm is a child's Member.Await: it asks the parent for the session
// it opened for a shard, and waits for it.
func awaitWarm(nc *nats.Conn, prefix string) func(ctx context.Context, cluster, shard int) (shardgroup.Session, []byte, bool) {
	return func(ctx context.Context, _, shard int) (shardgroup.Session, []byte, bool) {
		m, err := nc.RequestWithContext(ctx, warmSubject(prefix), []byte(strconv.Itoa(shard)))
		if err != nil {
			return shardgroup.Session{}, nil, false
		}
		var rep warmReply
		if err := json.Unmarshal(m.Data, &rep); err != nil || rep.Session == nil {
			return shardgroup.Session{}, nil, false
		}
		return *rep.Session, rep.Ready, true
	}
}
