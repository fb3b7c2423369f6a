package main

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/gofleet/fleet/discordtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestWaitSessionsReady(t *testing.T) {
	s := discordtest.NewServer(discordtest.WithGuilds(8), discordtest.WithMaxConcurrency(2),
		discordtest.WithIdentifyWindow(time.Millisecond), discordtest.WithHeartbeatInterval(time.Hour))
	defer s.Close()

	// Nobody connected: the wait fails at its bound, naming its condition
	// and the simulator's state.
	err := waitSessionsReadyWithin(s, 2, 20*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "2 sessions READY with their guilds sent") ||
		!strings.Contains(err.Error(), "0 ready") {
		t.Fatalf("wait with no client: %v", err)
	}

	// A connection that has not identified does not count, as HELLO is
	// not READY.
	hello, err := identifyRawNoIdentify(s.GatewayURL())
	if err != nil {
		t.Fatal(err)
	}
	defer hello.Close()
	if err := waitSessionsReadyWithin(s, 1, 20*time.Millisecond); err == nil {
		t.Fatal("a connection that only got HELLO counted as ready")
	}

	var got atomic.Int64
	for i := range 2 {
		ws, err := identifyRaw(s.GatewayURL(), s.Token(), i, 2)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Close()
		go countDispatches(ws, "GUILD_CREATE", &got)
	}
	if err := waitSessionsReadyWithin(s, 2, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.ReadySessions != 2 || st.ReadyShards[0] != 1 || st.ReadyShards[1] != 1 {
		t.Fatalf("stats %+v, want both shards ready", st)
	}
	// Ready means every GUILD_CREATE was written: the clients get them all.
	if err := waitFor(10*time.Second, "8 GUILD_CREATEs", func() (bool, string) { return got.Load() == 8, "" }); err != nil {
		t.Fatal(err)
	}
}

// identifyRawNoIdentify dials and reads nothing: the server sends HELLO.
func identifyRawNoIdentify(url string) (*websocket.Conn, error) {
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	ws, _, err := d.Dial(url+"?v=10&encoding=json", nil)
	return ws, err
}

func TestEventsBoundIsSeconds(t *testing.T) {
	// 2,000,000 events at a floor of 100,000/s: 30 s, not minutes.
	if got := eventsBound(2_000_000, 100_000); got != 30*time.Second {
		t.Fatalf("eventsBound = %s", got)
	}
}
