package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/gofleet/fleet/discordtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fake is a running fakediscord with the URLs it printed.
type fake struct {
	gateway, rest, token, control string
}

// startFake runs fakediscord with args until the test ends.
func startFake(t *testing.T, args ...string) fake {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, args, pw, io.Discard)
		pw.Close()
	}()
	var f fake
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		v = strings.TrimSpace(v)
		switch k {
		case "gateway":
			f.gateway = v
		case "rest":
			f.rest = v
		case "token":
			f.token = v
		case "control":
			f.control = v
		}
		if strings.HasPrefix(sc.Text(), "serving") {
			break
		}
	}
	drained := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, pr); close(drained) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
		<-drained
	})
	if f.gateway == "" || f.control == "" {
		t.Fatalf("fakediscord printed no gateway or control URL: %+v", f)
	}
	return f
}

// call sends a control request and decodes the answer into out (if not
// nil); it returns the status.
func (f fake) call(t *testing.T, method, path, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, f.control+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
	if resp.StatusCode >= 300 && !strings.Contains(string(b), `"error"`) {
		t.Errorf("%s %s: %d without an error message: %s", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode
}

func (f fake) mustCall(t *testing.T, method, path, body string, out any) {
	t.Helper()
	if st := f.call(t, method, path, body, out); st >= 300 {
		t.Fatalf("%s %s %s: status %d", method, path, body, st)
	}
}

type gwMsg struct {
	Op int             `json:"op"`
	S  *int            `json:"s"`
	T  string          `json:"t"`
	D  json.RawMessage `json:"d"`
}

// client is a gateway client that reads on its own goroutine.
type client struct {
	ws   *websocket.Conn
	msgs chan gwMsg
	done chan error
}

func dial(t *testing.T, f fake) *client {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial(f.gateway+"?v=10&encoding=json", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &client{ws: ws, msgs: make(chan gwMsg, 4096), done: make(chan error, 1)}
	go func() {
		for {
			var m gwMsg
			if err := ws.ReadJSON(&m); err != nil {
				c.done <- err
				close(c.msgs)
				return
			}
			c.msgs <- m
		}
	}()
	t.Cleanup(func() {
		ws.Close()
		for range c.msgs {
		}
	})
	return c
}

func (c *client) send(t *testing.T, v any) {
	t.Helper()
	if err := c.ws.WriteJSON(v); err != nil {
		t.Fatal(err)
	}
}

// expect reads until a payload matches, failing after 10 s or when the
// connection ends.
func (c *client) expect(t *testing.T, what string, match func(gwMsg) bool) gwMsg {
	t.Helper()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	for {
		select {
		case m, ok := <-c.msgs:
			if !ok {
				t.Fatalf("connection ended while waiting for %s: %v", what, <-c.done)
			}
			if match(m) {
				return m
			}
		case <-timer.C:
			t.Fatalf("no %s in 10 s", what)
		}
	}
}

func isDispatch(t string) func(gwMsg) bool {
	return func(m gwMsg) bool { return m.Op == 0 && m.T == t }
}

// waitStats polls GET /stats until cond holds, failing after 10 s.
func (f fake) waitStats(t *testing.T, what string, cond func(discordtest.Stats) bool) discordtest.Stats {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var st discordtest.Stats
		f.mustCall(t, "GET", "/stats", "", &st)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats never showed %s: %+v", what, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func identify(t *testing.T, f fake, c *client) string {
	t.Helper()
	c.send(t, map[string]any{"op": 2, "d": map[string]any{"token": f.token, "intents": 513, "shard": []int{0, 1},
		"properties": map[string]string{"os": "linux", "browser": "test", "device": "test"}}})
	ready := c.expect(t, "READY", isDispatch("READY"))
	var d struct {
		SessionID string `json:"session_id"`
	}
	_ = json.Unmarshal(ready.D, &d)
	return d.SessionID
}

func TestControlAPI(t *testing.T) {
	f := startFake(t, "-control", "-guilds", "4", "-identify-window", "1ms", "-heartbeat", "1h")
	c := dial(t, f)
	c.expect(t, "HELLO", func(m gwMsg) bool { return m.Op == 10 })
	session := identify(t, f, c)
	f.waitStats(t, "one session READY with its guilds", func(st discordtest.Stats) bool { return st.ReadySessions == 1 })

	var ids []discordtest.Identify
	f.mustCall(t, "GET", "/identifies", "", &ids)
	if len(ids) != 1 || ids[0].Shard != 0 || ids[0].Shards != 1 {
		t.Fatalf("identify log %+v, want one IDENTIFY of shard [0, 1]", ids)
	}

	t.Run("dispatch", func(t *testing.T) {
		var n map[string]int
		f.mustCall(t, "POST", "/dispatch", `{"guild":1,"content":"over http"}`, &n)
		if n["sessions"] != 1 {
			t.Fatalf("dispatch reached %v sessions, want 1", n)
		}
		m := c.expect(t, "MESSAGE_CREATE", isDispatch("MESSAGE_CREATE"))
		if !strings.Contains(string(m.D), `"over http"`) {
			t.Fatalf("MESSAGE_CREATE %s lacks the content", m.D)
		}
		f.mustCall(t, "POST", "/dispatch", `{"guild_id":"0","t":"PRESENCE_UPDATE","d":{"user":{"id":"1"},"status":"online"}}`, &n)
		c.expect(t, "PRESENCE_UPDATE", isDispatch("PRESENCE_UPDATE"))
		f.mustCall(t, "POST", "/broadcast", `{"t":"TYPING_START","d":{"channel_id":"1","user_id":"2","timestamp":1}}`, &n)
		c.expect(t, "TYPING_START", isDispatch("TYPING_START"))
	})

	t.Run("load", func(t *testing.T) {
		var l loadRun
		if st := f.call(t, "POST", "/load", `{"events":500}`, &l); st != http.StatusAccepted {
			t.Fatalf("POST /load: %d", st)
		}
		f.mustCall(t, "GET", fmt.Sprintf("/loads/%d?wait=10s", l.ID), "", &l)
		if l.Running || l.Result == nil || l.Result.Events != 500 || l.Error != "" {
			t.Fatalf("load %+v, want 500 events done", l)
		}
		for range 500 {
			c.expect(t, "a load MESSAGE_CREATE", isDispatch("MESSAGE_CREATE"))
		}
		// A load at a rate can be stopped.
		f.mustCall(t, "POST", "/load", `{"events":1000000,"rate":10}`, &l)
		f.mustCall(t, "DELETE", fmt.Sprintf("/loads/%d", l.ID), "", &l)
		if l.Running || !strings.Contains(l.Error, "context canceled") {
			t.Fatalf("stopped load %+v, want ended by its cancellation", l)
		}
		var all []loadRun
		f.mustCall(t, "GET", "/loads", "", &all)
		if len(all) != 2 {
			t.Fatalf("GET /loads listed %d loads, want 2", len(all))
		}
	})

	t.Run("shard faults", func(t *testing.T) {
		f.mustCall(t, "POST", "/shards/0/request-heartbeat", "", nil)
		c.expect(t, "op 1", func(m gwMsg) bool { return m.Op == 1 })
		f.mustCall(t, "POST", "/shards/0/latency", `{"ms":1}`, nil)
		f.mustCall(t, "POST", "/shards/0/latency", `{"ms":0}`, nil)
		f.mustCall(t, "POST", "/shards/all/stop-acks", `{"stop":false}`, nil)
		f.mustCall(t, "POST", "/shards/0/reconnect", "", nil)
		c.expect(t, "op 7", func(m gwMsg) bool { return m.Op == 7 })
		f.mustCall(t, "POST", "/shards/0/invalidate", `{"resumable":true}`, nil)
		c.expect(t, "op 9", func(m gwMsg) bool { return m.Op == 9 && string(m.D) == "true" })
	})

	t.Run("close, refuse resumes, hold and release", func(t *testing.T) {
		var n map[string]int
		f.mustCall(t, "POST", "/shards/0/close", `{"code":4000,"reason":"test"}`, &n)
		if n["affected"] != 1 {
			t.Fatalf("close affected %v, want 1", n)
		}
		if err := <-c.done; !websocket.IsCloseError(err, 4000) {
			t.Fatalf("client ended with %v, want close 4000", err)
		}
		f.mustCall(t, "POST", "/shards/0/refuse-resumes", `{"n":1}`, nil)
		c2 := dial(t, f)
		c2.expect(t, "HELLO", func(m gwMsg) bool { return m.Op == 10 })
		c2.send(t, map[string]any{"op": 6, "d": map[string]any{"token": f.token, "session_id": session, "seq": 1}})
		c2.expect(t, "op 9 for a refused resume", func(m gwMsg) bool { return m.Op == 9 && string(m.D) == "false" })
		f.waitStats(t, "a refused resume", func(st discordtest.Stats) bool { return st.ResumesRefused == 1 })

		f.mustCall(t, "POST", "/shards/0/hold", "", nil)
		c3 := dial(t, f)
		c3.expect(t, "HELLO", func(m gwMsg) bool { return m.Op == 10 })
		c3.send(t, map[string]any{"op": 2, "d": map[string]any{"token": f.token, "intents": 513, "shard": []int{0, 1},
			"properties": map[string]string{"os": "linux", "browser": "test", "device": "test"}}})
		f.mustCall(t, "POST", "/shards/0/release", "", nil)
		c3.expect(t, "READY after release", isDispatch("READY"))

		f.mustCall(t, "POST", "/shards/0/drop", "", nil)
		if err := <-c3.done; err == nil {
			t.Fatal("a dropped connection read on")
		}
		f.mustCall(t, "POST", "/restart", `{"keep_sessions":false}`, nil)
		f.waitStats(t, "no session after a restart", func(st discordtest.Stats) bool { return st.Sessions == 0 })
	})

	t.Run("REST faults", func(t *testing.T) {
		f.mustCall(t, "POST", "/rest/fail", `{"route":"GET /users/@me","status":503}`, nil)
		req, _ := http.NewRequest("GET", f.rest+"/users/@me", nil)
		req.Header.Set("Authorization", "Bot "+f.token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 503 {
			t.Fatalf("GET /users/@me after /rest/fail: %d, want 503", resp.StatusCode)
		}
		f.mustCall(t, "POST", "/rest/shared-limit", `{"route":"GET /users/@me","n":2}`, nil)
		f.mustCall(t, "POST", "/rest/clear", "", nil)
		f.mustCall(t, "POST", "/rest/latency", `{"ms":0}`, nil)
		if st := f.call(t, "POST", "/rest/fail", `{"route":"GET /nowhere","status":500}`, nil); st != 400 {
			t.Fatalf("unknown route: %d, want 400", st)
		}
	})

	t.Run("world", func(t *testing.T) {
		c4 := dial(t, f)
		c4.expect(t, "HELLO", func(m gwMsg) bool { return m.Op == 10 })
		identify(t, f, c4)
		var n map[string]int
		f.mustCall(t, "POST", "/guilds/1/availability", `{"available":false}`, &n)
		c4.expect(t, "GUILD_DELETE", isDispatch("GUILD_DELETE"))
		f.mustCall(t, "POST", "/guilds/1/availability", `{"available":true}`, &n)
		c4.expect(t, "GUILD_CREATE", isDispatch("GUILD_CREATE"))
		f.mustCall(t, "POST", "/guilds/1/members/2/add", "", &n)
		c4.expect(t, "GUILD_MEMBER_ADD", isDispatch("GUILD_MEMBER_ADD"))
		var in struct {
			ID, Token string
		}
		f.mustCall(t, "POST", "/interactions", `{"guild":1,"command":"ping"}`, &in)
		c4.expect(t, "INTERACTION_CREATE", isDispatch("INTERACTION_CREATE"))
		resp, err := http.Post(f.rest+"/interactions/"+in.ID+"/"+in.Token+"/callback", "application/json",
			strings.NewReader(`{"type":4,"data":{"content":"pong"}}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 204 {
			t.Fatalf("interaction callback: %d", resp.StatusCode)
		}
		c4.expect(t, "the callback's MESSAGE_CREATE", isDispatch("MESSAGE_CREATE"))

		// Deny SEND_MESSAGES to @everyone in guild 1's first channel.
		var guild struct {
			ID string `json:"id"`
		}
		var chans []struct {
			ID string `json:"id"`
		}
		get := func(path string, out any) {
			req, _ := http.NewRequest("GET", f.rest+path, nil)
			req.Header.Set("Authorization", "Bot "+f.token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			_ = json.NewDecoder(resp.Body).Decode(out)
		}
		var guilds []struct {
			ID string `json:"id"`
		}
		get("/users/@me/guilds", &guilds)
		guild.ID = guilds[1].ID
		get("/guilds/"+guild.ID+"/channels", &chans)
		f.mustCall(t, "PUT", "/channels/"+chans[0].ID+"/overwrites", fmt.Sprintf(`[{"id":%q,"type":0,"deny":"2048"}]`, guild.ID), nil)
		req, _ := http.NewRequest("POST", f.rest+"/channels/"+chans[0].ID+"/messages", strings.NewReader(`{"content":"x"}`))
		req.Header.Set("Authorization", "Bot "+f.token)
		req.Header.Set("Content-Type", "application/json")
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 403 {
			t.Fatalf("send with SEND_MESSAGES denied: %d, want 403", resp.StatusCode)
		}
		f.mustCall(t, "PUT", "/roles/"+guild.ID+"/permissions", `{"permissions":"0"}`, nil)
	})

	t.Run("bad requests say what to change", func(t *testing.T) {
		for _, tc := range []struct{ method, path, body string }{
			{"POST", "/shards/x/drop", ""},
			{"POST", "/shards/0/explode", ""},
			{"POST", "/shards/all/hold", ""},
			{"POST", "/shards/0/close", `{}`},
			{"POST", "/load", `{"events":0}`},
			{"POST", "/load", `{"evnts":10}`},
			{"POST", "/dispatch", `{"guild":99}`},
			{"GET", "/loads/77", ""},
			{"GET", "/nothing", ""},
		} {
			if st := f.call(t, tc.method, tc.path, tc.body, nil); st < 400 {
				t.Errorf("%s %s %s: %d, want an error", tc.method, tc.path, tc.body, st)
			}
		}
	})

	f.mustCall(t, "POST", "/reset-counters", "", nil)
	var st discordtest.Stats
	f.mustCall(t, "GET", "/stats", "", &st)
	if st.Identifies != 0 {
		t.Fatalf("identifies %d after reset", st.Identifies)
	}
}

func TestHelpExitsCleanly(t *testing.T) {
	if err := run(context.Background(), []string{"-h"}, io.Discard, io.Discard); err != nil {
		t.Fatalf("-h: %v", err)
	}
	if err := run(context.Background(), []string{"extra"}, io.Discard, io.Discard); err == nil {
		t.Fatal("a stray argument was accepted")
	}
}
