package discordtest_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/rest"
	"github.com/disgoorg/snowflake/v2"
	"github.com/gorilla/websocket"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/restproxy"
)

func newRESTServer(t *testing.T, opts ...discordtest.Option) *discordtest.Server {
	t.Helper()
	srv := discordtest.NewServer(opts...)
	t.Cleanup(srv.Close)
	return srv
}

// disgoREST returns a disgo REST client of srv with the fleet's limiter,
// set to the simulator's default limits (Discord's).
func disgoREST(t *testing.T, srv *discordtest.Server, token string) rest.Rest {
	t.Helper()
	l, err := restproxy.New(restproxy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	c := rest.NewClient(token, rest.WithURL(srv.RESTURL()), rest.WithLogger(slog.New(slog.DiscardHandler)), l.ConfigOpt())
	t.Cleanup(func() { c.Close(context.Background()) })
	return rest.New(c)
}

// call sends one raw REST request and returns the answer with its body.
func call(t *testing.T, srv *discordtest.Server, method, path, token, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, srv.RESTURL()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bot "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	rs, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Body.Close()
	b, err := io.ReadAll(rs.Body)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(http.DefaultClient.CloseIdleConnections)
	return rs, string(b)
}

func id(v uint64) string { return strconv.FormatUint(v, 10) }

func TestRESTRoutesDecodeWithDisgo(t *testing.T) {
	srv := newRESTServer(t, discordtest.WithGuilds(3), discordtest.WithGuildShape(4, 2, 1))
	c := disgoREST(t, srv, srv.Token())
	app := snowflake.ID(srv.ApplicationID())
	guild := snowflake.ID(srv.GuildID(2))
	channel := snowflake.ID(srv.ChannelID(2, 1))
	member := snowflake.ID(srv.MemberID(2, 3))

	gw, err := c.GetGateway()
	if err != nil || gw.URL != srv.GatewayURL() {
		t.Errorf("GET /gateway: %+v, %v", gw, err)
	}
	gwb, err := c.GetGatewayBot()
	if err != nil || gwb.Shards != srv.RecommendedShards() || gwb.SessionStartLimit.MaxConcurrency != srv.MaxConcurrency() {
		t.Errorf("GET /gateway/bot: %+v, %v", gwb, err)
	}
	me, err := c.GetCurrentUser("")
	if err != nil || me.ID != app || !me.Bot {
		t.Errorf("GET /users/@me: %+v, %v", me, err)
	}
	a, err := c.GetCurrentApplication()
	if err != nil || a.ID != app || a.Bot == nil || a.Bot.ID != app {
		t.Errorf("GET /applications/@me: %+v, %v", a, err)
	}
	g, err := c.GetGuild(guild, true)
	if err != nil || g.ID != guild || g.Name != "guild-2" || len(g.Roles) != 2 || g.ApproximateMemberCount != 4 {
		t.Errorf("GET /guilds/{id}: %+v, %v", g, err)
	}
	m, err := c.GetMember(guild, member)
	if err != nil || m.User.ID != member || m.GuildID != guild {
		t.Errorf("GET /guilds/{id}/members/{user}: %+v, %v", m, err)
	}
	ch, err := c.GetChannel(channel)
	if gc, ok := ch.(discord.GuildTextChannel); err != nil || !ok || gc.ID() != channel || gc.GuildID() != guild {
		t.Errorf("GET /channels/{id}: %#v, %v", ch, err)
	}
	u, err := c.GetUser(member)
	if err != nil || u.ID != member || u.Bot {
		t.Errorf("GET /users/{id}: %+v, %v", u, err)
	}
	// A REST message carries no guild_id: that is a gateway extra field.
	msg, err := c.CreateMessage(channel, discord.MessageCreate{Content: "hello"})
	if err != nil || msg.Content != "hello" || msg.ChannelID != channel || msg.Author.ID != app || msg.GuildID != nil {
		t.Errorf("POST /channels/{id}/messages: %+v, %v", msg, err)
	}

	st := srv.Stats().REST
	for _, r := range []string{"GET /gateway", "GET /gateway/bot", "GET /users/@me", "GET /applications/@me", "GET /guilds/{id}",
		"GET /guilds/{id}/members/{user}", "GET /channels/{id}", "GET /users/{id}", "POST /channels/{id}/messages"} {
		if st.Requests[r] != 1 {
			t.Errorf("Requests[%q] = %d, want 1", r, st.Requests[r])
		}
	}
	if st.Statuses[http.StatusOK] != 9 {
		t.Errorf("Statuses %v, want 9 × 200", st.Statuses)
	}
}

func TestRESTUnknownObjects(t *testing.T) {
	srv := newRESTServer(t, discordtest.WithGuilds(2), discordtest.WithGuildShape(3, 2, 0))
	c := disgoREST(t, srv, srv.Token())
	unknownGuild := snowflake.ID(srv.GuildID(5))
	for _, tc := range []struct {
		name string
		do   func() error
		code rest.JSONErrorCode
	}{
		{"guild", func() error { _, err := c.GetGuild(unknownGuild, false); return err }, 10004},
		{"guild of member", func() error { _, err := c.GetMember(unknownGuild, 1); return err }, 10004},
		{"member of another guild", func() error {
			_, err := c.GetMember(snowflake.ID(srv.GuildID(0)), snowflake.ID(srv.MemberID(1, 1)))
			return err
		}, 10007},
		{"channel", func() error { _, err := c.GetChannel(snowflake.ID(srv.ChannelID(0, 7))); return err }, 10003},
		{"channel for a message", func() error {
			_, err := c.CreateMessage(snowflake.ID(srv.GuildID(0)), discord.MessageCreate{Content: "x"})
			return err
		}, 10003},
		{"user", func() error { _, err := c.GetUser(snowflake.ID(srv.MemberID(0, 2) + 1)); return err }, 10013},
	} {
		err := tc.do()
		var rerr rest.Error
		if !errors.As(err, &rerr) || rerr.Response.StatusCode != http.StatusNotFound || rerr.Code != tc.code || rerr.Message == "" {
			t.Errorf("unknown %s: %v, want 404 with code %d", tc.name, err, tc.code)
		}
	}
	if _, err := c.CreateMessage(snowflake.ID(srv.ChannelID(0, 0)), discord.MessageCreate{}); err == nil {
		t.Error("an empty message was accepted")
	}
}

func TestRESTPathsMethodsAndVersions(t *testing.T) {
	srv := newRESTServer(t, discordtest.WithGuilds(1))
	for _, tc := range []struct {
		method, path string
		status       int
	}{
		{http.MethodGet, "/nothing/here", http.StatusNotFound},
		{http.MethodGet, "/channels/not-a-snowflake", http.StatusNotFound},
		{http.MethodDelete, "/channels/" + id(srv.ChannelID(0, 0)), http.StatusMethodNotAllowed},
	} {
		if rs, body := call(t, srv, tc.method, tc.path, srv.Token(), ""); rs.StatusCode != tc.status || rs.Header.Get("Via") == "" {
			t.Errorf("%s %s: %d %s, want %d with Via", tc.method, tc.path, rs.StatusCode, body, tc.status)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, strings.Replace(srv.RESTURL(), "/v10", "/v6", 1)+"/gateway", nil)
	rs, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	rs.Body.Close()
	if rs.StatusCode != http.StatusBadRequest {
		t.Errorf("API v6: %d, want 400", rs.StatusCode)
	}
}

// rateLimitBody is Discord's 429 body.
type rateLimitBody struct {
	Message    string   `json:"message"`
	RetryAfter *float64 `json:"retry_after"`
	Global     *bool    `json:"global"`
}

func TestREST429HeadersAndBody(t *testing.T) {
	srv := newRESTServer(t, discordtest.WithGuilds(1), discordtest.WithRouteRateLimit(2, time.Minute))
	path := "/channels/" + id(srv.ChannelID(0, 0)) + "/messages"
	msg := `{"content":"x"}`

	rs, _ := call(t, srv, http.MethodPost, path, srv.Token(), msg)
	h := rs.Header
	if rs.StatusCode != http.StatusOK || h.Get("X-RateLimit-Limit") != "2" || h.Get("X-RateLimit-Remaining") != "1" || h.Get("Via") != "1.1 google" {
		t.Fatalf("first: %d %v", rs.StatusCode, h)
	}
	bucket := h.Get("X-RateLimit-Bucket")
	after, err := strconv.ParseFloat(h.Get("X-RateLimit-Reset-After"), 64)
	if err != nil || after <= 59 || after > 60 || !strings.Contains(h.Get("X-RateLimit-Reset-After"), ".") {
		t.Errorf("X-RateLimit-Reset-After %q, want seconds with decimals, about 60", h.Get("X-RateLimit-Reset-After"))
	}
	reset, err := strconv.ParseFloat(h.Get("X-RateLimit-Reset"), 64)
	if now := float64(time.Now().UnixNano()) / 1e9; err != nil || reset < now+58 || reset > now+61 {
		t.Errorf("X-RateLimit-Reset %q, want epoch seconds about a minute ahead", h.Get("X-RateLimit-Reset"))
	}
	call(t, srv, http.MethodPost, path, srv.Token(), msg)

	rs, body := call(t, srv, http.MethodPost, path, srv.Token(), msg)
	h = rs.Header
	if rs.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third: %d, want 429", rs.StatusCode)
	}
	for k, want := range map[string]string{"Via": "1.1 google", "X-RateLimit-Limit": "2", "X-RateLimit-Remaining": "0",
		"X-RateLimit-Scope": "user", "X-RateLimit-Bucket": bucket, "Retry-After": "60"} {
		if h.Get(k) != want {
			t.Errorf("429 header %s = %q, want %q", k, h.Get(k), want)
		}
	}
	if h.Get("X-RateLimit-Global") != "" {
		t.Error("a user-scope 429 has X-RateLimit-Global")
	}
	var rl rateLimitBody
	if err := json.Unmarshal([]byte(body), &rl); err != nil || rl.Message == "" || rl.RetryAfter == nil || *rl.RetryAfter <= 59 || rl.Global == nil || *rl.Global {
		t.Errorf("429 body %s", body)
	}
	st := srv.Stats().REST
	if st.RateLimited["user"] != 1 || st.Invalid != 1 {
		t.Errorf("RateLimited %v, Invalid %d; want user 1, invalid 1", st.RateLimited, st.Invalid)
	}
}

func TestRESTMajorParametersAreIndependent(t *testing.T) {
	srv := newRESTServer(t, discordtest.WithGuilds(2), discordtest.WithRouteRateLimit(1, time.Minute))
	post := func(ch uint64) *http.Response {
		rs, _ := call(t, srv, http.MethodPost, "/channels/"+id(ch)+"/messages", srv.Token(), `{"content":"x"}`)
		return rs
	}
	a, b := srv.ChannelID(0, 0), srv.ChannelID(1, 2)
	first := post(a)
	if post(a).StatusCode != http.StatusTooManyRequests {
		t.Fatal("second message to channel A was not limited")
	}
	other := post(b)
	if other.StatusCode != http.StatusOK {
		t.Errorf("channel B: %d, want 200: a major parameter has its own bucket", other.StatusCode)
	}
	if first.Header.Get("X-RateLimit-Bucket") != other.Header.Get("X-RateLimit-Bucket") {
		t.Error("the bucket hash differs between major parameters of one route")
	}
	get, _ := call(t, srv, http.MethodGet, "/channels/"+id(a), srv.Token(), "")
	if get.StatusCode != http.StatusOK || get.Header.Get("X-RateLimit-Bucket") == first.Header.Get("X-RateLimit-Bucket") {
		t.Errorf("GET channel A: %d, bucket %q; want 200 and another route's bucket", get.StatusCode, get.Header.Get("X-RateLimit-Bucket"))
	}
}

func TestRESTGlobalLimit(t *testing.T) {
	srv := newRESTServer(t, discordtest.WithGuilds(1), discordtest.WithGuildShape(2, 5, 0),
		discordtest.WithRouteRateLimit(100, time.Minute), discordtest.WithGlobalRateLimit(3, time.Minute))
	for i := range 3 {
		if rs, _ := call(t, srv, http.MethodGet, "/channels/"+id(srv.ChannelID(0, i)), srv.Token(), ""); rs.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %d", i, rs.StatusCode)
		}
	}
	rs, body := call(t, srv, http.MethodGet, "/channels/"+id(srv.ChannelID(0, 4)), srv.Token(), "")
	h := rs.Header
	if rs.StatusCode != http.StatusTooManyRequests || h.Get("X-RateLimit-Global") != "true" || h.Get("X-RateLimit-Scope") != "global" ||
		h.Get("Via") == "" || h.Get("Retry-After") != "60" || h.Get("X-RateLimit-Bucket") != "" {
		t.Errorf("4th request: %d %v", rs.StatusCode, h)
	}
	var rl rateLimitBody
	if err := json.Unmarshal([]byte(body), &rl); err != nil || rl.Global == nil || !*rl.Global || rl.RetryAfter == nil {
		t.Errorf("global 429 body %s", body)
	}
	// GET /gateway needs no token and is not counted.
	if rs, _ := call(t, srv, http.MethodGet, "/gateway", "", ""); rs.StatusCode != http.StatusOK {
		t.Errorf("GET /gateway under the global limit: %d", rs.StatusCode)
	}
	if st := srv.Stats().REST; st.RateLimited["global"] != 1 {
		t.Errorf("RateLimited %v, want global 1", st.RateLimited)
	}
}

func TestRESTInvalidRequestBan(t *testing.T) {
	srv := newRESTServer(t, discordtest.WithGuilds(1), discordtest.WithInvalidRequestLimit(3, time.Minute))
	srv.SharedRateLimitNext("GET /users/@me", 1)
	if rs, _ := call(t, srv, http.MethodGet, "/users/@me", srv.Token(), ""); rs.StatusCode != http.StatusTooManyRequests || rs.Header.Get("X-RateLimit-Scope") != "shared" {
		t.Fatalf("shared 429: %d %v", rs.StatusCode, rs.Header)
	}
	for range 3 {
		rs, body := call(t, srv, http.MethodGet, "/users/@me", "wrong-token", "")
		if rs.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "401: Unauthorized") {
			t.Fatalf("bad token: %d %s", rs.StatusCode, body)
		}
	}
	rs, body := call(t, srv, http.MethodGet, "/users/@me", srv.Token(), "")
	if rs.StatusCode != http.StatusTooManyRequests || rs.Header.Get("Via") != "" || strings.HasPrefix(body, "{") || rs.Header.Get("Retry-After") == "" {
		t.Errorf("after 3 invalid requests: %d %v %q; want a 429 without Via or JSON", rs.StatusCode, rs.Header, body)
	}
	st := srv.Stats().REST
	if st.Invalid != 3 || st.RateLimited["cloudflare"] != 1 || st.RateLimited["shared"] != 1 || st.BannedUntil.IsZero() {
		t.Errorf("stats %+v; want 3 invalid (the shared 429 does not count), 1 ban", st)
	}
}

func TestRESTFaults(t *testing.T) {
	srv := newRESTServer(t, discordtest.WithGuilds(1))
	path := "/channels/" + id(srv.ChannelID(0, 0))
	srv.FailNextREST("GET /channels/{id}", http.StatusBadGateway, 2)
	for range 2 {
		if rs, body := call(t, srv, http.MethodGet, path, srv.Token(), ""); rs.StatusCode != http.StatusBadGateway || rs.Header.Get("Via") == "" || !strings.Contains(body, "502") {
			t.Errorf("injected fault: %d %s", rs.StatusCode, body)
		}
	}
	if rs, _ := call(t, srv, http.MethodGet, path, srv.Token(), ""); rs.StatusCode != http.StatusOK {
		t.Errorf("after the faults: %d", rs.StatusCode)
	}
	srv.FailNextREST("", http.StatusForbidden, 1)
	if rs, _ := call(t, srv, http.MethodGet, "/users/@me", srv.Token(), ""); rs.StatusCode != http.StatusForbidden {
		t.Errorf("fault on any route: %d, want 403", rs.StatusCode)
	}
	if st := srv.Stats().REST; st.Invalid != 1 || st.Statuses[http.StatusBadGateway] != 2 {
		t.Errorf("stats %+v; want the 403 invalid, two 502s", st)
	}
	defer func() {
		if recover() == nil {
			t.Error("FailNextREST accepted an unknown route")
		}
	}()
	srv.FailNextREST("GET /nope", 500, 1)
}

func TestRESTBurstFromOneClient(t *testing.T) {
	const n, limit, window = 60, 10, 20 * time.Millisecond // 60 > 50: two global windows
	srv := newRESTServer(t, discordtest.WithGuilds(1), discordtest.WithRouteRateLimit(limit, window))
	c := disgoREST(t, srv, srv.Token()) // the global limit (50/s) binds too
	ch := snowflake.ID(srv.ChannelID(0, 0))
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			if _, err := c.CreateMessage(ch, discord.MessageCreate{Content: strconv.Itoa(i)}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := srv.Stats().REST; len(st.RateLimited) != 0 || st.Requests["POST /channels/{id}/messages"] != n {
		t.Errorf("stats %+v; want %d requests and no 429", st, n)
	}
}

func TestRESTMessageCreateIsDispatched(t *testing.T) {
	srv := newRESTServer(t, discordtest.WithGuilds(1))
	ws, _, err := websocket.DefaultDialer.Dial(srv.GatewayURL()+"?v=10&encoding=json", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	type frame struct {
		Op int             `json:"op"`
		T  string          `json:"t"`
		D  json.RawMessage `json:"d"`
	}
	next := func() frame {
		t.Helper()
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		var f frame
		if err := ws.ReadJSON(&f); err != nil {
			t.Fatal(err)
		}
		return f
	}
	until := func(event string) frame {
		t.Helper()
		for {
			if f := next(); f.T == event {
				return f
			}
		}
	}
	next() // HELLO
	if err := ws.WriteJSON(map[string]any{"op": 2, "d": map[string]any{
		"token": srv.Token(), "intents": 1<<0 | 1<<9,
		"properties": map[string]string{"os": "linux", "browser": "test", "device": "test"},
	}}); err != nil {
		t.Fatal(err)
	}
	until("GUILD_CREATE")

	c := disgoREST(t, srv, srv.Token())
	channel := snowflake.ID(srv.ChannelID(0, 0))
	sent, err := c.CreateMessage(channel, discord.MessageCreate{Content: "over the gateway"})
	if err != nil {
		t.Fatal(err)
	}
	var got discord.Message
	if err := json.Unmarshal(until("MESSAGE_CREATE").D, &got); err != nil {
		t.Fatal(err)
	}
	if got.ID != sent.ID || got.Content != "over the gateway" || got.ChannelID != channel || got.Author.ID != snowflake.ID(srv.ApplicationID()) {
		t.Errorf("MESSAGE_CREATE %+v, want the message the bot sent (%s)", got, sent.ID)
	}
}

// TestRESTDailyUseWithDisgo drives the routes a bot uses every day
// through disgo's REST client, which decodes every answer into its
// structs.
func TestRESTDailyUseWithDisgo(t *testing.T) {
	srv := newRESTServer(t, discordtest.WithGuilds(2), discordtest.WithGuildShape(4, 3, 2),
		discordtest.WithRouteRateLimit(1000, time.Second), discordtest.WithGlobalRateLimit(1000, time.Second))
	c := disgoREST(t, srv, srv.Token())
	app := snowflake.ID(srv.ApplicationID())
	guild, channel := snowflake.ID(srv.GuildID(1)), snowflake.ID(srv.ChannelID(1, 0))
	member := snowflake.ID(srv.MemberID(1, 2))
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	info, err := c.GetBotApplicationInfo()
	must("GET /oauth2/applications/@me", err)
	if info.ID != app || info.Owner == nil {
		t.Errorf("application %+v: want its ID and an owner", info)
	}
	cmds, err := c.SetGlobalCommands(app, []discord.ApplicationCommandCreate{discord.SlashCommandCreate{Name: "ping", Description: "pong"}})
	must("PUT commands", err)
	if len(cmds) != 1 || cmds[0].Name() != "ping" || cmds[0].ID() == 0 {
		t.Errorf("commands %+v", cmds)
	}
	got, err := c.GetGlobalCommands(app, false)
	must("GET commands", err)
	if len(got) != 1 {
		t.Errorf("GET commands: %d, want 1", len(got))
	}
	roles, err := c.GetRoles(guild)
	must("GET roles", err)
	if len(roles) != 3 || roles[0].Permissions&discord.PermissionSendMessages == 0 || roles[1].Position <= roles[2].Position {
		t.Errorf("roles %+v: want @everyone able to send, the bot's role highest", roles)
	}
	chans, err := c.GetGuildChannels(guild)
	must("GET guild channels", err)
	if len(chans) != 3 {
		t.Errorf("%d channels, want 3", len(chans))
	}
	members, err := c.GetMembers(guild, 10, 0)
	must("GET members", err)
	if len(members) != 4 {
		t.Errorf("%d members, want 4", len(members))
	}

	before := time.Now().Add(-time.Second)
	msg, err := c.CreateMessage(channel, discord.MessageCreate{Content: "hello", Nonce: "abc", EnforceNonce: true})
	must("POST message", err)
	if msg.Nonce != "abc" || msg.CreatedAt.Before(before) || !msg.CreatedAt.Equal(msg.ID.Time()) {
		t.Errorf("message %+v: want the nonce echoed and an ID minted now", msg)
	}
	up, err := c.UpdateMessage(channel, msg.ID, discord.MessageUpdate{Content: ptr("edited")})
	must("PATCH message", err)
	if up.Content != "edited" || up.EditedTimestamp == nil {
		t.Errorf("edited %+v", up)
	}
	must("PUT reaction", c.AddReaction(channel, msg.ID, "👍"))
	users, err := c.GetReactions(channel, msg.ID, "👍", discord.MessageReactionTypeNormal, 0, 25)
	must("GET reactions", err)
	if len(users) != 1 || users[0].ID != app {
		t.Errorf("reactions by %+v, want the bot", users)
	}
	fetched, err := c.GetMessage(channel, msg.ID)
	must("GET message", err)
	if len(fetched.Reactions) != 1 || !fetched.Reactions[0].Me {
		t.Errorf("reactions %+v", fetched.Reactions)
	}
	must("DELETE reaction", c.RemoveOwnReaction(channel, msg.ID, "👍"))
	must("typing", c.SendTyping(channel))
	second, err := c.CreateMessage(channel, discord.MessageCreate{Content: "two"})
	must("POST message", err)
	list, err := c.GetMessages(channel, 0, 0, 0, 10)
	must("GET messages", err)
	if len(list) != 2 || list[0].ID != second.ID {
		t.Errorf("messages %d, newest %v; want 2, newest first", len(list), list)
	}
	must("bulk delete", c.BulkDeleteMessages(channel, []snowflake.ID{msg.ID, second.ID}))
	if _, err := c.GetMessage(channel, msg.ID); !isCode(err, 10008) {
		t.Errorf("GET a deleted message: %v, want 10008", err)
	}

	_, err = c.UpdateMember(guild, member, discord.MemberUpdate{Nick: ptr("nick")})
	must("PATCH member", err)
	must("PUT member role", c.AddMemberRole(guild, member, snowflake.ID(srv.RoleID(1, 2))))
	if err := c.AddMemberRole(guild, member, snowflake.ID(srv.RoleID(1, 1))); !isCode(err, 50013) {
		t.Errorf("granting the bot's own role: %v, want 50013", err)
	}
	must("kick", c.RemoveMember(guild, member))

	payload, token := srv.InteractionCreate(1, "ping")
	in, err := discord.UnmarshalInteraction(payload)
	must("decode interaction", err)
	must("callback", c.CreateInteractionResponse(in.ID(), token, discord.InteractionResponse{
		Type: discord.InteractionResponseTypeCreateMessage, Data: discord.MessageCreate{Content: "pong"}}))
	orig, err := c.GetInteractionResponse(app, token)
	must("GET @original", err)
	if orig.Content != "pong" {
		t.Errorf("@original %q", orig.Content)
	}
	fu, err := c.CreateFollowupMessage(app, token, discord.MessageCreate{Content: "more"})
	must("follow-up", err)
	if fu.WebhookID == nil {
		t.Errorf("follow-up %+v has no webhook_id", fu)
	}
	must("DELETE @original", c.DeleteInteractionResponse(app, token))
	err = c.CreateInteractionResponse(in.ID(), token, discord.InteractionResponse{Type: discord.InteractionResponseTypeDeferredCreateMessage})
	if !isCode(err, 40060) {
		t.Errorf("second callback: %v, want 40060", err)
	}
	must("leave guild", c.LeaveGuild(snowflake.ID(srv.GuildID(0))))
}

func ptr[T any](v T) *T { return &v }

// isCode reports whether err is Discord's JSON error with code.
func isCode(err error, code int) bool {
	var re rest.Error
	var pre *rest.Error
	return (errors.As(err, &re) && int(re.Code) == code) || (errors.As(err, &pre) && int(pre.Code) == code)
}
