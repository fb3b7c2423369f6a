package runtime

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	devents "github.com/disgoorg/disgo/events"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/shardgroup"
)

// The soft restart stress test: 8 shards in 4 clusters under 3,000
// MESSAGE_CREATE/s, each message with a unique ID; every round
// soft-restarts each cluster in turn while 8 random faults hit the shards
// of the cluster being restarted, from 30 ms before the call until it
// returns: op 7, op 9 d=true, op 9 d=false, a dropped connection, and a
// held handshake released a little later.
//
// Nothing may be lost but what Discord itself lost: the events queued to a
// session that an op 9 d=false ended. Nothing may arrive twice, and the
// fleet may IDENTIFY only for the sessions op 9 d=false ended.
//
// FLEET_STRESS_ROUNDS sets the number of rounds (default 3, 1 with
// -short); FLEET_STRESS_SEED replays a run's faults (the seed is logged;
// the timing of events around them differs from run to run). Under the
// race detector the rate is 400/s, which such a build can keep up with.
func TestSoftRestartUnderFaults(t *testing.T) {
	rounds := 3
	if testing.Short() {
		rounds = 1
	}
	if v := os.Getenv("FLEET_STRESS_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("FLEET_STRESS_ROUNDS=%q: want a positive number", v)
		}
		rounds = n
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("FLEET_STRESS_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("FLEET_STRESS_SEED=%q: want an unsigned number", v)
		}
		seed = n
	}
	t.Logf("seed %d: FLEET_STRESS_SEED=%d replays these faults", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))

	const shards, clusters = 8, 4
	rate := 3000
	if raceEnabled {
		rate = 400 // the race detector slows event handling several times over
	}
	s := discordtest.NewServer(discordtest.WithGuilds(64), discordtest.WithRecommendedShards(shards),
		discordtest.WithMaxConcurrency(shards), discordtest.WithIdentifyWindow(10*time.Millisecond),
		// Each round spends a few IDENTIFYs (one per op 9 d=false): 200
		// rounds would exhaust Discord's default 1,000 a day.
		discordtest.WithSessionStartLimit(1_000_000, 24*time.Hour))
	defer s.Close()
	tr := newTracker(s)
	cfg := testConfig(s)
	cfg.Bot, cfg.Clusters = tr.bot, clusters
	rt := runReady(t, cfg)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := rt.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-rt.Done()
		if err := rt.Err(); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	tr.watch(rt)

	for round := range rounds {
		before, firstIdentify, accepted := s.Stats(), len(s.Identifies()), tr.accepted()
		ctx, cancel := context.WithCancel(context.Background())
		loaded := make(chan struct{})
		go func() {
			defer close(loaded)
			tr.load(ctx, rate)
		}()
		invalidated := 0
		var trace []string
		for c := range clusters {
			began := time.Now()
			n, err := restartUnderFaults(rt, s, c, []int{2 * c, 2*c + 1}, rng, &trace)
			if errors.Is(err, ErrNotRunning) {
				<-rt.Done()
				err = fmt.Errorf("%w (Run returned %v)", err, rt.Err())
			}
			if testing.Verbose() {
				t.Logf("round %d cluster %d: %s", round, c, time.Since(began))
			}
			if err != nil {
				cancel()
				<-loaded
				t.Fatalf("round %d: soft restart of cluster %d: %v", round, c, err)
			}
			invalidated += n
		}
		cancel()
		<-loaded
		tr.markers(t, rt, shards)
		after := s.Stats()

		var failures []string
		lost, excused, unexcused, dups := tr.account(rt, shards)
		if len(unexcused) > 0 {
			failures = append(failures, fmt.Sprintf("%d events lost that Discord did not lose: %s", len(unexcused), strings.Join(unexcused, "; ")))
		}
		if dups > 0 {
			failures = append(failures, fmt.Sprintf("%d events delivered twice", dups))
		}
		if gaps := tr.gapsReport(); gaps != "" {
			failures = append(failures, "sequence gaps: "+gaps)
		}
		if n := after.Identifies - before.Identifies; n != invalidated {
			failures = append(failures, fmt.Sprintf("%d IDENTIFYs, want %d (the sessions op 9 d=false ended)", n, invalidated))
		}
		ended := diffCounts(before.SessionsEnded, after.SessionsEnded)
		if want := map[string]int{discordtest.SessionEndedInvalidated: invalidated}; invalidated == 0 && len(ended) != 0 || invalidated > 0 && !maps.Equal(ended, want) {
			failures = append(failures, fmt.Sprintf("sessions ended %v, want only %d by op 9 d=false", ended, invalidated))
		}
		if after.Sessions != shards {
			failures = append(failures, fmt.Sprintf("%d live sessions, want %d", after.Sessions, shards))
		}
		if v := diffCounts(before.Violations, after.Violations); len(v) != 0 {
			failures = append(failures, fmt.Sprintf("violations %v", v))
		}
		if len(failures) > 0 {
			for _, id := range s.Identifies()[firstIdentify:] {
				trace = append(trace, fmt.Sprintf("identify shard %d at %s (refused %t)", id.Shard, id.At.Format("05.0000"), id.Violation))
			}
			failures = append(failures, "faults: "+strings.Join(trace, "; "))
			t.Fatalf("round %d (seed %d): %s", round, seed, strings.Join(failures, "\n"))
		}
		if testing.Verbose() {
			t.Logf("round %d: %d events, %d lost by Discord (excused %d), %d sessions invalidated", round, tr.accepted()-accepted, lost, excused, invalidated)
		}
	}
}

func (k faultKind) String() string {
	return [...]string{"op7", "op9-resumable", "op9-invalid", "drop", "hold", "release"}[k]
}

func diffCounts(before, after map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

type faultKind int

const (
	faultReconnect faultKind = iota
	faultResumable
	faultInvalidate
	faultDrop
	faultHold
	faultRelease // the end of a hold
	faultKinds   = faultRelease
)

type fault struct {
	at    time.Duration // from 30 ms before the SoftRestart call
	kind  faultKind
	shard int
}

// restartUnderFaults soft-restarts a cluster while 8 faults drawn from rng
// hit its shards, and returns how many sessions op 9 d=false ended.
func restartUnderFaults(rt *Runtime, s *discordtest.Server, cluster int, shards []int, rng *rand.Rand, trace *[]string) (int, error) {
	const lead, spread = 30 * time.Millisecond, 45 * time.Millisecond
	var plan []fault
	for range 8 {
		f := fault{at: time.Duration(rng.Int64N(int64(spread))), kind: faultKind(rng.IntN(int(faultKinds))), shard: shards[rng.IntN(len(shards))]}
		plan = append(plan, f)
		if f.kind == faultHold {
			plan = append(plan, fault{at: f.at + time.Millisecond + time.Duration(rng.Int64N(int64(40*time.Millisecond))), kind: faultRelease, shard: f.shard})
		}
	}
	slices.SortStableFunc(plan, func(a, b fault) int { return int(a.at - b.at) })

	returned := make(chan struct{})
	invalidated := make(chan int, 1)
	var tr []string
	start := time.Now()
	go func() {
		n := 0
		defer func() { invalidated <- n }()
		timer := time.NewTimer(0)
		defer timer.Stop()
		<-timer.C
		for _, f := range plan {
			// Faults keep their planned times until the restart returns;
			// the ones left then come at once, so every round has 8.
			if wait := f.at - time.Since(start); wait > 0 {
				timer.Reset(wait)
				select {
				case <-timer.C:
				case <-returned:
					timer.Stop()
				}
			}
			tr = append(tr, fmt.Sprintf("%s %s %d", time.Since(start).Round(100*time.Microsecond), f.kind, f.shard))
			switch f.kind {
			case faultReconnect:
				s.Reconnect(f.shard)
			case faultResumable:
				s.InvalidateSession(f.shard, true)
			case faultInvalidate:
				n += s.InvalidateSession(f.shard, false)
			case faultDrop:
				s.DropShard(f.shard)
			case faultHold:
				s.HoldShard(f.shard)
			case faultRelease:
				s.ReleaseShard(f.shard)
			}
		}
		for _, id := range shards {
			s.ReleaseShard(id)
		}
	}()
	t := time.NewTimer(lead) // the faults begin before the call
	<-t.C
	err := rt.SoftRestart(context.Background(), cluster)
	*trace = append(*trace, fmt.Sprintf("cluster %d: returned at %s", cluster, time.Since(start).Round(100*time.Microsecond)))
	close(returned)
	n := <-invalidated
	*trace = append(*trace, tr...)
	if err == nil {
		// Faults that came after the return may have left a shard
		// reconnecting or identifying: the round goes on when it serves.
		err = waitClusterReady(rt, cluster)
	}
	return n, err
}

// waitClusterReady waits until every shard of the cluster's current group
// is ready.
func waitClusterReady(rt *Runtime, cluster int) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		g := rt.groups()[cluster]
		if g.State() == shardgroup.StateReady {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster %d not ready after 20s: %v", cluster, g.Shards())
		}
		time.Sleep(time.Millisecond) // polls a state no event reports
	}
}

// tracker sends messages with unique IDs and records what user code sees:
// each message's deliveries and, per session, that sequences arrive
// without gaps.
type tracker struct {
	s *discordtest.Server

	mu        sync.Mutex // guards the fields below
	next      int
	shardOf   []int          // by message ID
	sent      [][]int        // message IDs accepted, by shard, in dispatch order
	delivered map[int]int    // by message ID: deliveries
	sessionOf map[int]string // by message ID: the session that delivered it
	lastSeq   map[string]int // by session: the last sequence delivered
	gaps      []string
	multi     map[int][]string // by message ID: the sessions of a message queued to more than one
	resumed   map[int]int      // by shard: RESUMEDs since the last delivery
	resolved  []int            // by shard: messages before this index are accounted for
	lastSess  map[int]string   // by shard: the session of the last accounted delivery
	notify    chan struct{}
}

func newTracker(s *discordtest.Server) *tracker {
	return &tracker{s: s, delivered: map[int]int{}, sessionOf: map[int]string{}, lastSeq: map[string]int{},
		lastSess: map[int]string{}, resumed: map[int]int{}, notify: make(chan struct{}, 1)}
}

func (tr *tracker) bot(int) Bot {
	return BotFunc(func(_ context.Context, g *shardgroup.Group) error {
		g.Client().AddEventListeners(bot.NewListenerFunc(func(e bot.Event) {
			se, ok := e.(interface{ ShardID() int })
			if !ok {
				return
			}
			shard := se.ShardID()
			sess := ""
			if sh := e.Client().ShardManager().Shard(shard); sh != nil {
				if id := sh.SessionID(); id != nil {
					sess = *id
				}
			}
			seq := e.SequenceNumber()
			msg := -1
			if m, ok := e.(*devents.MessageCreate); ok {
				if id, ok := strings.CutPrefix(m.Message.Content, "stress "); ok {
					msg, _ = strconv.Atoi(id)
				}
			}
			tr.mu.Lock()
			// One gateway event may become several disgo events, all
			// with its sequence; a RESUMED has a sequence but reaches no
			// listener (disgo drops its empty data).
			last := tr.lastSeq[sess]
			if seq != last && seq != last+1 && (last == 0 || seq < last+1 || seq > last+1+tr.resumed[shard]) {
				tr.gaps = append(tr.gaps, fmt.Sprintf("shard %d session %.8s: %d (%T) after %d", shard, sess, seq, e, last))
			}
			if seq != last {
				tr.resumed[shard] = 0
			}
			tr.lastSeq[sess] = max(tr.lastSeq[sess], seq)
			if msg >= 0 {
				tr.delivered[msg]++
				tr.sessionOf[msg] = sess
			}
			tr.mu.Unlock()
			if msg >= 0 {
				select {
				case tr.notify <- struct{}{}:
				default:
				}
			}
		}))
		return nil
	})
}

// watch records each shard's session at the start, and the RESUMEDs.
func (tr *tracker) watch(rt *Runtime) {
	tr.mu.Lock()
	for _, g := range rt.groups() {
		for _, id := range g.ShardIDs() {
			if sid := g.Client().ShardManager().Shard(id).SessionID(); sid != nil {
				tr.lastSess[id] = *sid
			}
		}
	}
	tr.mu.Unlock()
	rt.Subscribe(func(e Event) {
		if e, ok := e.(ShardResumed); ok {
			tr.mu.Lock()
			tr.resumed[e.Shard]++
			tr.mu.Unlock()
		}
	})
}

// send dispatches one message with a new ID to the guild's shard and
// reports whether a session took it.
func (tr *tracker) send(guild int) (int, bool) {
	g := tr.s.GuildID(guild)
	shard := discordtest.ShardFor(g, tr.s.RecommendedShards())
	tr.mu.Lock()
	id := tr.next
	tr.next++
	tr.shardOf = append(tr.shardOf, shard)
	if tr.sent == nil {
		tr.sent = make([][]int, tr.s.RecommendedShards())
		tr.resolved = make([]int, tr.s.RecommendedShards())
	}
	tr.mu.Unlock()
	// One sender: the dispatch order is the order of sent.
	sessions, _ := tr.s.DispatchSessions(g, "MESSAGE_CREATE", tr.s.MessageCreate(g, "stress "+strconv.Itoa(id), id))
	n := len(sessions)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if n > 1 {
		if tr.multi == nil {
			tr.multi = map[int][]string{}
		}
		tr.multi[id] = sessions
	}
	if n > 0 {
		tr.sent[shard] = append(tr.sent[shard], id)
	}
	return id, n > 0
}

// load sends messages at rate per second over every guild until ctx ends.
func (tr *tracker) load(ctx context.Context, rate int) {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	start, sent := time.Now(), 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for due := int(time.Since(start).Seconds() * float64(rate)); sent < due; sent++ {
			tr.send(sent % tr.s.Guilds())
		}
	}
}

// markers sends one last message to every shard and waits until each has
// arrived: a session delivers in order, so every message before a marker
// in its session has arrived too.
func (tr *tracker) markers(t *testing.T, rt *Runtime, shards int) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for shard := range shards {
		guild := 0
		for discordtest.ShardFor(tr.s.GuildID(guild), shards) != shard {
			guild++
		}
		for {
			id, ok := tr.send(guild)
			if !ok { // the shard is between sessions: try again
				select {
				case <-deadline:
					t.Fatalf("shard %d: no session took a message in 20s: %v", shard, rt.groups())
				case <-time.After(time.Millisecond):
				}
				continue
			}
			for {
				tr.mu.Lock()
				got := tr.delivered[id] > 0
				tr.mu.Unlock()
				if got {
					break
				}
				select {
				case <-tr.notify:
				case <-deadline:
					var states []shardgroup.ShardInfo
					for _, g := range rt.groups() {
						states = append(states, g.Shards()...)
					}
					st := tr.s.Stats()
					t.Fatalf("shard %d: marker %d not delivered in 20s; shards %+v; sessions %d, open connections %d, ended %v",
						shard, id, states, st.Sessions, st.OpenConnections, st.SessionsEnded)
				}
			}
			break
		}
	}
}

// account sorts the messages sent since the last call into delivered,
// lost by Discord and lost by the fleet. A message that was never
// delivered is Discord's loss when it lies in the tail of a session that
// ended: the deliveries around it (in dispatch order) come from different
// sessions. Sessions only ever end by op 9 d=false in this test (checked
// apart), and a loss at the head of the later session would be a sequence
// gap (checked apart too).
func (tr *tracker) account(rt *Runtime, shards int) (lost, excused int, unexcused []string, dups int) {
	current := map[int]string{}
	for _, g := range rt.groups() {
		for _, id := range g.ShardIDs() {
			if sid := g.Client().ShardManager().Shard(id).SessionID(); sid != nil {
				current[id] = *sid
			}
		}
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for shard := range shards {
		msgs := tr.sent[shard][tr.resolved[shard]:]
		prev := tr.lastSess[shard]
		for i, id := range msgs {
			switch d := tr.delivered[id]; {
			case d > 1:
				dups += d - 1
				fallthrough
			case d == 1:
				prev = tr.sessionOf[id]
				continue
			}
			lost++
			next := current[shard]
			for _, later := range msgs[i+1:] {
				if tr.delivered[later] > 0 {
					next = tr.sessionOf[later]
					break
				}
			}
			if prev != "" && prev != next {
				excused++
				continue
			}
			unexcused = append(unexcused, fmt.Sprintf("message %d of shard %d (session %.8s)", id, shard, prev))
		}
		tr.resolved[shard] = len(tr.sent[shard])
		tr.lastSess[shard] = prev
	}
	// A message queued to two sessions of its shard is the fleet's fault
	// only if the fleet knew both (it had a dispatch of each: READY at
	// least). A session whose READY never reached the fleet (its
	// connection closed after the IDENTIFY) lives on at the gateway
	// with nobody knowing its ID, and the fleet rightly identifies again.
	known := 0
	for _, sessions := range tr.multi {
		n := 0
		for _, sess := range sessions {
			if _, ok := tr.lastSeq[sess]; ok {
				n++
			}
		}
		if n > 1 {
			known++
		}
	}
	if known > 0 {
		unexcused = append(unexcused, fmt.Sprintf("%d messages queued to two sessions of one shard that the fleet both knew", known))
	}
	tr.multi = nil
	return lost, excused, unexcused, dups
}

func (tr *tracker) gapsReport() string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	g := strings.Join(tr.gaps, "; ")
	tr.gaps = nil
	return g
}

func (tr *tracker) accepted() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	n := 0
	for _, s := range tr.sent {
		n += len(s)
	}
	return n
}
