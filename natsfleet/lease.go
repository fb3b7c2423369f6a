package natsfleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A lease is a key of the fleet's hosts bucket (leader, lease.<cluster>)
// whose value names its owner. The owner renews it by compare-and-set on
// the revision it wrote last; the lease is valid on the owner's clock
// until TTL after it sent its last successful renewal. Another host takes
// it only when it has seen the same revision for TTL plus a margin on its
// own clock, and only by compare-and-set on that revision: the revision
// was written no later than the host saw it, so the owner's validity has
// ended before anyone can take the lease, and no two hosts' clocks are
// ever compared.

// leaseRecord is a lease key's value.
type leaseRecord struct {
	// Owner is the host holding the lease; empty when released.
	Owner string `json:"owner"`
	// Epoch grows by one each time the lease changes hands, so that a
	// new owner's writes (sessions) win over an old owner's.
	Epoch uint64 `json:"epoch"`
}

// seenKey is what this host saw of a key of the hosts bucket.
type seenKey struct {
	rev     uint64
	value   []byte
	deleted bool
	at      time.Time // when this host first saw rev, on its clock
}

// heldLease is a lease this host holds.
type heldLease struct {
	key      string
	epoch    uint64
	rev      uint64       // the revision this host wrote last; only the Host's loop touches it
	deadline atomic.Int64 // unix ns on this host's clock after which the lease is not valid
}

// valid reports whether the lease is still this host's at now. Once it
// has answered false it always does: a renewal that completes late does
// not revive a lease whose cluster has stopped delivering.
func (l *heldLease) valid(now time.Time) bool {
	d := l.deadline.Load()
	if now.UnixNano() < d {
		return true
	}
	l.deadline.CompareAndSwap(d, 0)
	return false
}

// extend moves the deadline to until if the lease is still valid, and
// reports whether it was.
func (l *heldLease) extend(until time.Time) bool {
	d := l.deadline.Load()
	return d != 0 && l.valid(time.Now()) && l.deadline.CompareAndSwap(d, max(d, until.UnixNano()))
}

// errLeaseExpired means a renewal came after the lease's deadline.
var errLeaseExpired = errors.New("natsfleet: lease expired before its renewal")

// Deadline returns when the lease ends on this host's clock unless renewed.
func (l *heldLease) Deadline() time.Time { return time.Unix(0, l.deadline.Load()) }

// errLeaseHeld means the lease is held by another host and has not
// expired yet as this host sees it.
var errLeaseHeld = errors.New("natsfleet: lease held by another host")

// leases takes, renews and releases leases in one bucket for one host.
type leases struct {
	kv     jetstream.KeyValue
	owner  string
	ttl    time.Duration
	margin time.Duration
	now    func() time.Time
}

// acquire takes the lease key given what this host saw of it (nil: never
// seen). A released or missing lease is taken at once; one held by
// another host only once its revision has stayed the same for TTL plus
// the margin.
func (ls *leases) acquire(ctx context.Context, key string, seen *seenKey) (*heldLease, error) {
	rec := leaseRecord{Owner: ls.owner, Epoch: 1}
	var prevRev uint64
	if seen != nil && !seen.deleted {
		var old leaseRecord
		if err := json.Unmarshal(seen.value, &old); err != nil {
			return nil, fmt.Errorf("natsfleet: lease %s: %w", key, err)
		}
		if old.Owner != "" && ls.now().Sub(seen.at) < ls.ttl+ls.margin {
			return nil, errLeaseHeld
		}
		rec.Epoch = old.Epoch + 1
		prevRev = seen.rev
	}
	data, _ := json.Marshal(rec)
	sent := ls.now()
	var rev uint64
	var err error
	if prevRev == 0 {
		rev, err = ls.kv.Create(ctx, key, data)
	} else {
		rev, err = ls.kv.Update(ctx, key, data, prevRev)
	}
	if err != nil && !isConflict(err) {
		// A write that timed out may have been made all the same.
		gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ls.ttl)
		if e, gerr := ls.kv.Get(gctx, key); gerr == nil && string(e.Value()) == string(data) {
			rev, err = e.Revision(), nil
		}
		cancel()
	}
	if err != nil {
		return nil, err
	}
	l := &heldLease{key: key, epoch: rec.Epoch, rev: rev}
	l.deadline.Store(sent.Add(ls.ttl).UnixNano())
	return l, nil
}

// renew extends l by TTL from now. A conflict means another host took it:
// the lease is lost for good.
func (ls *leases) renew(ctx context.Context, l *heldLease) error {
	sent, err := ls.rewrite(ctx, l)
	if err != nil {
		return err
	}
	if !l.extend(sent.Add(ls.ttl)) {
		return errLeaseExpired
	}
	return nil
}

// reclaim makes l valid again for TTL from now, even after its deadline
// passed, if no other host has taken it meanwhile: it is written by
// compare-and-set on the revision this host wrote last, which another
// host must also have used to take it. Only a cluster that delivered
// nothing since its lease lapsed may be reclaimed (a held event is not
// delivered): its sessions are then exactly what it delivered, and can
// be handed over.
func (ls *leases) reclaim(ctx context.Context, l *heldLease) error {
	sent, err := ls.rewrite(ctx, l)
	if err != nil {
		return err
	}
	if until := sent.Add(ls.ttl); ls.now().Before(until) {
		l.deadline.Store(until.UnixNano())
		return nil
	}
	return errLeaseExpired
}

// rewrite writes l again by compare-and-set, and returns when the write
// was sent.
func (ls *leases) rewrite(ctx context.Context, l *heldLease) (time.Time, error) {
	data, _ := json.Marshal(leaseRecord{Owner: ls.owner, Epoch: l.epoch})
	sent := ls.now()
	rev, err := ls.kv.Update(ctx, l.key, data, l.rev)
	if err != nil && isConflict(err) {
		// A renewal that timed out may have been written all the same:
		// if the lease is still this host's at this epoch, go on from
		// the revision it has.
		e, gerr := ls.kv.Get(ctx, l.key)
		if gerr != nil {
			return sent, gerr
		}
		var cur leaseRecord
		if json.Unmarshal(e.Value(), &cur) != nil || cur.Owner != ls.owner || cur.Epoch != l.epoch {
			return sent, err
		}
		sent = ls.now()
		rev, err = ls.kv.Update(ctx, l.key, data, e.Revision())
	}
	if err != nil {
		return sent, err
	}
	l.rev = rev
	return sent, nil
}

// release gives l up at once, for the next owner to take without waiting.
func (ls *leases) release(ctx context.Context, l *heldLease) error {
	l.deadline.Store(0)
	data, _ := json.Marshal(leaseRecord{Epoch: l.epoch})
	_, err := ls.kv.Update(ctx, l.key, data, l.rev)
	return err
}
