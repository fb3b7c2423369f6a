package multihost

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gofleet/fleet/discordtest"
)

func seenSubject(prefix string) string   { return prefix + ".multihost.seen" }
func resendSubject(prefix string) string { return prefix + ".multihost.resend" }

// Reporter publishes, from a host, each message its listeners saw. Core
// NATS delivers at most once: a report written to a connection whose
// server just died is gone, and so is one sent while the Tally's
// connection moves to another server. So the Reporter numbers its
// reports and sends again those of the last resend window when its
// connection comes back or the Tally's does; the Tally counts each
// number once.
type Reporter struct {
	nc      *nats.Conn
	subject string
	host    string

	mu     sync.Mutex // guards seq, recent
	seq    uint64
	recent []sentReport // the reports of the last resendWindow, oldest first
}

type sentReport struct {
	at   time.Time
	data []byte
}

const resendWindow = 3 * time.Second

// NewReporter returns a Reporter for host on the fleet prefix. It takes
// nc's reconnect handler.
func NewReporter(nc *nats.Conn, prefix, host string) (*Reporter, error) {
	r := &Reporter{nc: nc, subject: seenSubject(prefix), host: host}
	nc.SetReconnectHandler(func(*nats.Conn) { r.resend() })
	if _, err := nc.Subscribe(resendSubject(prefix), func(*nats.Msg) { r.resend() }); err != nil {
		return nil, err
	}
	return r, nc.Flush()
}

// Seen reports a message seen on shard now. A report made while the
// connection is down goes out when it is back, with the time of the
// delivery.
func (r *Reporter) Seen(shard int, message uint64) {
	now := time.Now()
	r.mu.Lock()
	r.seq++
	b := make([]byte, 0, 96)
	b = append(b, r.host...)
	b = append(b, ' ')
	b = strconv.AppendUint(b, r.seq, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(shard), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, message, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, now.UnixNano(), 10)
	i := 0
	for i < len(r.recent) && now.Sub(r.recent[i].at) > resendWindow {
		i++
	}
	r.recent = append(r.recent[i:], sentReport{at: now, data: b})
	r.mu.Unlock()
	_ = r.nc.Publish(r.subject, b)
}

func (r *Reporter) resend() {
	r.mu.Lock()
	recent := slices.Clone(r.recent)
	r.mu.Unlock()
	for _, s := range recent {
		_ = r.nc.Publish(r.subject, s.data)
	}
}

// Tally counts the reports of every host of a fleet, in the parent.
type Tally struct {
	sub   *nats.Subscription
	grace time.Duration
	wg    sync.WaitGroup
	stop  context.CancelFunc

	mu       sync.Mutex                 // guards everything below
	numbers  map[string]map[uint64]bool // host -> report numbers counted
	seen     map[uint64]int
	byHost   map[string]int64
	last     map[int]map[string]time.Time // shard -> host -> its last report
	changed  chan struct{}                // closed at the next report
	clusters map[int]int                  // shard -> cluster, from the fleet's plan
	leases   map[int][]leaseState         // by cluster, every change of owner in order
	twice    map[int]string               // shards owned twice: the first sign of it
}

type leaseState struct {
	owner string
	since time.Time
}

// NewTally subscribes to the reports on prefix. A delivery by a host of a
// shard whose cluster's lease had been another's (or nobody's) for longer
// than grace at the time of the delivery counts the shard as owned twice,
// once [Tally.WatchLeases] runs. (Times of deliveries and of lease changes
// are compared: every process runs on this machine's clock.)
func NewTally(nc *nats.Conn, prefix string, grace time.Duration) (*Tally, error) {
	t := &Tally{grace: grace, seen: map[uint64]int{}, byHost: map[string]int64{}, last: map[int]map[string]time.Time{}, changed: make(chan struct{}),
		clusters: map[int]int{}, leases: map[int][]leaseState{}, twice: map[int]string{}, numbers: map[string]map[uint64]bool{}, stop: func() {}}
	sub, err := nc.Subscribe(seenSubject(prefix), t.report)
	if err != nil {
		return nil, err
	}
	// Back from a reconnect, ask the hosts for what may have been missed.
	nc.SetReconnectHandler(func(nc *nats.Conn) { _ = nc.Publish(resendSubject(prefix), nil) })
	if err := sub.SetPendingLimits(-1, 256<<20); err != nil {
		return nil, err
	}
	t.sub = sub
	return t, nc.Flush()
}

func (t *Tally) report(m *nats.Msg) {
	f := strings.Fields(string(m.Data))
	if len(f) != 5 {
		return
	}
	num, err0 := strconv.ParseUint(f[1], 10, 64)
	shard, err1 := strconv.Atoi(f[2])
	id, err2 := strconv.ParseUint(f[3], 10, 64)
	ns, err3 := strconv.ParseInt(f[4], 10, 64)
	if err0 != nil || err1 != nil || err2 != nil || err3 != nil {
		return
	}
	host, at := f[0], time.Unix(0, ns)
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.numbers[host] == nil {
		t.numbers[host] = map[uint64]bool{}
	}
	if t.numbers[host][num] {
		return // sent again after a reconnect
	}
	t.numbers[host][num] = true
	t.seen[id]++
	t.byHost[host]++
	if t.last[shard] == nil {
		t.last[shard] = map[string]time.Time{}
	}
	t.last[shard][host] = now
	if c, ok := t.clusters[shard]; ok {
		if !ownedNear(t.leases[c], host, at, t.grace) {
			if _, ok := t.twice[shard]; !ok {
				t.twice[shard] = fmt.Sprintf("%s delivered it at %s without cluster %d's lease (%s)", host, at.Format("15:04:05.000"), c, leaseHistory(t.leases[c]))
			}
		}
	}
	close(t.changed)
	t.changed = make(chan struct{})
}

func leaseHistory(h []leaseState) string {
	var b strings.Builder
	for i, l := range h {
		if i > 0 {
			b.WriteString(", ")
		}
		owner := l.owner
		if owner == "" {
			owner = "nobody"
		}
		fmt.Fprintf(&b, "%s from %s", owner, l.since.Format("15:04:05.000"))
	}
	return b.String()
}

// ownedNear reports whether host held the lease (as the watch saw its
// changes) at some time within grace of at, or the watch knew nothing
// of it by then.
func ownedNear(history []leaseState, host string, at time.Time, grace time.Duration) bool {
	from, to := at.Add(-grace), at.Add(grace)
	known := false
	for i, l := range history {
		end := time.Time{} // this state lasts until the next one's since
		if i+1 < len(history) {
			end = history[i+1].since
		}
		if l.since.After(to) || (!end.IsZero() && end.Before(from)) {
			continue
		}
		known = true
		if l.owner == host {
			return true
		}
	}
	return !known
}

// WatchLeases follows the fleet's hosts bucket (<prefix>_hosts): its plan
// (which shards each cluster has) and its lease.<cluster> keys (their
// owner). It returns once the watch runs; Close stops it.
func (t *Tally) WatchLeases(ctx context.Context, nc *nats.Conn, prefix string) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	bucket := strings.NewReplacer(".", "_", "*", "_", ">", "_").Replace(prefix) + "_hosts"
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return fmt.Errorf("the fleet's hosts bucket %s: %w", bucket, err)
	}
	wctx, cancel := context.WithCancel(context.Background())
	w, err := kv.WatchAll(wctx)
	if err != nil {
		cancel()
		return err
	}
	t.stop = cancel
	t.wg.Go(func() {
		defer func() { _ = w.Stop() }()
		for {
			select {
			case <-wctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e != nil {
					t.learn(e)
				}
			}
		}
	})
	return nil
}

func (t *Tally) learn(e jetstream.KeyValueEntry) {
	now := e.Created() // when the server stored it: the watch may see it later
	t.mu.Lock()
	defer t.mu.Unlock()
	switch key := e.Key(); {
	case key == "plan":
		var p struct {
			Clusters [][]int `json:"clusters"`
		}
		if json.Unmarshal(e.Value(), &p) == nil {
			for c, shards := range p.Clusters {
				for _, s := range shards {
					t.clusters[s] = c
				}
			}
		}
	case strings.HasPrefix(key, "lease."):
		c, err := strconv.Atoi(strings.TrimPrefix(key, "lease."))
		if err != nil {
			return
		}
		var l struct {
			Owner string `json:"owner"`
		}
		if e.Operation() == jetstream.KeyValuePut {
			_ = json.Unmarshal(e.Value(), &l)
		}
		if h := t.leases[c]; len(h) == 0 || h[len(h)-1].owner != l.Owner {
			t.leases[c] = append(h, leaseState{owner: l.Owner, since: now})
		}
	}
}

// Owners returns each cluster's lease owner as last seen ("" released).
func (t *Tally) Owners() map[int]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[int]string, len(t.leases))
	for c, h := range t.leases {
		out[c] = h[len(h)-1].owner
	}
	return out
}

// ClusterOf returns the cluster of shard in the fleet's plan.
func (t *Tally) ClusterOf(shard int) (int, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, ok := t.clusters[shard]
	return c, ok
}

// SampleSimulator adds the shards that s sees READY in more than one
// live session at this moment to the shards owned twice.
func (t *Tally) SampleSimulator(s *discordtest.Server) {
	st := s.Stats()
	t.mu.Lock()
	defer t.mu.Unlock()
	for shard, n := range st.ReadyShards {
		if _, ok := t.twice[shard]; n > 1 && !ok {
			t.twice[shard] = fmt.Sprintf("the simulator saw %d READY sessions at %s", n, time.Now().Format("15:04:05.000"))
		}
	}
}

// OwnedTwice returns how many shards were delivered by a host without
// their cluster's lease, or READY twice in the simulator when sampled.
func (t *Tally) OwnedTwice() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.twice)
}

// OwnedTwiceWhy returns, by shard owned twice, the first sign of it.
func (t *Tally) OwnedTwiceWhy() map[int]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return maps.Clone(t.twice)
}

// AwaitDelivered waits until each of shards has been delivered by a host
// other than not since since (a report received after it), and returns
// when the last of them was; it fails when ctx ends, naming the shards
// still waiting.
func (t *Tally) AwaitDelivered(ctx context.Context, shards []int, not string, since time.Time) (time.Time, error) {
	found := map[int]time.Time{} // shard -> when this wait first saw it delivered elsewhere
	var latest time.Time
	for {
		t.mu.Lock()
		var waiting []int
		for _, s := range shards {
			if _, ok := found[s]; ok {
				continue
			}
			for h, at := range t.last[s] {
				if h != not && at.After(since) {
					found[s] = at
					if at.After(latest) {
						latest = at
					}
					break
				}
			}
			if _, ok := found[s]; !ok {
				waiting = append(waiting, s)
			}
		}
		changed := t.changed
		t.mu.Unlock()
		if len(waiting) == 0 {
			return latest, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("shards %v not delivered by another host than %s: %w", waiting, not, context.Cause(ctx))
		}
	}
}

// Count returns, of ids, how many no host reported (lost) and how many
// extra reports the others got (duplicates).
func (t *Tally) Count(ids []uint64) (lost, dup int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range ids {
		switch n := t.seen[id]; {
		case n == 0:
			lost++
		case n > 1:
			dup += int64(n - 1)
		}
	}
	return lost, dup
}

// ByHost returns how many reports each host sent.
func (t *Tally) ByHost() map[string]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]int64, len(t.byHost))
	for h, n := range t.byHost {
		out[h] = n
	}
	return out
}

// Await waits until every one of ids has been reported, failing when ctx
// ends with how many are still missing.
func (t *Tally) Await(ctx context.Context, ids []uint64) error {
	missing := ids
	for {
		t.mu.Lock()
		still := missing[:0:0]
		for _, id := range missing {
			if t.seen[id] == 0 {
				still = append(still, id)
			}
		}
		changed := t.changed
		t.mu.Unlock()
		missing = still
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("%d of %d events not reported by any host: %w", len(missing), len(ids), context.Cause(ctx))
		}
	}
}

// Close stops the subscription and the lease watch.
func (t *Tally) Close() {
	_ = t.sub.Unsubscribe()
	t.stop()
	t.wg.Wait()
}
