package discordtest

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestCloseCodes(t *testing.T) {
	t.Parallel()
	s := NewServer(WithGuilds(30), WithMaxGuildsPerShard(20), WithPrivilegedIntents(0),
		WithCommandLimit(5, time.Minute), WithIdentifyWindow(time.Nanosecond))
	defer s.Close()
	tok := s.Token()

	// A bystander connection that must survive every other test case.
	by := dialRaw(t, s.GatewayURL())
	by.identify(tok, 0, 2)

	cases := []struct {
		name string
		code int
		kind string
		send func(c *rawClient)
	}{
		{"unknown opcode", CloseUnknownOpcode, "unknown_opcode", func(c *rawClient) {
			c.send(identifyMsg(tok, 1, 2, 1))
			c.readDispatch("READY")
			c.send(map[string]any{"op": 99, "d": nil})
		}},
		{"undecodable", CloseDecodeError, "decode_error", func(c *rawClient) { c.send([]byte(`{"op":`)) }},
		{"too large", CloseDecodeError, "payload_too_large", func(c *rawClient) {
			c.send(map[string]any{"op": 1, "d": strings.Repeat("x", 5000)})
		}},
		{"not authenticated", CloseNotAuthenticated, "not_authenticated", func(c *rawClient) {
			c.send(map[string]any{"op": 3, "d": map[string]any{"status": "online"}})
		}},
		{"authentication failed", CloseAuthenticationFailed, "authentication_failed", func(c *rawClient) {
			c.send(identifyMsg("wrong", 0, 2, 1))
		}},
		{"already authenticated", CloseAlreadyAuthenticated, "already_authenticated", func(c *rawClient) {
			c.send(identifyMsg(tok, 1, 2, 1))
			c.readDispatch("READY")
			c.send(identifyMsg(tok, 1, 2, 1))
		}},
		{"rate limited", CloseRateLimited, "command_rate", func(c *rawClient) {
			for range 6 {
				c.send(map[string]any{"op": 1, "d": nil})
			}
		}},
		{"invalid shard", CloseInvalidShard, "invalid_shard", func(c *rawClient) { c.send(identifyMsg(tok, 2, 2, 1)) }},
		{"sharding required", CloseShardingRequired, "sharding_required", func(c *rawClient) { c.send(identifyMsg(tok, 0, 1, 1)) }},
		{"invalid intents", CloseInvalidIntents, "invalid_intents", func(c *rawClient) { c.send(identifyMsg(tok, 0, 2, 1<<40)) }},
		{"disallowed intents", CloseDisallowedIntents, "disallowed_intents", func(c *rawClient) {
			c.send(identifyMsg(tok, 0, 2, intentMessageContent))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := s.Stats().Violations[tc.kind]
			c := dialRaw(t, s.GatewayURL())
			tc.send(c)
			if got := c.closeCode(); got != tc.code {
				t.Fatalf("close code %d, want %d", got, tc.code)
			}
			if after := s.Stats().Violations[tc.kind]; after != before+1 {
				t.Fatalf("violations[%s] = %d, want %d", tc.kind, after, before+1)
			}
		})
	}

	// The bystander still gets events.
	if n, err := s.Dispatch(s.GuildID(0), "MESSAGE_CREATE", s.MessageCreate(s.GuildID(0), "still here", 1)); err != nil || n == 0 {
		t.Fatalf("dispatch: n=%d err=%v", n, err)
	}
	m := by.readDispatch("MESSAGE_CREATE")
	if !strings.Contains(string(m.D), "still here") {
		t.Fatalf("bystander got %s", m.D)
	}
}

func TestReadyAndGuilds(t *testing.T) {
	t.Parallel()
	s := NewServer(WithGuilds(10), WithGuildShape(60, 2, 1))
	defer s.Close()
	c := dialRaw(t, s.GatewayURL())
	c.send(identifyMsg(s.Token(), 1, 3, 513))
	ready := c.readDispatch("READY")
	var r struct {
		V                int    `json:"v"`
		SessionID        string `json:"session_id"`
		ResumeGatewayURL string `json:"resume_gateway_url"`
		Shard            [2]int `json:"shard"`
		Guilds           []struct {
			ID          string `json:"id"`
			Unavailable bool   `json:"unavailable"`
		} `json:"guilds"`
		Application struct{ ID string } `json:"application"`
	}
	if err := json.Unmarshal(ready.D, &r); err != nil {
		t.Fatal(err)
	}
	if r.V != 10 || r.SessionID == "" || r.ResumeGatewayURL != s.ResumeURL() || r.Shard != [2]int{1, 3} || r.Application.ID == "" {
		t.Fatalf("READY fields wrong: %+v", r)
	}
	want := 0
	for i := range 10 {
		if ShardFor(s.GuildID(i), 3) == 1 {
			want++
		}
	}
	if len(r.Guilds) != want || want == 0 {
		t.Fatalf("READY has %d guilds, want %d", len(r.Guilds), want)
	}
	for range want {
		m := c.readDispatch("GUILD_CREATE")
		var g struct {
			ID      string            `json:"id"`
			Large   bool              `json:"large"`
			Members []json.RawMessage `json:"members"`
		}
		if err := json.Unmarshal(m.D, &g); err != nil {
			t.Fatal(err)
		}
		if !g.Large || len(g.Members) != 1 {
			t.Fatalf("guild with 60 members over threshold 50: large=%v members=%d", g.Large, len(g.Members))
		}
	}
}

func TestResumeReplaysMissedEvents(t *testing.T) {
	t.Parallel()
	s := NewServer(WithGuilds(4))
	defer s.Close()
	c := dialRaw(t, s.GatewayURL())
	sid, _ := c.identify(s.Token(), 0, 1)
	for range 4 {
		c.readDispatch("GUILD_CREATE")
	}
	last := 5 // READY + 4 GUILD_CREATE
	if s.DropShard(0) != 1 {
		t.Fatal("no connection dropped")
	}
	_ = c.ws.Close()
	for i := range 3 {
		if _, err := s.Dispatch(s.GuildID(i), "MESSAGE_CREATE", s.MessageCreate(s.GuildID(i), "missed", i)); err != nil {
			t.Fatal(err)
		}
	}
	c2 := dialRaw(t, s.ResumeURL())
	c2.send(map[string]any{"op": opResume, "d": map[string]any{"token": s.Token(), "session_id": sid, "seq": last}})
	for want := last + 1; want <= last+3; want++ {
		m := c2.read()
		if m.Op != opDispatch || m.T != "MESSAGE_CREATE" || *m.S != want {
			t.Fatalf("replay: got op %d %s seq %v, want MESSAGE_CREATE seq %d", m.Op, m.T, m.S, want)
		}
	}
	if m := c2.read(); m.T != "RESUMED" || *m.S != last+4 {
		t.Fatalf("got %s seq %v, want RESUMED", m.T, m.S)
	}
	st := s.Stats()
	if st.Resumes != 1 || st.ResumesViaURL != 1 || st.Identifies != 1 {
		t.Fatalf("stats %+v", st)
	}

	// An impossible sequence, an unknown session and a session closed with
	// 1000 are all refused with op 9 d=false.
	bad := dialRaw(t, s.GatewayURL())
	bad.send(map[string]any{"op": opResume, "d": map[string]any{"token": s.Token(), "session_id": sid, "seq": 999}})
	if m := bad.read(); m.Op != opInvalidSession || string(m.D) != "false" {
		t.Fatalf("impossible seq: got op %d d=%s", m.Op, m.D)
	}
	unknown := dialRaw(t, s.GatewayURL())
	unknown.send(map[string]any{"op": opResume, "d": map[string]any{"token": s.Token(), "session_id": "nope", "seq": 1}})
	if m := unknown.read(); m.Op != opInvalidSession {
		t.Fatalf("unknown session: got op %d", m.Op)
	}
	_ = c2.ws.WriteMessage(8, []byte{0x03, 0xe8}) // close 1000
	c2.closeCode()
	waitFor(t, func() bool { return s.Stats().Sessions == 0 })
	gone := dialRaw(t, s.GatewayURL())
	gone.send(map[string]any{"op": opResume, "d": map[string]any{"token": s.Token(), "session_id": sid, "seq": last + 4}})
	if m := gone.read(); m.Op != opInvalidSession {
		t.Fatalf("resume after 1000 close: got op %d", m.Op)
	}
}

func TestIdentifyConcurrencyViolation(t *testing.T) {
	t.Parallel()
	s := NewServer(WithGuilds(4), WithMaxConcurrency(2), WithIdentifyWindow(time.Hour))
	defer s.Close()
	a := dialRaw(t, s.GatewayURL())
	a.identify(s.Token(), 0, 4)
	b := dialRaw(t, s.GatewayURL())
	b.identify(s.Token(), 1, 4) // other bucket: allowed
	c := dialRaw(t, s.GatewayURL())
	c.send(identifyMsg(s.Token(), 2, 4, 1)) // bucket 0 again, inside the window
	if m := c.read(); m.Op != opInvalidSession || string(m.D) != "false" {
		t.Fatalf("got op %d d=%s, want op 9 false", m.Op, m.D)
	}
	st := s.Stats()
	if st.Violations["identify_concurrency"] != 1 || st.Identifies != 2 {
		t.Fatalf("violations %v identifies %d", st.Violations, st.Identifies)
	}
	ids := s.Identifies()
	if len(ids) != 3 || !ids[2].Violation || ids[2].Bucket != 0 {
		t.Fatalf("identify records %+v", ids)
	}
}

func TestSessionStartLimitExhausted(t *testing.T) {
	t.Parallel()
	s := NewServer(WithGuilds(2), WithSessionStartLimit(1, time.Hour), WithIdentifyWindow(time.Nanosecond))
	defer s.Close()
	tok := s.Token()
	a := dialRaw(t, s.GatewayURL())
	a.identify(tok, 0, 1)
	if r := s.Stats().SessionStartsRemaining; r != 0 {
		t.Fatalf("remaining %d, want 0", r)
	}
	b := dialRaw(t, s.GatewayURL())
	b.send(identifyMsg(tok, 0, 1, 1))
	if code := b.closeCode(); code != CloseAuthenticationFailed {
		t.Fatalf("over the limit: close %d", code)
	}
	if code := a.closeCode(); code != CloseAuthenticationFailed {
		t.Fatalf("existing session: close %d, want 4004", code)
	}
	if s.Token() == tok {
		t.Fatal("token was not reset")
	}
}

func TestHeartbeatAndZombie(t *testing.T) {
	t.Parallel()
	s := NewServer(WithGuilds(1), WithHeartbeatInterval(50*time.Millisecond), WithHeartbeatGrace(50*time.Millisecond))
	defer s.Close()
	c := dialRaw(t, s.GatewayURL())
	c.identify(s.Token(), 0, 1)
	c.send(map[string]any{"op": 1, "d": 1})
	for m := c.read(); m.Op != opHeartbeatACK; m = c.read() {
	}
	s.RequestHeartbeat(0)
	for m := c.read(); m.Op != opHeartbeat; m = c.read() {
	}
	s.StopAcks(0, true)
	c.send(map[string]any{"op": 1, "d": 1})
	// No ACK comes; the client stops heartbeating too, and the server
	// closes the connection with a resumable code.
	if code := c.closeCode(); code != CloseUnknownError {
		t.Fatalf("close %d, want %d", code, CloseUnknownError)
	}
	if s.Stats().Violations["heartbeat_timeout"] != 1 {
		t.Fatal("heartbeat timeout not counted")
	}
	if s.Stats().Sessions != 1 {
		t.Fatal("session should stay resumable")
	}
}

func TestZlibStream(t *testing.T) {
	t.Parallel()
	s := NewServer(WithGuilds(2))
	defer s.Close()
	ws, _, err := dialZlib(s.GatewayURL())
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	hello := ws.read(t)
	if !strings.Contains(hello, `"op":10`) {
		t.Fatalf("hello %s", hello)
	}
	b, _ := json.Marshal(identifyMsg(s.Token(), 0, 1, 1))
	if err := ws.ws.WriteMessage(1, b); err != nil {
		t.Fatal(err)
	}
	if ready := ws.read(t); !strings.Contains(ready, `"t":"READY"`) {
		t.Fatalf("ready %s", ready)
	}
}

// waitFor polls cond until it holds; the test fails after 10 s.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestHoldShard(t *testing.T) {
	t.Parallel()
	s := NewServer(WithGuilds(4), WithMaxConcurrency(2), WithIdentifyWindow(time.Nanosecond))
	defer s.Close()
	s.HoldShard(1)
	c := dialRaw(t, s.GatewayURL())
	c.send(identifyMsg(s.Token(), 1, 2, 513))
	c.send(map[string]any{"op": 1, "d": nil})
	if m := c.read(); m.Op != opHeartbeatACK {
		t.Fatalf("held shard: got op %d %s before release, want only the heartbeat ACK", m.Op, m.T)
	}
	other := dialRaw(t, s.GatewayURL())
	other.identify(s.Token(), 0, 2) // other shards are not held
	s.ReleaseShard(1)
	c.readDispatch("READY")
	if n := s.Stats().Identifies; n != 2 {
		t.Fatalf("identifies %d, want 2", n)
	}
}
