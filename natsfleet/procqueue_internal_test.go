package natsfleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// identifyFixture is a parent's identify queue on an embedded server of
// its own, one bucket wide, and a way to make children's queues on it.
type identifyFixture struct {
	t      *testing.T
	srv    *Server
	server *identifyServer
	prefix string
	n      int
}

func newIdentifyFixture(t *testing.T, interval, lease time.Duration) *identifyFixture {
	t.Helper()
	srv, err := StartServer(ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	f := &identifyFixture{t: t, srv: srv, prefix: "idq"}
	f.server, err = newIdentifyServer(1, interval, lease, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.server.close)
	if err := f.server.listen(f.conn(), f.prefix); err != nil {
		t.Fatal(err)
	}
	return f
}

// conn is a new connection to the fixture's server, closed at the end.
func (f *identifyFixture) conn() *nats.Conn {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := f.srv.Connect(ctx, Logger(slog.New(slog.DiscardHandler)))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(nc.Close)
	return nc
}

// child is a child's queue on a connection of its own.
func (f *identifyFixture) child() (*parentIdentifyQueue, *nats.Conn) {
	f.t.Helper()
	f.n++
	nc := f.conn()
	q := newParentIdentifyQueue(nc, f.prefix, fmt.Sprintf("child-%d", f.n))
	f.t.Cleanup(func() { q.Close(context.Background()) })
	return q, nc
}

// mustGet waits for shard's turn: with the fixture's long lease, a
// bucket left taken makes it fail.
func mustGet(t *testing.T, q *parentIdentifyQueue, shard int, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := q.WaitBucket(ctx, shard); err != nil {
		t.Fatalf("%s: the bucket's turn: %v", what, err)
	}
}

// TestParentIdentifyQueueCancelledWait: a wait whose ctx ends, before the
// turn comes or just as it is granted, leaves the bucket free: the next
// child gets it without waiting out the (hour-long) lease.
func TestParentIdentifyQueueCancelledWait(t *testing.T) {
	f := newIdentifyFixture(t, time.Millisecond, time.Hour)
	a, _ := f.child()
	b, _ := f.child()
	for i := range 30 {
		mustGet(t, a, 0, fmt.Sprintf("round %d: a", i))
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- b.WaitBucket(ctx, 1) }()
		if i%2 == 0 {
			// b gives up while a holds the turn.
			cancel()
			a.UnlockBucket(0)
		} else {
			// b gives up around the moment its turn is granted.
			a.UnlockBucket(0)
			time.AfterFunc(time.Duration(i)*100*time.Microsecond, cancel)
		}
		if err := <-errc; err == nil {
			b.UnlockBucket(1) // its turn came before the cancel
		} else if !errors.Is(err, context.Canceled) {
			t.Fatalf("round %d: b's wait: %v, want context.Canceled", i, err)
		}
		cancel()
	}
	mustGet(t, a, 0, "after the cancelled waits")
	a.UnlockBucket(0)
}

// TestParentIdentifyQueueLostGrant: a grant whose child never says it is
// done (its messages lost) is released after the lease.
func TestParentIdentifyQueueLostGrant(t *testing.T) {
	f := newIdentifyFixture(t, time.Millisecond, 50*time.Millisecond)
	nc := f.conn()
	data, _ := json.Marshal(identifyAsk{Op: "wait", Child: "lost", ID: 1, Shard: 0, Wait: 10 * time.Second})
	m, err := nc.Request(identifySubject(f.prefix), data, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var ans identifyAnswer
	if err := json.Unmarshal(m.Data, &ans); err != nil || !ans.Granted {
		t.Fatalf("raw ask: %s, %v; want granted", m.Data, err)
	}
	b, _ := f.child()
	mustGet(t, b, 0, "after the lost grant's lease")
	if n := f.server.held(); n != 1 {
		t.Errorf("%d asks held, want 1 (b's): the lost grant was not released", n)
	}
}

// TestParentIdentifyQueueChildGone: what a child holds or waits for is
// released when its process exits (gone) or its queue closes.
func TestParentIdentifyQueueChildGone(t *testing.T) {
	f := newIdentifyFixture(t, time.Millisecond, time.Hour)
	a, _ := f.child()
	b, _ := f.child()
	c, _ := f.child()
	mustGet(t, a, 0, "a")
	f.server.gone(a.child) // the parent saw a's process exit
	mustGet(t, b, 0, "b, after a exited")
	b.Close(context.Background())
	mustGet(t, c, 0, "c, after b's queue closed")
	if err := b.WaitBucket(context.Background(), 0); !errors.Is(err, errParentQueueClosed) {
		t.Errorf("a wait on a closed queue: %v, want errParentQueueClosed", err)
	}
	// An ask a gone child sent before it went, read after: refused, not
	// granted to nobody.
	c.UnlockBucket(0)
	data, _ := json.Marshal(identifyAsk{Op: "wait", Child: a.child, ID: 99, Shard: 0, Wait: 10 * time.Second})
	m, err := f.conn().Request(identifySubject(f.prefix), data, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var ans identifyAnswer
	if err := json.Unmarshal(m.Data, &ans); err != nil || ans.Granted || ans.Err == "" {
		t.Errorf("an ask of a gone child: %s, %v; want refused", m.Data, err)
	}
}

// TestParentIdentifyQueueConnectionLost: a wait on a connection that
// closes returns an error, and the bucket is not kept from the others
// beyond the lease.
func TestParentIdentifyQueueConnectionLost(t *testing.T) {
	f := newIdentifyFixture(t, time.Millisecond, 100*time.Millisecond)
	a, _ := f.child()
	b, bnc := f.child()
	c, _ := f.child()
	mustGet(t, a, 0, "a")
	errc := make(chan error, 1)
	go func() { errc <- b.WaitBucket(context.Background(), 0) }()
	bnc.Close()
	if err := <-errc; err == nil {
		t.Fatal("a wait whose connection closed returned nil, want an error")
	}
	a.UnlockBucket(0)
	mustGet(t, c, 0, "c, after b's connection closed")
}

// TestParentIdentifyQueueAskAgain: a turn that does not come within the
// ask's wait is answered "not yet", and the child asks again until it
// comes.
func TestParentIdentifyQueueAskAgain(t *testing.T) {
	f := newIdentifyFixture(t, time.Millisecond, time.Hour)
	a, _ := f.child()
	b, _ := f.child()
	b.wait = 5 * time.Millisecond
	notYet := make(chan struct{})
	f.server.notYet = notYet
	mustGet(t, a, 0, "a")
	errc := make(chan error, 1)
	go func() { errc <- b.WaitBucket(context.Background(), 0) }()
	// b's asks run out while a holds the turn, and b asks again.
	for range 3 {
		select {
		case <-notYet:
		case err := <-errc:
			t.Fatalf("b's wait returned %v while a held the bucket", err)
		}
	}
	a.UnlockBucket(0)
	for {
		select {
		case <-notYet: // an ask that ran out as a gave the turn back
		case err := <-errc:
			if err != nil {
				t.Fatalf("b's wait: %v", err)
			}
			return
		}
	}
}
