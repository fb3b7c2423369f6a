package natsfleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gofleet/fleet/shardgroup"
)

// ErrLeaseLost means a host wrote, or was about to deliver, for a cluster
// whose lease it no longer holds: another host may own the cluster now.
var ErrLeaseLost = errors.New("natsfleet: the cluster's lease is lost: another host may own it")

// fencedRecord is a session as a host writes it: with the epoch of the
// cluster lease it held, so that an old owner never overwrites a newer
// owner's session. KVSessionStore.Records reads it as a SessionRecord.
type fencedRecord struct {
	SessionRecord
	Cluster int    `json:"cluster"`
	Epoch   uint64 `json:"epoch"`
}

// clusterSessions is the runtime.SessionStore of one cluster on the host
// holding its lease, in the fleet's sessions bucket: Load returns the
// sessions of the cluster's shards, Save writes them only while the
// lease is valid, by compare-and-set, and never over a record of a later
// epoch.
//
// It also tells whether the cluster's checkpoints keep up (fresh): the
// host delivers the cluster's events only while they do, so that the
// events a next owner delivers again after resuming the last checkpoint
// stay within about two checkpoint intervals. And it keeps the sessions
// of the last Save that was not written (unsaved), so that a hand-over
// whose final write failed can write them once the lease is back.
type clusterSessions struct {
	kv       jetstream.KeyValue
	owner    string
	cluster  int
	shards   []int
	lease    *heldLease
	interval time.Duration // the checkpoint interval; <= 0: checkpoints off, always fresh
	now      func() time.Time

	mu      sync.Mutex           // guards revs, unsaved
	revs    map[int]uint64       // by shard, the revision this store wrote last
	unsaved []shardgroup.Session // the sessions of the last Save, until all are written

	// When the sessions of the last complete Save were taken, and when
	// the oldest Save begun since then was (unix ns; 0: none).
	savedAt, tryingSince atomic.Int64
}

func newClusterSessions(kv jetstream.KeyValue, owner string, c *clusterRun, interval time.Duration) *clusterSessions {
	return &clusterSessions{kv: kv, owner: owner, cluster: c.ID, shards: slices.Clone(c.Shards), lease: c.Lease, interval: interval,
		now: time.Now, revs: map[int]uint64{}}
}

func sessionKey(shard int) string { return "shard." + strconv.Itoa(shard) }

// Save writes the sessions of the cluster's shards (others are ignored).
func (s *clusterSessions) Save(ctx context.Context, sessions []shardgroup.Session) error {
	var mine []shardgroup.Session
	var taken time.Time
	for _, sess := range sessions {
		if !slices.Contains(s.shards, sess.ShardID) {
			continue
		}
		mine = append(mine, sess)
		if taken.IsZero() || sess.SavedAt.Before(taken) {
			taken = sess.SavedAt
		}
	}
	if len(mine) == 0 {
		return nil
	}
	if taken.IsZero() {
		taken = s.now()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tryingSince.CompareAndSwap(0, taken.UnixNano())
	s.unsaved = mine
	return s.writeUnsavedLocked(ctx, taken)
}

// writeUnsavedLocked writes the unsaved sessions, taken at taken, and
// marks the checkpoints fresh once all are written.
func (s *clusterSessions) writeUnsavedLocked(ctx context.Context, taken time.Time) error {
	for len(s.unsaved) > 0 {
		if err := s.saveLocked(ctx, s.unsaved[0]); err != nil {
			return err
		}
		s.unsaved = s.unsaved[1:]
	}
	s.unsaved = nil
	for {
		old := s.savedAt.Load()
		if old >= taken.UnixNano() || s.savedAt.CompareAndSwap(old, taken.UnixNano()) {
			break
		}
	}
	s.tryingSince.Store(0)
	return nil
}

// pending reports whether the sessions of the last Save are not all
// written.
func (s *clusterSessions) pending() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.unsaved) > 0
}

// flush writes the sessions of the last Save that are not written yet
// (while the lease is valid, as Save).
func (s *clusterSessions) flush(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.unsaved) == 0 {
		return nil
	}
	taken := s.unsaved[0].SavedAt
	for _, sess := range s.unsaved {
		if sess.SavedAt.Before(taken) {
			taken = sess.SavedAt
		}
	}
	return s.writeUnsavedLocked(ctx, taken)
}

// fresh reports whether the cluster's checkpoints keep up at now: no
// Save has been failing (or running) for an interval or more, and the
// last one written was taken less than two intervals ago (which also
// catches checkpoints that stopped being attempted). Before the first
// Save, it is fresh.
func (s *clusterSessions) fresh(now time.Time) bool {
	if s.interval <= 0 {
		return true
	}
	n := now.UnixNano()
	if t := s.tryingSince.Load(); t != 0 && n-t >= int64(s.interval) {
		return false
	}
	t := s.savedAt.Load()
	return t == 0 || n-t < int64(2*s.interval)
}

func (s *clusterSessions) saveLocked(ctx context.Context, sess shardgroup.Session) error {
	key := sessionKey(sess.ShardID)
	data, err := json.Marshal(fencedRecord{SessionRecord: SessionRecord{Session: sess, Owner: s.owner, WrittenAt: s.now()},
		Cluster: s.cluster, Epoch: s.lease.epoch})
	if err != nil {
		return err
	}
	for range 3 {
		if !s.lease.valid(s.now()) {
			return fmt.Errorf("%w: cluster %d: session of shard %d not written", ErrLeaseLost, s.cluster, sess.ShardID)
		}
		rev, known := s.revs[sess.ShardID]
		if !known {
			e, err := s.kv.Get(ctx, key)
			switch {
			case errors.Is(err, jetstream.ErrKeyNotFound):
			case err != nil:
				return fmt.Errorf("natsfleet: cluster %d: save session of shard %d: %w", s.cluster, sess.ShardID, err)
			default:
				var old fencedRecord
				if json.Unmarshal(e.Value(), &old) == nil && old.Epoch > s.lease.epoch {
					return fmt.Errorf("%w: cluster %d: shard %d's session was written by %s at epoch %d (this host's is %d)",
						ErrLeaseLost, s.cluster, sess.ShardID, old.Owner, old.Epoch, s.lease.epoch)
				}
				rev = e.Revision()
			}
		}
		var next uint64
		if rev == 0 {
			next, err = s.kv.Create(ctx, key, data)
		} else {
			next, err = s.kv.Update(ctx, key, data, rev)
		}
		if err == nil {
			s.revs[sess.ShardID] = next
			return nil
		}
		if !isConflict(err) {
			return fmt.Errorf("natsfleet: cluster %d: save session of shard %d: %w", s.cluster, sess.ShardID, err)
		}
		delete(s.revs, sess.ShardID) // read it again: another writer came between
	}
	return fmt.Errorf("%w: cluster %d: shard %d's session: %q", ErrConflict, s.cluster, sess.ShardID, key)
}

// Load returns the stored sessions of the cluster's shards.
func (s *clusterSessions) Load(ctx context.Context) ([]shardgroup.Session, error) {
	var out []shardgroup.Session
	for _, shard := range s.shards {
		e, err := s.kv.Get(ctx, sessionKey(shard))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("natsfleet: cluster %d: load session of shard %d: %w", s.cluster, shard, err)
		}
		var r fencedRecord
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			return nil, fmt.Errorf("natsfleet: cluster %d: session of shard %d: %w", s.cluster, shard, err)
		}
		out = append(out, r.Session)
	}
	return out, nil
}
