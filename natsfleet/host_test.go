package natsfleet_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	devents "github.com/disgoorg/disgo/events"
	"github.com/nats-io/nats.go"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/internal/multihost"
	"github.com/gofleet/fleet/natsfleet"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// deliveries counts, by message content, how many times user code on any
// host received each MESSAGE_CREATE.
type deliveries struct {
	mu   sync.Mutex // guards seen, last
	seen map[string]int
	last map[string]time.Time // by host, its last delivery
}

func newDeliveries() *deliveries {
	return &deliveries{seen: map[string]int{}, last: map[string]time.Time{}}
}

// botOn is the user code of host id.
func (d *deliveries) botOn(id string) func(int) runtime.Bot {
	return func(int) runtime.Bot {
		return runtime.BotFunc(func(_ context.Context, g *shardgroup.Group) error {
			g.Client().AddEventListeners(bot.NewListenerFunc(func(e *devents.MessageCreate) {
				d.mu.Lock()
				d.seen[e.Message.Content]++
				d.last[id] = time.Now()
				d.mu.Unlock()
			}))
			return nil
		})
	}
}

func (d *deliveries) lastOn(id string) time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.last[id]
}

// repeats returns how many deliveries of the messages in sent were
// repeats.
func (d *deliveries) repeats(sent []string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	dup := 0
	for _, m := range sent {
		if n := d.seen[m]; n > 1 {
			dup += n - 1
		}
	}
	return dup
}

// check waits until every message in sent was delivered, then returns how
// many were lost and how many deliveries were repeats.
func (d *deliveries) check(t *testing.T, sent []string, wait time.Duration) (lost, dup int) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		d.mu.Lock()
		lost, dup = 0, 0
		for _, m := range sent {
			switch n := d.seen[m]; {
			case n == 0:
				lost++
			case n > 1:
				dup += n - 1
			}
		}
		d.mu.Unlock()
		if lost == 0 || time.Now().After(deadline) {
			return lost, dup
		}
		time.Sleep(5 * time.Millisecond) // polls the ledger; the assertion is on its content
	}
}

// sender dispatches MESSAGE_CREATE to every guild in turn, at most one
// per millisecond (senderRate), until stopped, and lists the messages
// Discord accepted for a session.
type sender struct {
	s    *discordtest.Server
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex // guards sent, guild
	sent []string
	// guild is the guild index of each message sent, by content.
	guild map[string]int
}

// senderRate is the most messages per second a sender sends: one per
// tick of a millisecond ticker, which drops ticks rather than catch up.
const senderRate = 1000

func startSender(s *discordtest.Server, guilds int, tag string) *sender {
	sd := &sender{s: s, stop: make(chan struct{}), done: make(chan struct{}), guild: map[string]int{}}
	go func() {
		defer close(sd.done)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-sd.stop:
				return
			case <-tick.C:
			}
			g := s.GuildID(i % guilds)
			content := fmt.Sprintf("%s-%d", tag, i)
			if n, _ := s.Dispatch(g, "MESSAGE_CREATE", s.MessageCreate(g, content, i)); n > 0 {
				sd.mu.Lock()
				sd.sent = append(sd.sent, content)
				sd.guild[content] = i % guilds
				sd.mu.Unlock()
			}
		}
	}()
	return sd
}

func (sd *sender) finish() []string {
	close(sd.stop)
	<-sd.done
	sd.mu.Lock()
	defer sd.mu.Unlock()
	return slices.Clone(sd.sent)
}

// to returns the messages of sent that went to a guild of one of shards
// (of total), and how many of the guilds (of guilds) those are.
func (sd *sender) to(sent []string, shards []int, total, guilds int) (msgs []string, n int) {
	on := map[int]bool{}
	for i := range guilds {
		if slices.Contains(shards, discordtest.ShardFor(sd.s.GuildID(i), total)) {
			on[i] = true
		}
	}
	sd.mu.Lock()
	defer sd.mu.Unlock()
	for _, m := range sent {
		if on[sd.guild[m]] {
			msgs = append(msgs, m)
		}
	}
	return msgs, len(on)
}

type runningHost struct {
	h      *natsfleet.Host
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan error
}

func startHost(t *testing.T, s *discordtest.Server, fleet, id string, d *deliveries, ttl time.Duration) *runningHost {
	t.Helper()
	return startHostOn(t, connect(t), s, fleet, id, d, ttl)
}

func startHostOn(t *testing.T, nc *nats.Conn, s *discordtest.Server, fleet, id string, d *deliveries, ttl time.Duration) *runningHost {
	t.Helper()
	ctx := testCtx(t)
	h, err := natsfleet.NewHost(ctx, nc, natsfleet.HostConfig{Fleet: fleet, ID: id, LeaseTTL: ttl, Logger: hostLogger(id),
		Runtime: runtime.Config{Token: runtime.Token(s.Token()), Bot: d.botOn(id), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
			IdentifyInterval: s.IdentifyWindow(), Shards: 4, Clusters: 4, MaxConcurrencyOverride: 4, ShutdownTimeout: 5 * time.Second,
			CheckpointInterval: checkpointEvery}})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	r := &runningHost{h: h, nc: nc, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- h.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

// waitStatus waits until cond holds of the fleet as h sees it.
func waitStatus(t *testing.T, h *natsfleet.Host, what string, cond func(natsfleet.FleetStatus) bool) natsfleet.FleetStatus {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := h.Status(context.Background())
		if err == nil && cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %+v (%v)", what, st, err)
		}
		time.Sleep(10 * time.Millisecond) // polls the fleet's view; what is asserted is its content
	}
}

func allReady(s *discordtest.Server, shards int) bool {
	st := s.Stats()
	for i := range shards {
		if st.ReadyShards[i] == 0 {
			return false
		}
	}
	return true
}

func ownedBy(st natsfleet.FleetStatus) map[string][]int {
	out := map[string][]int{}
	for _, c := range st.Clusters {
		out[c.Owner] = append(out[c.Owner], c.ID)
	}
	return out
}

func TestHostDrainHandsClustersOverWithNothingLostRepeatedOrIdentified(t *testing.T) {
	t.Parallel()
	s := discordtest.NewServer(discordtest.WithGuilds(16), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(5*time.Millisecond))
	defer s.Close()
	fleet := newPrefix()
	d := newDeliveries()
	a := startHost(t, s, fleet, "a", d, hostTTL)
	b := startHost(t, s, fleet, "b", d, hostTTL)
	waitStatus(t, a.h, "four clusters, two on each host", func(st natsfleet.FleetStatus) bool {
		o := ownedBy(st)
		return len(o["a"]) == 2 && len(o["b"]) == 2 && allReady(s, 4)
	})
	before := s.Stats()
	sd := startSender(s, 16, "drain")
	ctx := testCtx(t)
	if err := a.h.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, b.h, "every cluster on b, every shard ready", func(st natsfleet.FleetStatus) bool {
		return len(ownedBy(st)["b"]) == 4 && allReady(s, 4)
	})
	sent := sd.finish()
	lost, dup := d.check(t, sent, 10*time.Second)
	after := s.Stats()
	t.Logf("drain: %d messages sent, %d lost, %d repeated, %d IDENTIFYs, %d RESUMEs", len(sent), lost, dup,
		after.Identifies-before.Identifies, after.Resumes-before.Resumes)
	if len(sent) == 0 {
		t.Fatal("no message was sent during the drain")
	}
	if lost != 0 || dup != 0 {
		t.Errorf("drain lost %d and repeated %d of %d messages, want 0 and 0", lost, dup, len(sent))
	}
	if n := after.Identifies - before.Identifies; n != 0 {
		t.Errorf("%d IDENTIFYs during the drain, want 0", n)
	}
	if n := after.Resumes - before.Resumes; n < 2 {
		t.Errorf("%d RESUMEs during the drain, want at least 2 (a's two shards)", n)
	}
	if len(after.Violations) != 0 {
		t.Errorf("violations: %v", after.Violations)
	}
	if got := a.h.Owned(); len(got) != 0 {
		t.Errorf("a still runs %v after its drain", got)
	}
}

func TestHostSoftRestartIsCarriedOutByTheOwner(t *testing.T) {
	t.Parallel()
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(5*time.Millisecond))
	defer s.Close()
	fleet := newPrefix()
	d := newDeliveries()
	a := startHost(t, s, fleet, "a", d, hostTTL)
	startHost(t, s, fleet, "b", d, hostTTL)
	st := waitStatus(t, a.h, "two clusters on each host", func(st natsfleet.FleetStatus) bool {
		o := ownedBy(st)
		return len(o["a"]) == 2 && len(o["b"]) == 2 && allReady(s, 4)
	})
	onB := ownedBy(st)["b"][0]
	before := s.Stats()
	if err := a.h.SoftRestart(testCtx(t), onB); err != nil {
		t.Fatalf("SoftRestart(%d) from a for a cluster of b: %v", onB, err)
	}
	after := s.Stats()
	if after.Resumes != before.Resumes+1 || after.Identifies != before.Identifies {
		t.Errorf("soft restart of cluster %d: RESUMEs %d -> %d, IDENTIFYs %d -> %d; want one RESUME and no IDENTIFY",
			onB, before.Resumes, after.Resumes, before.Identifies, after.Identifies)
	}
	if err := a.h.SoftRestart(testCtx(t), 99); err == nil {
		t.Error("SoftRestart of a cluster that does not exist: no error")
	}
	// The fleet's view, from either host, is healthy.
	st = waitStatus(t, a.h, "a healthy fleet", func(st natsfleet.FleetStatus) bool { ok, _ := st.Healthy(); return ok })
	healthy, why := st.Healthy()
	if !healthy || st.Leader == "" || len(st.Hosts) != 2 || st.Shards != 4 {
		t.Errorf("status: healthy %v (%s), leader %q, %d hosts, %d shards", healthy, why, st.Leader, len(st.Hosts), st.Shards)
	}
}

// hostLogger is quiet unless NATSFLEET_LOG is set.
func hostLogger(id string) *slog.Logger {
	if os.Getenv("NATSFLEET_LOG") == "" {
		return quiet
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("test_host", id)
}

// checkpointEvery is the hosts' checkpoint interval in these tests.
const checkpointEvery = 100 * time.Millisecond

// A host whose NATS connection closes without releasing anything loses
// its clusters after the lease TTL; the other host takes them over by
// RESUME from the last checkpoints: no IDENTIFY, nothing lost.
func TestHostClosedAbruptlyIsTakenOverByResume(t *testing.T) {
	t.Parallel()
	s := discordtest.NewServer(discordtest.WithGuilds(16), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(5*time.Millisecond))
	defer s.Close()
	fleet := newPrefix()
	d := newDeliveries()
	ttl := hostTTL
	a := startHost(t, s, fleet, "a", d, ttl)
	b := startHost(t, s, fleet, "b", d, ttl)
	st := waitStatus(t, b.h, "two clusters on each host, checkpointed", func(st natsfleet.FleetStatus) bool {
		o := ownedBy(st)
		for _, c := range st.Clusters {
			if c.CheckpointAge < 0 {
				return false
			}
		}
		return len(o["a"]) == 2 && len(o["b"]) == 2 && allReady(s, 4)
	})
	fromA := ownedBy(st)["a"]
	before := s.Stats()
	started := time.Now()
	sd := startSender(s, 16, "kill")
	eventually(t, "a delivering traffic", func() bool { return d.lastOn("a").After(started) })
	cut := time.Now()
	a.nc.Close()
	after := waitStatus(t, b.h, "a's clusters resumed on b", func(st natsfleet.FleetStatus) bool {
		return len(ownedBy(st)["b"]) == 4 && allReady(s, 4)
	})
	recovered := time.Since(cut)
	sent := sd.finish()
	lost, dup := d.check(t, sent, 10*time.Second)
	end := s.Stats()
	t.Logf("takeover: recovered in %v (TTL %v); %d messages, %d lost, %d delivered twice; %d IDENTIFYs, %d RESUMEs",
		recovered, ttl, len(sent), lost, dup, end.Identifies-before.Identifies, end.Resumes-before.Resumes)
	if lost != 0 {
		t.Errorf("%d of %d messages lost in the takeover", lost, len(sent))
	}
	if n := end.Identifies - before.Identifies; n != 0 {
		t.Errorf("%d IDENTIFYs in the takeover, want 0 (RESUME from the checkpoints)", n)
	}
	if n := end.Resumes - before.Resumes; n < len(fromA) {
		t.Errorf("%d RESUMEs, want at least %d (a's shards)", n, len(fromA))
	}
	if len(end.Violations) != 0 {
		t.Errorf("violations: %v", end.Violations)
	}
	for _, c := range after.Clusters {
		if slices.Contains(fromA, c.ID) && c.Epoch < 2 {
			t.Errorf("cluster %d of a at epoch %d on b, want a new epoch", c.ID, c.Epoch)
		}
	}
	if last := d.lastOn("a"); last.After(cut.Add(ttl)) {
		t.Errorf("a delivered an event %v after its connection was cut, past the lease TTL (%v)", last.Sub(cut), ttl)
	}
}

// eventually polls cond until it holds (what is asserted is cond itself).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A host whose NATS connection is cut for longer than the lease TTL stops
// delivering once its checkpoints have failed for an interval (at the
// latest two intervals after the last one written was taken), well
// before its lease's deadline and the other host's resuming its
// clusters from that checkpoint: the events delivered again are at most
// two intervals of the cut host's share of the traffic (the fleet's rate
// times one interval, with half the shards on each host). When the
// connection comes back it serves none of them until the leader gives it
// clusters again, which come by hand-over. Nothing is lost and nothing
// identifies throughout.
func TestHostCutOffLongerThanTheTTLIsFencedAndRejoins(t *testing.T) {
	t.Parallel()
	s := discordtest.NewServer(discordtest.WithGuilds(16), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(5*time.Millisecond))
	defer s.Close()
	fleet := newPrefix()
	d := newDeliveries()
	ttl := hostTTL
	proxy, err := multihost.NewCutter(strings.TrimPrefix(srv.ClientURL(), "nats://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	ctx := testCtx(t)
	ncA, err := natsfleet.Connect(ctx, "nats://"+proxy.Addr(), append(srv.ConnectInfo().Options(), natsfleet.Logger(quiet))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ncA.Close)
	startHostOn(t, ncA, s, fleet, "a", d, ttl)
	b := startHost(t, s, fleet, "b", d, ttl)
	balanced := func(st natsfleet.FleetStatus) bool {
		o := ownedBy(st)
		for _, c := range st.Clusters {
			if c.CheckpointAge < 0 {
				return false
			}
		}
		return len(o["a"]) == 2 && len(o["b"]) == 2 && allReady(s, 4)
	}
	st := waitStatus(t, b.h, "two clusters on each host", balanced)
	fromA := ownedBy(st)["a"]
	before := s.Stats()
	started := time.Now()
	sd := startSender(s, 16, "cut")
	eventually(t, "a delivering traffic", func() bool { return d.lastOn("a").After(started) })

	cut := time.Now()
	proxy.Cut()
	waitStatus(t, b.h, "a's clusters resumed on b", func(st natsfleet.FleetStatus) bool {
		return len(ownedBy(st)["b"]) == 4 && allReady(s, 4)
	})
	if last := d.lastOn("a"); last.After(cut.Add(ttl)) {
		t.Errorf("a delivered an event %v after it was cut off, past the lease TTL (%v)", last.Sub(cut), ttl)
	}
	cutFor := time.Since(cut)

	proxy.Restore()
	back := waitStatus(t, b.h, "a back with two clusters", balanced)
	sent := sd.finish()
	lost, dup := d.check(t, sent, 10*time.Second)
	end := s.Stats()
	// The repeats of the events of a's shards come from b resuming a's
	// checkpoints (the clusters that come back to a come by exact
	// hand-over). a delivers for at most two checkpoint intervals after
	// the last checkpoint it wrote was taken, at most
	// senderRate*guildsOnA/16 messages a second; one event per shard may
	// have passed the check just before.
	toA, guildsOnA := sd.to(sent, fromA, 4, 16)
	repeatedA := d.repeats(toA)
	bound := int(2*checkpointEvery.Seconds()*senderRate*float64(guildsOnA)/16) + len(fromA)
	t.Logf("cut for %v (TTL %v): %d messages, %d lost, %d delivered twice (%d of a's %d messages, bound %d); %d IDENTIFYs, %d RESUMEs",
		cutFor, ttl, len(sent), lost, dup, repeatedA, len(toA), bound, end.Identifies-before.Identifies, end.Resumes-before.Resumes)
	if lost != 0 {
		t.Errorf("%d of %d messages lost", lost, len(sent))
	}
	if repeatedA > bound {
		t.Errorf("%d of a's messages delivered again after the cut, want at most %d (two checkpoint intervals of a's traffic)", repeatedA, bound)
	}
	if n := end.Identifies - before.Identifies; n != 0 {
		t.Errorf("%d IDENTIFYs, want 0", n)
	}
	if len(end.Violations) != 0 {
		t.Errorf("violations: %v", end.Violations)
	}
	for _, c := range back.Clusters {
		if c.Owner == "a" && c.Epoch < 2 {
			t.Errorf("cluster %d back on a at epoch %d: a kept a lease it lost", c.ID, c.Epoch)
		}
	}
	if len(fromA) != 2 {
		t.Errorf("a ran %v before the cut, want two clusters", fromA)
	}
}

func TestNewHostSaysWhatToChange(t *testing.T) {
	t.Parallel()
	nc := connect(t)
	ctx := testCtx(t)
	good := func() natsfleet.HostConfig {
		return natsfleet.HostConfig{Fleet: newPrefix(), ID: "h1", Runtime: runtime.Config{Token: "t", Bot: newDeliveries().botOn("h1")}}
	}
	if _, err := natsfleet.NewHost(ctx, nc, good()); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	cases := []struct {
		edit func(*natsfleet.HostConfig)
		want string
	}{
		{func(c *natsfleet.HostConfig) { c.Fleet = "" }, "HostConfig.Fleet is empty"},
		{func(c *natsfleet.HostConfig) { c.ID = "a.b" }, "letters, digits"},
		{func(c *natsfleet.HostConfig) { c.Clusters = []int{-1} }, "cluster IDs start at 0"},
		{func(c *natsfleet.HostConfig) { c.LeaseTTL, c.RenewInterval = time.Second, time.Second }, "renew at least twice"},
		{func(c *natsfleet.HostConfig) { c.Runtime.TotalShards = 8 }, "plans its shards itself"},
		{func(c *natsfleet.HostConfig) { c.Runtime.Token = "" }, "Token and Bot"},
		{func(c *natsfleet.HostConfig) { c.RESTProxy = "ftp://x" }, "HostConfig.RESTProxy"},
	}
	for i, tc := range cases {
		cfg := good()
		tc.edit(&cfg)
		if _, err := natsfleet.NewHost(ctx, nc, cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("case %d: %v, want an error containing %q", i, err, tc.want)
		}
	}
}

// hostTTL is the hosts' lease TTL in these tests: short, yet long enough
// for the key-value writes of a renewal on a machine loaded with other
// tests under the race detector (at 1.5 s they took longer, now and then,
// and clusters moved without a drain or a cut).
const hostTTL = 3 * time.Second
