package discordtest

import (
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// A second RESUME of a live session takes it over: the first connection
// is closed, the session goes on (replaying from the second RESUME's
// sequence) and is not counted as ended.
func TestSecondResumeTakesOver(t *testing.T) {
	t.Parallel()
	s := NewServer(WithGuilds(2), WithRecommendedShards(1))
	defer s.Close()
	a := dialRaw(t, s.GatewayURL())
	id, seq := a.identify(s.Token(), 0, 1)
	a.readDispatch("GUILD_CREATE")
	a.readDispatch("GUILD_CREATE")
	seq += 2

	g := s.GuildID(0)
	if n, _ := s.Dispatch(g, "MESSAGE_CREATE", s.MessageCreate(g, "one", 1)); n != 1 {
		t.Fatalf("dispatched to %d sessions", n)
	}
	b := dialRaw(t, s.ResumeURL())
	b.send(map[string]any{"op": opResume, "d": map[string]any{"token": s.Token(), "session_id": id, "seq": seq}})
	if m := b.readDispatch("MESSAGE_CREATE"); !strings.Contains(string(m.D), `"one"`) {
		t.Fatalf("replayed %s", m.D)
	}
	b.readDispatch("RESUMED")
	if code := a.closeCode(); code != CloseUnknownError {
		t.Fatalf("first connection closed with %d, want %d", code, CloseUnknownError)
	}
	if n, _ := s.Dispatch(g, "MESSAGE_CREATE", s.MessageCreate(g, "two", 2)); n != 1 {
		t.Fatalf("dispatched to %d sessions after the take-over", n)
	}
	if m := b.readDispatch("MESSAGE_CREATE"); !strings.Contains(string(m.D), `"two"`) {
		t.Fatalf("got %s", m.D)
	}
	if st := s.Stats(); len(st.SessionsEnded) != 0 || st.Sessions != 1 || st.Resumes != 1 {
		t.Fatalf("sessions %d, ended %v, resumes %d: want 1 live session, none ended, 1 resume", st.Sessions, st.SessionsEnded, st.Resumes)
	}
}

// Every way a session ends is counted under its reason, once.
func TestSessionsEndedByReason(t *testing.T) {
	t.Parallel()
	s := NewServer(WithGuilds(4), WithRecommendedShards(4), WithMaxConcurrency(4))
	defer s.Close()
	tok := s.Token()

	c0 := dialRaw(t, s.GatewayURL())
	c0.identify(tok, 0, 4)
	s.InvalidateSession(0, false)
	s.InvalidateSession(0, false) // nothing left to end

	c1 := dialRaw(t, s.GatewayURL())
	id1, seq1 := c1.identify(tok, 1, 4)
	c1.closeWith(websocket.CloseServiceRestart)
	waitFor(t, func() bool { return s.Stats().OpenConnections == 1 })
	s.RefuseResumes(1, 1)
	r := dialRaw(t, s.ResumeURL())
	r.send(map[string]any{"op": opResume, "d": map[string]any{"token": tok, "session_id": id1, "seq": seq1}})
	if m := r.read(); m.Op != opInvalidSession {
		t.Fatalf("op %d, want 9", m.Op)
	}

	c2 := dialRaw(t, s.GatewayURL())
	c2.identify(tok, 2, 4)
	c2.closeWith(websocket.CloseNormalClosure)

	c3 := dialRaw(t, s.GatewayURL())
	c3.identify(tok, 3, 4)
	c3.send(identifyMsg(tok, 3, 4, 513)) // 4005 ends the session
	c3.closeCode()

	want := map[string]int{SessionEndedInvalidated: 1, SessionEndedResumeRefused: 1, SessionEndedClientClose: 1, "close_4005": 1}
	for end := time.Now().Add(5 * time.Second); !maps.Equal(s.Stats().SessionsEnded, want) && time.Now().Before(end); {
		time.Sleep(time.Millisecond) // the server reads the closes on its own goroutines
	}
	if got := s.Stats().SessionsEnded; !maps.Equal(got, want) {
		t.Fatalf("ended %v, want %v", got, want)
	}
	if st := s.Stats(); st.Sessions != 0 {
		t.Fatalf("%d sessions live, want 0", st.Sessions)
	}
}

// closeWith sends a close frame with code and closes the socket.
func (c *rawClient) closeWith(code int) {
	_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), time.Now().Add(time.Second))
	_ = c.ws.Close()
}

// A session whose client left stays live, resumable, as on Discord: a
// second IDENTIFY of the shard (a client that never got the first one's
// READY sends one) starts another, and a dispatch reaches both, each
// named by DispatchSessions.
func TestDispatchSessionsNamesEachSession(t *testing.T) {
	t.Parallel()
	s := NewServer(WithGuilds(1), WithRecommendedShards(1), WithIdentifyWindow(time.Millisecond))
	defer s.Close()
	a := dialRaw(t, s.GatewayURL())
	first, _ := a.identify(s.Token(), 0, 1)
	_ = a.ws.Close() // gone: the session waits for a RESUME nobody will send
	b := dialRaw(t, s.GatewayURL())
	second, _ := b.identify(s.Token(), 0, 1)
	g := s.GuildID(0)
	ids, err := s.DispatchSessions(g, "MESSAGE_CREATE", s.MessageCreate(g, "both", 1))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(ids), 2; got != want || !slices.Contains(ids, first) || !slices.Contains(ids, second) {
		t.Fatalf("DispatchSessions = %q, want the two sessions %q and %q", ids, first, second)
	}
	if n, _ := s.Dispatch(g, "MESSAGE_CREATE", s.MessageCreate(g, "again", 2)); n != 2 {
		t.Fatalf("Dispatch reached %d sessions, want 2", n)
	}
}
