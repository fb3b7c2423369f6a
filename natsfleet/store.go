package natsfleet

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gofleet/fleet/services"
	"github.com/gofleet/fleet/shardgroup"
)

// ErrConflict means an atomic update found the value changed by another
// writer more times than it was willing to retry.
var ErrConflict = errors.New("natsfleet: concurrent updates: too many conflicts")

// KVStore is the central store's data in the JetStream key-value bucket
// <prefix>_store, shared by every process of the fleet. Serve it on the
// bus with services.NewStoreOn(kv).Spec(), so that services.StoreGet and
// the other helpers reach it; use [KVStore.Update] and
// [KVStore.Increment] for changes that must not lose a concurrent write.
type KVStore struct {
	kv jetstream.KeyValue
	// stripes serialize this process's updates of keys that hash alike,
	// so that concurrent updates of one key contend across processes
	// only, not within one (a compare-and-set retried by every writer at
	// once costs rounds in the square of their number).
	stripes [updateStripes]chan struct{}
}

const updateStripes = 32

// NewKVStore creates or opens the fleet's store bucket, kept on disk.
func NewKVStore(ctx context.Context, nc *nats.Conn, prefix string) (*KVStore, error) {
	if prefix == "" {
		prefix = "fleet"
	}
	kv, err := keyValue(ctx, nc, prefix, "store", jetstream.FileStorage)
	if err != nil {
		return nil, err
	}
	return newKVStore(kv), nil
}

func newKVStore(kv jetstream.KeyValue) *KVStore {
	s := &KVStore{kv: kv}
	for i := range s.stripes {
		s.stripes[i] = make(chan struct{}, 1)
	}
	return s
}

// lockKey takes the stripe of key until ctx ends; the caller calls the
// returned func to give it back.
func (s *KVStore) lockKey(ctx context.Context, key string) (func(), error) {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	stripe := s.stripes[h.Sum32()%updateStripes]
	select {
	case stripe <- struct{}{}:
		return func() { <-stripe }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

var _ services.StoreBackend = (*KVStore)(nil)

// kvKey maps a store key to a KV key: as it is when NATS allows it,
// otherwise "_b64." and its base64url encoding.
func kvKey(key string) string {
	ok := key != "" && !strings.HasPrefix(key, ".") && !strings.HasSuffix(key, ".") && !strings.Contains(key, "..") && !strings.HasPrefix(key, "_b64.")
	for i := 0; ok && i < len(key); i++ {
		c := key[i]
		ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-/_=.", c) >= 0
	}
	if ok {
		return key
	}
	return "_b64." + base64.RawURLEncoding.EncodeToString([]byte(key))
}

func storeKey(k string) string {
	if enc, ok := strings.CutPrefix(k, "_b64."); ok {
		if b, err := base64.RawURLEncoding.DecodeString(enc); err == nil {
			return string(b)
		}
	}
	return k
}

// Get returns the value of key and whether there is one.
func (s *KVStore) Get(ctx context.Context, key string) (json.RawMessage, bool, error) {
	e, err := s.kv.Get(ctx, kvKey(key))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("natsfleet: store get %q: %w", key, err)
	}
	return json.RawMessage(e.Value()), true, nil
}

// Set stores value under key.
func (s *KVStore) Set(ctx context.Context, key string, value json.RawMessage) error {
	if _, err := s.kv.Put(ctx, kvKey(key), value); err != nil {
		return fmt.Errorf("natsfleet: store set %q: %w", key, err)
	}
	return nil
}

// Delete removes key and reports whether it was there.
func (s *KVStore) Delete(ctx context.Context, key string) (bool, error) {
	_, ok, err := s.Get(ctx, key)
	if err != nil || !ok {
		return false, err
	}
	if err := s.kv.Delete(ctx, kvKey(key)); err != nil {
		return false, fmt.Errorf("natsfleet: store delete %q: %w", key, err)
	}
	return true, nil
}

// Keys returns the keys, sorted.
func (s *KVStore) Keys(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithCancel(ctx) // ends the watcher Keys starts
	defer cancel()
	ks, err := s.kv.Keys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return []string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("natsfleet: store keys: %w", err)
	}
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = storeKey(k)
	}
	slices.Sort(out)
	return out, nil
}

// Clear removes every key and returns how many there were.
func (s *KVStore) Clear(ctx context.Context) (int, error) {
	keys, err := s.Keys(ctx)
	if err != nil {
		return 0, err
	}
	for _, k := range keys {
		if err := s.kv.Purge(ctx, kvKey(k)); err != nil {
			return 0, fmt.Errorf("natsfleet: store clear: %w", err)
		}
	}
	return len(keys), nil
}

// maxUpdateTries bounds the retries of an atomic update.
const maxUpdateTries = 100

// Update changes key atomically: fn gets the current value (nil and false
// if none) and returns the new one; if another writer changed the key
// meanwhile, fn runs again on the newer value. It returns the value
// written. fn must have no other effect: it may run several times.
func (s *KVStore) Update(ctx context.Context, key string, fn func(old json.RawMessage, found bool) (json.RawMessage, error)) (json.RawMessage, error) {
	unlock, err := s.lockKey(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("natsfleet: store update %q: %w", key, err)
	}
	defer unlock()
	k := kvKey(key)
	for range maxUpdateTries {
		var old json.RawMessage
		var rev uint64
		e, err := s.kv.Get(ctx, k)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return nil, fmt.Errorf("natsfleet: store update %q: %w", key, err)
		default:
			old, rev = e.Value(), e.Revision()
		}
		next, err := fn(old, rev != 0)
		if err != nil {
			return nil, err
		}
		if !json.Valid(next) {
			return nil, fmt.Errorf("natsfleet: store update %q: the new value is not JSON", key)
		}
		if rev == 0 {
			_, err = s.kv.Create(ctx, k, next)
		} else {
			_, err = s.kv.Update(ctx, k, next, rev)
		}
		if err == nil {
			return next, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !isConflict(err) {
			return nil, fmt.Errorf("natsfleet: store update %q: %w", key, err)
		}
	}
	return nil, fmt.Errorf("%w: %q after %d tries", ErrConflict, key, maxUpdateTries)
}

// Increment adds delta to the integer stored under key (0 if none) and
// returns the result, atomically.
func (s *KVStore) Increment(ctx context.Context, key string, delta int64) (int64, error) {
	var n int64
	_, err := s.Update(ctx, key, func(old json.RawMessage, found bool) (json.RawMessage, error) {
		n = 0
		if found {
			if err := json.Unmarshal(old, &n); err != nil {
				return nil, fmt.Errorf("natsfleet: increment %q: the value is not an integer: %w", key, err)
			}
		}
		n += delta
		return json.RawMessage(strconv.FormatInt(n, 10)), nil
	})
	return n, err
}

func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || strings.Contains(err.Error(), "wrong last sequence")
}

// SessionRecord is a shard's session as stored, with who wrote it and when.
type SessionRecord struct {
	shardgroup.Session
	Owner     string    `json:"owner"`
	WrittenAt time.Time `json:"written_at"`
}

// KVSessionStore is a runtime.SessionStore in the JetStream key-value
// bucket <prefix>_sessions, one key per shard, so that a process started
// anywhere resumes the sessions another one saved. Save writes only the
// shards it is given: processes running different shards do not erase
// each other's.
type KVSessionStore struct {
	kv    jetstream.KeyValue
	owner string
}

// NewKVSessionStore creates or opens the sessions bucket (on disk); owner
// names this process in the records it writes.
func NewKVSessionStore(ctx context.Context, nc *nats.Conn, prefix, owner string) (*KVSessionStore, error) {
	if prefix == "" {
		prefix = "fleet"
	}
	if owner == "" {
		return nil, errors.New("natsfleet: NewKVSessionStore: empty owner: name the process (host and pid, a cluster id)")
	}
	kv, err := keyValue(ctx, nc, prefix, "sessions", jetstream.FileStorage)
	if err != nil {
		return nil, err
	}
	return &KVSessionStore{kv: kv, owner: owner}, nil
}

// Save writes each session under its shard, with the owner and the time.
func (s *KVSessionStore) Save(ctx context.Context, sessions []shardgroup.Session) error {
	now := time.Now()
	for _, sess := range sessions {
		data, err := json.Marshal(SessionRecord{Session: sess, Owner: s.owner, WrittenAt: now})
		if err != nil {
			return err
		}
		if _, err := s.kv.Put(ctx, "shard."+strconv.Itoa(sess.ShardID), data); err != nil {
			return fmt.Errorf("natsfleet: save session of shard %d: %w", sess.ShardID, err)
		}
	}
	return nil
}

// Load returns every stored session, by shard.
func (s *KVSessionStore) Load(ctx context.Context) ([]shardgroup.Session, error) {
	recs, err := s.Records(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]shardgroup.Session, len(recs))
	for i, r := range recs {
		out[i] = r.Session
	}
	return out, nil
}

// Records returns every stored session with its owner and time, by shard.
func (s *KVSessionStore) Records(ctx context.Context) ([]SessionRecord, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := s.kv.Watch(ctx, "shard.*", jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("natsfleet: load sessions: %w", err)
	}
	defer w.Stop()
	var out []SessionRecord
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok || e == nil {
				slices.SortFunc(out, func(a, b SessionRecord) int { return a.ShardID - b.ShardID })
				return out, nil
			}
			var r SessionRecord
			if err := json.Unmarshal(e.Value(), &r); err != nil {
				return nil, fmt.Errorf("natsfleet: load sessions: %s: %w", e.Key(), err)
			}
			out = append(out, r)
		case <-ctx.Done():
			return nil, fmt.Errorf("natsfleet: load sessions: %w", ctx.Err())
		}
	}
}
