package natsfleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
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
type clusterSessions struct {
	kv      jetstream.KeyValue
	owner   string
	cluster int
	shards  []int
	lease   *heldLease
	now     func() time.Time

	mu   sync.Mutex     // guards revs
	revs map[int]uint64 // by shard, the revision this store wrote last
}

func newClusterSessions(kv jetstream.KeyValue, owner string, c *clusterRun) *clusterSessions {
	return &clusterSessions{kv: kv, owner: owner, cluster: c.ID, shards: slices.Clone(c.Shards), lease: c.Lease, now: time.Now, revs: map[int]uint64{}}
}

func sessionKey(shard int) string { return "shard." + strconv.Itoa(shard) }

// Save writes the sessions of the cluster's shards (others are ignored).
func (s *clusterSessions) Save(ctx context.Context, sessions []shardgroup.Session) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sess := range sessions {
		if !slices.Contains(s.shards, sess.ShardID) {
			continue
		}
		if err := s.saveLocked(ctx, sess); err != nil {
			return err
		}
	}
	return nil
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
