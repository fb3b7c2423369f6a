package natsfleet

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// A reshard's new child starts in standby (runtime.ChildSpec.Standby):
// its shards identify at the new shard count while the old children
// serve, but it delivers no event (runtime.Member.Delivering), leaves its
// cluster's bus address to the old child that serves it, and saves no
// session (they would replace the old children's checkpoints, kept under
// the same shard IDs). The parent's "deliver" request ends the standby.

// standby is a child's standby state, and the transport of its bus: it
// holds back the binding of the cluster's address until the switch, and
// passes everything else to the fleet's transport.
type standby struct {
	tr      *Transport
	addr    bus.Address // the cluster's
	waiting atomic.Bool // true until the switch

	mu      sync.Mutex   // guards pending
	pending bus.Receiver // the cluster's endpoint, bound at the switch
}

// childTransport is the transport of a child's bus. A child that replaces
// another (a start, a soft restart) takes its cluster's address over from
// it at once; one in standby takes it over at the switch, and is returned
// with its standby state (nil otherwise).
func childTransport(tr *Transport, spec childSpec) (bus.Transport, *standby) {
	addr := bus.Cluster(spec.Cluster)
	if !spec.Standby {
		tr.TakeOver(addr)()
		return tr, nil
	}
	s := &standby{tr: tr, addr: addr}
	s.waiting.Store(true)
	return s, s
}

func (s *standby) Bind(addr bus.Address, r bus.Receiver) error {
	if addr == s.addr {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.waiting.Load() {
			if s.pending != nil {
				return fmt.Errorf("%w: %s", bus.ErrAddressInUse, addr)
			}
			s.pending = r
			return nil
		}
		s.tr.TakeOver(addr)() // after the switch, from whoever serves it
	}
	return s.tr.Bind(addr, r)
}

func (s *standby) Unbind(addr bus.Address, r bus.Receiver) {
	if addr == s.addr {
		s.mu.Lock()
		if s.pending == r {
			s.pending = nil
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
	s.tr.Unbind(addr, r)
}

func (s *standby) Deliver(ctx context.Context, m bus.Message) error { return s.tr.Deliver(ctx, m) }

func (s *standby) Members(group bus.Address) []bus.Address { return s.tr.Members(group) }

// delivering is the member's Delivering: false until the switch.
func (s *standby) delivering(int) bool { return !s.waiting.Load() }

// end ends the standby: events are delivered, sessions saved, and the
// cluster's address taken over from the child serving it. It does nothing
// for a child that is not in standby, or no more.
func (s *standby) end() error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.waiting.Swap(false) {
		return nil
	}
	if s.pending == nil {
		return nil
	}
	s.tr.TakeOver(s.addr)()
	if err := s.tr.Bind(s.addr, s.pending); err != nil {
		return fmt.Errorf("take %s over: %w", s.addr, err)
	}
	return nil
}

// store is the child's session store: kv, whose saves are dropped while
// the child is in standby.
func (s *standby) store(kv runtime.SessionStore) runtime.SessionStore {
	if s == nil {
		return kv
	}
	return standbyStore{SessionStore: kv, s: s}
}

type standbyStore struct {
	runtime.SessionStore
	s *standby
}

func (st standbyStore) Save(ctx context.Context, sessions []shardgroup.Session) error {
	if st.s.waiting.Load() {
		return nil
	}
	return st.SessionStore.Save(ctx, sessions)
}

// Deliver ends the standby of a child started with ChildSpec.Standby.
func (ch *childProc) Deliver(ctx context.Context) error {
	_, err := ch.request(ctx, control{Op: "deliver"})
	return err
}

// Sync returns once the child's shards have delivered what the gateway
// sent them before the call (runtime.Runtime.Sync).
func (ch *childProc) Sync(ctx context.Context, last bool) error {
	c := control{Op: "sync", Last: last}
	if d, ok := ctx.Deadline(); ok {
		c.Wait = time.Until(d)
	}
	_, err := ch.request(ctx, c)
	return err
}

// sync is the child's side of Sync, bounded by what the parent waits.
// With last, the child delivers no event after it.
func (c *child) sync(wait time.Duration, last bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), cmp.Or(max(wait, 0), parentGoneGrace))
	defer cancel()
	err := c.rt.Sync(ctx)
	if last {
		c.last.Store(true)
	}
	return err
}

// delivering is the child's Member.Delivering: not in standby, not after
// its last sync.
func (c *child) delivering(cluster int) bool {
	return !c.last.Load() && (c.standby == nil || c.standby.delivering(cluster))
}

// Resharded removes the stored sessions of another shard count than
// shards: the old children's, which nothing resumes.
func (pl *pool) Resharded(ctx context.Context, shards int) error {
	return pl.sessions.keepCount(ctx, shards)
}

// shardCount is the shard count a child joins at.
func (pl *pool) shardCount(spec runtime.ChildSpec) int { return cmp.Or(spec.ShardCount, pl.f.Shards) }

// keepCount deletes the sessions stored for another shard count than
// shards. A session written again since it was read is kept.
func (s *KVSessionStore) keepCount(ctx context.Context, shards int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := s.kv.Watch(ctx, "shard.*", jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("natsfleet: sessions of other shard counts: %w", err)
	}
	defer w.Stop()
	var errs []error
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok || e == nil {
				return errors.Join(errs...)
			}
			var r SessionRecord
			if err := json.Unmarshal(e.Value(), &r); err != nil || r.ShardCount == shards {
				continue
			}
			if err := s.kv.Delete(ctx, e.Key(), jetstream.LastRevision(e.Revision())); err != nil && !isConflict(err) {
				errs = append(errs, fmt.Errorf("natsfleet: remove %s: %w", e.Key(), err))
			}
		case <-ctx.Done():
			return fmt.Errorf("natsfleet: sessions of other shard counts: %w", ctx.Err())
		}
	}
}
