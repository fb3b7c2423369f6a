package shardgroup

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"time"

	"github.com/disgoorg/disgo/gateway"
	"github.com/gorilla/websocket"
)

// errStoppedAtReady ends the connection of a shard whose group opens
// sessions for another (Config.StopAtReady).
var errStoppedAtReady = errors.New("shardgroup: session opened for another group")

// stopAtReady hands the session the READY frame just delivered started
// to Config.StopAtReady, and stops the shard: the connection closes with
// a resumable code before anything after the READY is read.
func (s *shard) stopAtReady(c *websocket.Conn, frame []byte) error {
	s.mu.Lock()
	sess := s.session
	s.mu.Unlock()
	sess.SavedAt = time.Now()
	s.requestStop(resumableClose)
	s.g.cfg.StopAtReady(sess, bytes.Clone(frame))
	s.closeConn(c, resumableClose)
	return errStoppedAtReady
}

// await gives a shard without a session the one another group opened
// for it (Config.Await), and delivers that session's READY to the client.
// It returns when the session came, will not come, or the shard stops.
func (s *shard) await(ctx context.Context) {
	s.mu.Lock()
	has := s.session.SessionID != ""
	s.mu.Unlock()
	if has {
		return
	}
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		select {
		case <-s.stop:
			cancel()
		case <-actx.Done():
		}
	})
	sess, ready, ok := s.g.cfg.Await(actx, s.id)
	cancel()
	wg.Wait()
	if !ok || sess.SessionID == "" || sess.ShardID != s.id || sess.ShardCount != s.count {
		return
	}
	// Taken even by a shard stopped meanwhile: a resumable stop hands it on.
	s.mu.Lock()
	s.session = sess
	s.mu.Unlock()
	if len(ready) > 0 {
		s.deliverReady(ready)
	}
}

// deliverReady delivers the READY of a session opened by another group,
// as dispatch does for the shard's own READY, without the shard's state:
// the shard is ready once its RESUME is answered.
func (s *shard) deliverReady(frame []byte) {
	m, err := decodeMessage(frame)
	if err != nil || m.Op != gateway.OpcodeDispatch || m.T != gateway.EventTypeReady {
		s.log.Warn("the READY of a session opened elsewhere is unreadable: not delivered", "err", err)
		return
	}
	ev, _ := m.D.(gateway.EventReady)
	s.pendingGuilds.Store(int64(len(ev.Guilds)))
	s.events.Add(1)
	s.g.deliver(s, m, frame)
	if len(ev.Guilds) == 0 {
		s.g.guildsLoaded(s)
	}
}
