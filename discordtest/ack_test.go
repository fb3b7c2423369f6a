package discordtest

import (
	"testing"
	"time"
)

// A heartbeat ACK comes after every dispatch queued to the connection
// before the heartbeat arrived, even those not yet written, so a client
// that reads the ACK has read all of them.
func TestHeartbeatAckFollowsQueuedDispatches(t *testing.T) {
	s := NewServer(WithGuilds(2))
	defer s.Close()
	c := dialRaw(t, s.GatewayURL())
	c.identify(s.Token(), 0, 1)
	// Slow writes leave most of the dispatches queued when the
	// heartbeat arrives.
	s.SetLatency(0, 20*time.Millisecond)
	const n = 500
	for i := range n {
		if _, err := s.Dispatch(s.GuildID(0), "MESSAGE_CREATE", s.MessageCreate(s.GuildID(0), "x", i)); err != nil {
			t.Fatal(err)
		}
	}
	c.send(map[string]any{"op": opHeartbeat, "d": nil})
	seen := 0
	for {
		m := c.read()
		if m.Op == opDispatch && m.T == "MESSAGE_CREATE" {
			seen++
		}
		if m.Op == 11 {
			break
		}
	}
	if seen != n {
		t.Fatalf("ACK after %d of the %d dispatches queued before the heartbeat", seen, n)
	}
}
