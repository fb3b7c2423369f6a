package discordtest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/gateway"
	"github.com/gorilla/websocket"
)

// docField is one row of a field table in Discord's API reference.
type docField struct {
	name     string
	typ      string // without the nullable mark
	optional bool   // name? in the docs
	nullable bool   // ?type in the docs
}

type docTable map[string]docField

// loadDocTables reads testdata/discord-fields.txt.
func loadDocTables(t *testing.T) map[string]docTable {
	t.Helper()
	f, err := os.Open("testdata/discord-fields.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tables := map[string]docTable{}
	var cur docTable
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "":
		case strings.HasPrefix(line, "object "):
			name := strings.Fields(line)[1]
			cur = docTable{}
			tables[name] = cur
		default:
			parts := strings.SplitN(strings.TrimSpace(line), "\t", 2)
			if len(parts) != 2 || cur == nil {
				t.Fatalf("testdata: bad line %q", line)
			}
			fd := docField{name: parts[0], typ: parts[1]}
			fd.name, fd.optional = strings.CutSuffix(fd.name, "?")
			fd.typ, fd.nullable = strings.CutPrefix(fd.typ, "?")
			cur[fd.name] = fd
		}
	}
	return tables
}

// shape says how to hold one payload against the docs: the tables whose
// fields it has (an object and its event's extra fields), whether it is
// a partial object (only names and types checked), and the tables of
// nested objects, by field name.
type shape struct {
	tables  []string
	partial bool
	// nested maps a field to the shape of its value (or of each element
	// of its array).
	nested map[string]shape
	// extra are fields Discord sends that its docs no longer list.
	extra map[string]string
	// except are fields documented as always present that this payload
	// may lack, with the reason.
	except map[string]string
}

var (
	userShape        = shape{tables: []string{"user"}}
	partialUser      = shape{tables: []string{"user"}, partial: true}
	roleShape        = shape{tables: []string{"role"}, nested: map[string]shape{"colors": {tables: []string{"role_colors"}}}}
	overwriteShape   = shape{tables: []string{"overwrite"}}
	channelShape     = shape{tables: []string{"channel"}, nested: map[string]shape{"permission_overwrites": overwriteShape}}
	memberShape      = shape{tables: []string{"guild_member"}, nested: map[string]shape{"user": userShape}}
	partialMember    = shape{tables: []string{"guild_member"}, partial: true}
	emojiShape       = shape{tables: []string{"emoji"}, partial: true}
	guildShape       = shape{tables: []string{"guild"}, nested: map[string]shape{"roles": roleShape, "emojis": emojiShape}}
	unavailableGuild = shape{tables: []string{"unavailable_guild"}}
	guildCreateShape = shape{tables: []string{"guild", "guild_create_extra"}, nested: map[string]shape{
		"roles": roleShape, "channels": channelShape, "members": memberShape, "threads": channelShape}}
	reactionShape = shape{tables: []string{"reaction"}, nested: map[string]shape{
		"count_details": {tables: []string{"reaction_count_details"}}, "emoji": emojiShape}}
	messageShape = shape{tables: []string{"message"}, nested: map[string]shape{
		"author": userShape, "mentions": userShape, "reactions": reactionShape}}
	messageEventShape = shape{tables: []string{"message", "message_create_extra"}, nested: map[string]shape{
		"author": userShape, "mentions": userShape, "member": partialMember, "reactions": reactionShape}}
	applicationShape = shape{tables: []string{"application"}, nested: map[string]shape{"bot": partialUser, "owner": partialUser}}
	readyShape       = shape{tables: []string{"ready"},
		nested: map[string]shape{"user": userShape, "guilds": unavailableGuild,
			"application": {tables: []string{"application"}, partial: true}},
		extra: map[string]string{"private_channels": "array"}}
	interactionShape = shape{tables: []string{"interaction"}, nested: map[string]shape{
		"data": {tables: []string{"application_command_data"}},
		// The interaction's partial guild carries the guild's locale.
		"guild":   {tables: []string{"guild"}, partial: true, extra: map[string]string{"locale": "string"}},
		"channel": {tables: []string{"channel"}, partial: true},
		"member":  {tables: []string{"guild_member"}, nested: map[string]shape{"user": userShape}},
		"user":    userShape}}
)

var snowflakeRE = regexp.MustCompile(`^[0-9]{1,20}$`)

// checkShape holds the JSON value v (an object) at path against sh and
// reports every missing field, wrong type and unknown name.
func checkShape(errorf func(string, ...any), tables map[string]docTable, path string, v any, sh shape) {
	obj, ok := v.(map[string]any)
	if !ok {
		errorf("%s: %T, want an object", path, v)
		return
	}
	fields := docTable{}
	for _, name := range sh.tables {
		tab, ok := tables[name]
		if !ok {
			errorf("no table %q in testdata", name)
			return
		}
		for k, f := range tab {
			fields[k] = f
		}
	}
	if !sh.partial {
		for name, f := range fields {
			if _, ok := obj[name]; !ok && !f.optional && sh.except[name] == "" {
				errorf("%s: missing %q (%s)", path, name, f.typ)
			}
		}
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, name := range keys {
		val := obj[name]
		f, ok := fields[name]
		if !ok {
			if typ, ok := sh.extra[name]; ok {
				f = docField{name: name, typ: typ}
			} else {
				errorf("%s: unknown field %q = %v", path, name, val)
				continue
			}
		}
		p := path + "." + name
		if val == nil {
			if !f.nullable {
				errorf("%s: null, but %s is not nullable", p, f.typ)
			}
			continue
		}
		if err := checkType(f.typ, val); err != nil {
			errorf("%s: %v", p, err)
			continue
		}
		if sub, ok := sh.nested[name]; ok {
			if arr, ok := val.([]any); ok {
				for i, e := range arr {
					checkShape(errorf, tables, fmt.Sprintf("%s[%d]", p, i), e, sub)
				}
			} else {
				checkShape(errorf, tables, p, val, sub)
			}
		}
	}
}

// checkType says whether val (not null) has the documented type.
func checkType(typ string, val any) error {
	wrong := func() error { return fmt.Errorf("%T %v, want %s", val, val, typ) }
	isInt := func(v any) bool { n, ok := v.(float64); return ok && n == float64(int64(n)) }
	isSnowflake := func(v any) bool { s, ok := v.(string); return ok && snowflakeRE.MatchString(s) }
	switch {
	case typ == "snowflake":
		if !isSnowflake(val) {
			return wrong()
		}
	case strings.Contains(typ, "ISO8601"):
		s, ok := val.(string)
		if !ok {
			return wrong()
		}
		if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
			return fmt.Errorf("timestamp %q: %v", s, err)
		}
	case typ == "integer or string":
		if _, ok := val.(string); !ok && !isInt(val) {
			return wrong()
		}
	case strings.HasPrefix(typ, "string"):
		if _, ok := val.(string); !ok {
			return wrong()
		}
	case typ == "integer" || typ == "int" || strings.HasSuffix(typ, " type") || typ == "application event webhook status":
		if !isInt(val) {
			return wrong()
		}
	case typ == "boolean":
		if _, ok := val.(bool); !ok {
			return wrong()
		}
	case strings.HasPrefix(typ, "array"):
		arr, ok := val.([]any)
		if !ok {
			return wrong()
		}
		for _, e := range arr {
			switch {
			case strings.Contains(typ, "snowflakes") || strings.Contains(typ, "object ids"):
				if !isSnowflake(e) {
					return fmt.Errorf("element %v, want a snowflake", e)
				}
			case strings.HasSuffix(typ, "strings"):
				if _, ok := e.(string); !ok {
					return fmt.Errorf("element %v, want a string", e)
				}
			case strings.Contains(typ, "integers"):
				if !isInt(e) {
					return fmt.Errorf("element %v, want an integer", e)
				}
			case strings.Contains(typ, "object"):
				if _, ok := e.(map[string]any); !ok {
					return fmt.Errorf("element %v, want an object", e)
				}
			}
		}
		if strings.Contains(typ, "two integers") && len(arr) != 2 {
			return fmt.Errorf("%d elements, want 2", len(arr))
		}
	default: // objects, dictionaries, "resolved data", "interaction data"
		if _, ok := val.(map[string]any); !ok {
			return wrong()
		}
	}
	return nil
}

// shapeRig is a simulator, one identified raw client and the doc tables.
type shapeRig struct {
	t      *testing.T
	s      *Server
	c      *rawClient
	tables map[string]docTable
}

func (r *shapeRig) check(what string, data []byte, sh shape) map[string]any {
	r.t.Helper()
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		r.t.Fatalf("%s: %v in %s", what, err, data)
	}
	checkShape(r.t.Errorf, r.tables, what, v, sh)
	obj, _ := v.(map[string]any)
	return obj
}

// rest sends a request with the bot token and returns status and body.
func (r *shapeRig) rest(method, path, body string) (int, []byte) {
	r.t.Helper()
	req, err := http.NewRequest(method, r.s.RESTURL()+path, strings.NewReader(body))
	if err != nil {
		r.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bot "+r.s.Token())
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (r *shapeRig) restOK(method, path, body string, want int) []byte {
	r.t.Helper()
	st, b := r.rest(method, path, body)
	if st != want {
		r.t.Fatalf("%s %s: %d %s, want %d", method, path, st, b, want)
	}
	return b
}

// restArray checks every element of a JSON array answer.
func (r *shapeRig) restArray(path string, sh shape) int {
	r.t.Helper()
	var arr []json.RawMessage
	if err := json.Unmarshal(r.restOK("GET", path, "", 200), &arr); err != nil {
		r.t.Fatalf("GET %s: %v", path, err)
	}
	for i, e := range arr {
		r.check(fmt.Sprintf("GET %s[%d]", path, i), e, sh)
	}
	return len(arr)
}

// event reads the next dispatch of type t, checks it with the docs'
// tables and with disgo's decoder, and returns it decoded.
func (r *shapeRig) event(t string, sh shape) map[string]any {
	r.t.Helper()
	m := r.c.readDispatch(t)
	if _, err := gateway.UnmarshalEventData(m.D, gateway.EventType(t)); err != nil {
		r.t.Errorf("%s: disgo cannot decode it: %v", t, err)
	}
	return r.check(t, m.D, sh)
}

func TestPayloadShapes(t *testing.T) {
	s := NewServer(WithGuilds(4), WithGuildShape(3, 3, 2), WithIdentifyWindow(time.Millisecond),
		WithRouteRateLimit(1000, time.Second), WithGlobalRateLimit(1000, time.Second))
	defer s.Close()
	r := &shapeRig{t: t, s: s, tables: loadDocTables(t)}
	r.c = dialRaw(t, s.GatewayURL())
	r.c.send(identifyMsg(s.Token(), 0, 1, 513|1<<1|1<<15))
	ready := r.event("READY", readyShape)
	for range 4 {
		r.event("GUILD_CREATE", guildCreateShape)
	}

	g, ch := s.GuildID(1), s.ChannelID(1, 0)
	gs, chs := strconv.FormatUint(g, 10), strconv.FormatUint(ch, 10)

	t.Run("REST objects", func(t *testing.T) {
		r.t = t // the rig reports to the running subtest
		r.check("GET /users/@me", r.restOK("GET", "/users/@me", "", 200), userShape)
		r.check("GET /users/{id}", r.restOK("GET", "/users/"+strconv.FormatUint(s.MemberID(1, 1), 10), "", 200), userShape)
		for _, p := range []string{"/applications/@me", "/oauth2/applications/@me"} {
			app := r.check("GET "+p, r.restOK("GET", p, "", 200), applicationShape)
			if app["owner"] == nil {
				t.Errorf("GET %s has no owner", p)
			}
		}
		r.check("GET /guilds/{id}", r.restOK("GET", "/guilds/"+gs, "", 200), guildShape)
		r.check("GET /guilds/{id}?with_counts", r.restOK("GET", "/guilds/"+gs+"?with_counts=true", "", 200), guildShape)
		if n := r.restArray("/guilds/"+gs+"/roles", roleShape); n != 3 {
			t.Errorf("%d roles, want 3", n)
		}
		r.restArray("/guilds/"+gs+"/channels", channelShape)
		if n := r.restArray("/guilds/"+gs+"/members?limit=10", memberShape); n != 3 {
			t.Errorf("%d members, want 3", n)
		}
		r.check("GET member", r.restOK("GET", "/guilds/"+gs+"/members/"+strconv.FormatUint(s.MemberID(1, 2), 10), "", 200), memberShape)
		r.check("GET /channels/{id}", r.restOK("GET", "/channels/"+chs, "", 200), channelShape)
		r.restArray("/users/@me/guilds", shape{tables: []string{"guild"}, partial: true})
	})

	t.Run("messages", func(t *testing.T) {
		r.t = t // the rig reports to the running subtest
		before := time.Now().Add(-time.Second)
		sent := r.check("POST message", r.restOK("POST", "/channels/"+chs+"/messages", `{"content":"hi","nonce":"n-1","enforce_nonce":true}`, 200), messageShape)
		if sent["nonce"] != "n-1" {
			t.Errorf("nonce %v, want the one sent", sent["nonce"])
		}
		id, _ := strconv.ParseUint(sent["id"].(string), 10, 64)
		if at := snowflakeTime(id); at.Before(before) || at.After(time.Now().Add(time.Second)) {
			t.Errorf("message snowflake time %s, want about now", at)
		}
		if ts, _ := time.Parse(time.RFC3339Nano, sent["timestamp"].(string)); !ts.Equal(snowflakeTime(id)) {
			t.Errorf("timestamp %s, snowflake time %s", ts, snowflakeTime(id))
		}
		ev := r.event("MESSAGE_CREATE", messageEventShape)
		if ev["member"] == nil || ev["guild_id"] != gs || ev["nonce"] != "n-1" || ev["id"] != sent["id"] {
			t.Errorf("MESSAGE_CREATE %v: want member, guild_id, the nonce and the REST message's id", ev)
		}
		again := r.check("POST message again", r.restOK("POST", "/channels/"+chs+"/messages", `{"content":"hi","nonce":"n-1","enforce_nonce":true}`, 200), messageShape)
		if again["id"] != sent["id"] {
			t.Errorf("enforce_nonce: a second message %v, want the first %v", again["id"], sent["id"])
		}
		num := r.check("POST message, integer nonce", r.restOK("POST", "/channels/"+chs+"/messages", `{"content":"x","nonce":12345}`, 200), messageShape)
		if num["nonce"] != float64(12345) {
			t.Errorf("integer nonce echoed as %v", num["nonce"])
		}
		r.event("MESSAGE_CREATE", messageEventShape)

		mid := sent["id"].(string)
		r.check("PATCH message", r.restOK("PATCH", "/channels/"+chs+"/messages/"+mid, `{"content":"edited"}`, 200), messageShape)
		up := r.event("MESSAGE_UPDATE", messageEventShape)
		if up["content"] != "edited" || up["edited_timestamp"] == nil {
			t.Errorf("MESSAGE_UPDATE %v", up)
		}
		r.restOK("PUT", "/channels/"+chs+"/messages/"+mid+"/reactions/%F0%9F%91%8D/@me", "", 204)
		r.event("MESSAGE_REACTION_ADD", shape{tables: []string{"message_reaction_add"}, nested: map[string]shape{
			"member": memberShape, "emoji": emojiShape}})
		got := r.check("GET message", r.restOK("GET", "/channels/"+chs+"/messages/"+mid, "", 200), messageShape)
		if rs, _ := got["reactions"].([]any); len(rs) != 1 {
			t.Errorf("reactions %v, want one", got["reactions"])
		}
		r.restArray("/channels/"+chs+"/messages/"+mid+"/reactions/%F0%9F%91%8D", userShape)
		r.restOK("DELETE", "/channels/"+chs+"/messages/"+mid+"/reactions/%F0%9F%91%8D/@me", "", 204)
		r.event("MESSAGE_REACTION_REMOVE", shape{tables: []string{"message_reaction_remove"}, nested: map[string]shape{"emoji": emojiShape}})
		if n := r.restArray("/channels/"+chs+"/messages", messageShape); n != 2 {
			t.Errorf("GET messages listed %d, want 2", n)
		}
		r.restOK("DELETE", "/channels/"+chs+"/messages/"+mid, "", 204)
		r.event("MESSAGE_DELETE", shape{tables: []string{"message_delete"}})
		a := r.check("a", r.restOK("POST", "/channels/"+chs+"/messages", `{"content":"a"}`, 200), messageShape)
		b := r.check("b", r.restOK("POST", "/channels/"+chs+"/messages", `{"content":"b"}`, 200), messageShape)
		r.restOK("POST", "/channels/"+chs+"/messages/bulk-delete", fmt.Sprintf(`{"messages":[%q,%q]}`, a["id"], b["id"]), 204)
		r.event("MESSAGE_DELETE_BULK", shape{tables: []string{"message_delete_bulk"}})
		r.restOK("GET", "/channels/"+chs+"/messages/"+mid, "", 404)

		// Load and Dispatch payloads have the same shape.
		if _, err := s.Dispatch(g, "MESSAGE_CREATE", s.MessageCreate(g, "built", 7)); err != nil {
			t.Fatal(err)
		}
		r.event("MESSAGE_CREATE", messageEventShape)
	})

	t.Run("members", func(t *testing.T) {
		r.t = t // the rig reports to the running subtest
		for _, e := range []struct {
			t  string
			d  []byte
			sh shape
		}{
			{"GUILD_MEMBER_ADD", s.GuildMemberAdd(1, 2), shape{tables: []string{"guild_member", "guild_member_add_extra"}, nested: map[string]shape{"user": userShape}}},
			{"GUILD_MEMBER_UPDATE", s.GuildMemberUpdate(1, 2), shape{tables: []string{"guild_member_update"}, nested: map[string]shape{"user": userShape},
				// The update event's table omits flags, which members carry.
				extra: map[string]string{"flags": "integer"}}},
			{"GUILD_MEMBER_REMOVE", s.GuildMemberRemove(1, 2), shape{tables: []string{"guild_member_remove"}, nested: map[string]shape{"user": userShape}}},
		} {
			if _, err := s.Dispatch(g, e.t, e.d); err != nil {
				t.Fatal(err)
			}
			r.event(e.t, e.sh)
		}
		member := strconv.FormatUint(s.MemberID(1, 2), 10)
		r.check("PATCH member", r.restOK("PATCH", "/guilds/"+gs+"/members/"+member, `{"nick":"n"}`, 200), memberShape)
		r.event("GUILD_MEMBER_UPDATE", shape{tables: []string{"guild_member_update"}, extra: map[string]string{"flags": "integer"}})
		r.restOK("PUT", "/guilds/"+gs+"/members/"+member+"/roles/"+strconv.FormatUint(s.RoleID(1, 2), 10), "", 204)
		r.event("GUILD_MEMBER_UPDATE", shape{tables: []string{"guild_member_update"}, extra: map[string]string{"flags": "integer"}})
		r.restOK("DELETE", "/guilds/"+gs+"/members/"+member, "", 204)
		r.event("GUILD_MEMBER_REMOVE", shape{tables: []string{"guild_member_remove"}})
	})

	t.Run("guild availability", func(t *testing.T) {
		r.t = t // the rig reports to the running subtest
		if _, err := s.SetGuildAvailable(1, false); err != nil {
			t.Fatal(err)
		}
		del := r.event("GUILD_DELETE", unavailableGuild)
		if del["unavailable"] != true {
			t.Errorf("outage GUILD_DELETE %v, want unavailable true", del)
		}
		// A session identifying during the outage gets the guild unavailable.
		c2 := dialRaw(t, s.GatewayURL())
		c2.send(identifyMsg(s.Token(), 0, 1, 513))
		c2.readDispatch("READY")
		unavailable := 0
		for range 4 {
			m := c2.readDispatch("GUILD_CREATE")
			var v map[string]any
			_ = json.Unmarshal(m.D, &v)
			if v["unavailable"] == true {
				unavailable++
				checkShape(t.Errorf, r.tables, "unavailable GUILD_CREATE", v, unavailableGuild)
			} else {
				checkShape(t.Errorf, r.tables, "GUILD_CREATE", v, guildCreateShape)
			}
		}
		if unavailable != 1 {
			t.Errorf("%d unavailable GUILD_CREATEs, want 1", unavailable)
		}
		if _, err := s.SetGuildAvailable(1, true); err != nil {
			t.Fatal(err)
		}
		r.event("GUILD_CREATE", guildCreateShape)
		r.restOK("DELETE", "/users/@me/guilds/"+gs, "", 204)
		left := r.event("GUILD_DELETE", unavailableGuild)
		if _, ok := left["unavailable"]; ok {
			t.Errorf("GUILD_DELETE on leaving %v, want no unavailable field", left)
		}
	})

	t.Run("interactions", func(t *testing.T) {
		r.t = t // the rig reports to the running subtest
		payload, token := s.InteractionCreate(1, "ping")
		if _, err := s.Dispatch(g, "INTERACTION_CREATE", payload); err != nil {
			t.Fatal(err)
		}
		ev := r.event("INTERACTION_CREATE", interactionShape)
		if _, err := discord.UnmarshalInteraction(payload); err != nil {
			t.Errorf("disgo cannot decode the interaction: %v", err)
		}
		id := ev["id"].(string)
		r.restOK("POST", "/interactions/"+id+"/"+token+"/callback", `{"type":4,"data":{"content":"pong"}}`, 204)
		r.event("MESSAGE_CREATE", messageEventShape)
		if st, b := r.rest("POST", "/interactions/"+id+"/"+token+"/callback", `{"type":4,"data":{"content":"again"}}`); st != 400 || !strings.Contains(string(b), "40060") {
			t.Errorf("second callback: %d %s, want 400 40060", st, b)
		}
		app := strconv.FormatUint(s.ApplicationID(), 10)
		orig := r.check("GET @original", r.restOK("GET", "/webhooks/"+app+"/"+token+"/messages/@original", "", 200), messageShape)
		if orig["content"] != "pong" || orig["webhook_id"] == nil {
			t.Errorf("@original %v", orig)
		}
		r.check("followup", r.restOK("POST", "/webhooks/"+app+"/"+token, `{"content":"more"}`, 200), messageShape)
		r.event("MESSAGE_CREATE", messageEventShape)
		r.check("PATCH @original", r.restOK("PATCH", "/webhooks/"+app+"/"+token+"/messages/@original", `{"content":"pong!"}`, 200), messageShape)
		r.event("MESSAGE_UPDATE", messageEventShape)
		r.restOK("DELETE", "/webhooks/"+app+"/"+token+"/messages/@original", "", 204)
		r.event("MESSAGE_DELETE", shape{tables: []string{"message_delete"}})
		r.restOK("POST", "/interactions/1/nope/callback", `{"type":4,"data":{"content":"x"}}`, 404)
	})

	t.Run("RESUMED", func(t *testing.T) {
		r.t = t // the rig reports to the running subtest
		sid, _ := ready["session_id"].(string)
		s.DropShard(0)
		c3 := dialRaw(t, s.ResumeURL())
		c3.send(map[string]any{"op": opResume, "d": map[string]any{"token": s.Token(), "session_id": sid, "seq": 1}})
		res := c3.readDispatch("RESUMED")
		var v map[string]any
		if err := json.Unmarshal(res.D, &v); err != nil {
			t.Errorf("RESUMED d %s: want an object", res.D)
		}
	})
}

// TestPayloadShapesCatchMistakes makes sure the checker fails what it
// should: a missing field, a wrong type, an unknown name, a null where
// none is allowed.
func TestPayloadShapesCatchMistakes(t *testing.T) {
	tables := loadDocTables(t)
	for _, tc := range []struct{ name, json string }{
		{"missing", `{"id":"1","username":"u","discriminator":"0","global_name":null}`},
		{"wrong type", `{"id":1,"username":"u","discriminator":"0","global_name":null,"avatar":null}`},
		{"unknown", `{"id":"1","username":"u","discriminator":"0","global_name":null,"avatar":null,"colour":1}`},
		{"null", `{"id":"1","username":null,"discriminator":"0","global_name":null,"avatar":null}`},
	} {
		var v any
		_ = json.Unmarshal([]byte(tc.json), &v)
		var errs []string
		checkShape(func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }, tables, "user", v, userShape)
		if len(errs) == 0 {
			t.Errorf("%s: %s passed the user table", tc.name, tc.json)
		}
	}
}

// TestLoggerReportsLifecycle checks that WithLogger sees connections,
// IDENTIFYs, RESUMEs and closes, and never the token.
func TestLoggerReportsLifecycle(t *testing.T) {
	var mu sync.Mutex
	var buf strings.Builder
	h := slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}), nil)
	s := NewServer(WithGuilds(1), WithLogger(slog.New(h)))
	c := dialRaw(t, s.GatewayURL())
	sid, seq := c.identify(s.Token(), 0, 1)
	s.DropShard(0)
	c2 := dialRaw(t, s.ResumeURL())
	c2.send(map[string]any{"op": opResume, "d": map[string]any{"token": s.Token(), "session_id": sid, "seq": seq}})
	c2.readDispatch("RESUMED")
	_ = c2.ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(4000, "bye"))
	c2.closeCode()
	s.Close()
	mu.Lock()
	out := buf.String()
	mu.Unlock()
	for _, want := range []string{`msg="discordtest: connection"`, `msg="discordtest: identify"`, `msg="discordtest: resume"`,
		`msg="discordtest: connection closed"`, "by=client code=4000", "by=server code=0"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, s.Token()) {
		t.Error("the token was logged")
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestPermissionsEnforced checks that REST calls are judged by the
// permissions computed from roles and channel overwrites.
func TestPermissionsEnforced(t *testing.T) {
	s := NewServer(WithGuilds(2), WithGuildShape(3, 3, 2), WithRouteRateLimit(1000, time.Second),
		WithGlobalRateLimit(1000, time.Second))
	defer s.Close()
	r := &shapeRig{t: t, s: s}
	ch := strconv.FormatUint(s.ChannelID(0, 1), 10)
	post := func() (int, string) {
		st, b := r.rest("POST", "/channels/"+ch+"/messages", `{"content":"x"}`)
		return st, string(b)
	}
	if p := s.Permissions(0, 0, 1); p&(PermViewChannel|PermSendMessages) != PermViewChannel|PermSendMessages {
		t.Fatalf("the bot's default permissions %b lack view and send", p)
	}
	if st, b := post(); st != 200 {
		t.Fatalf("default world: %d %s", st, b)
	}
	everyone := s.GuildID(0)
	s.SetChannelOverwrites(s.ChannelID(0, 1), Overwrite{ID: everyone, Deny: PermSendMessages})
	if st, b := post(); st != 403 || !strings.Contains(b, "50013") {
		t.Errorf("send denied to @everyone: %d %s, want 403 50013", st, b)
	}
	// An allow for the bot's role outranks @everyone's deny.
	s.SetChannelOverwrites(s.ChannelID(0, 1), Overwrite{ID: everyone, Deny: PermSendMessages},
		Overwrite{ID: s.RoleID(0, 1), Allow: PermSendMessages})
	if st, b := post(); st != 200 {
		t.Errorf("role allow over @everyone deny: %d %s", st, b)
	}
	// A member overwrite comes last.
	s.SetChannelOverwrites(s.ChannelID(0, 1), Overwrite{ID: s.RoleID(0, 1), Allow: PermSendMessages},
		Overwrite{ID: s.ApplicationID(), Member: true, Deny: PermViewChannel})
	if st, b := post(); st != 403 || !strings.Contains(b, "50001") {
		t.Errorf("view denied to the bot: %d %s, want 403 50001", st, b)
	}
	var ch0 map[string]any
	s.SetChannelOverwrites(s.ChannelID(0, 1))
	_ = json.Unmarshal(r.restOK("GET", "/channels/"+ch, "", 200), &ch0)
	if ows, _ := ch0["permission_overwrites"].([]any); len(ows) != 0 {
		t.Errorf("overwrites %v after clearing", ows)
	}
	// Without send on @everyone and the bot's role, nothing allows it.
	s.SetRolePermissions(everyone, DefaultEveryonePermissions&^PermSendMessages)
	if st, b := post(); st != 403 || !strings.Contains(b, "50013") {
		t.Errorf("send removed from @everyone: %d %s, want 403 50013", st, b)
	}
	var roles []map[string]any
	_ = json.Unmarshal(r.restOK("GET", "/guilds/"+strconv.FormatUint(everyone, 10)+"/roles", "", 200), &roles)
	if want := strconv.FormatUint(DefaultEveryonePermissions&^PermSendMessages, 10); len(roles) == 0 || roles[0]["permissions"] != want {
		t.Errorf("@everyone in GET roles %v, want permissions %s", roles, want)
	}
	s.SetRolePermissions(s.RoleID(0, 1), PermAdministrator)
	if st, b := post(); st != 200 {
		t.Errorf("administrator: %d %s", st, b)
	}
	// Nobody outranks the owner: kicking them is refused.
	owner := strconv.FormatUint(s.MemberID(0, 1), 10)
	if st, b := r.rest("DELETE", "/guilds/"+strconv.FormatUint(everyone, 10)+"/members/"+owner, ""); st != 403 || !strings.Contains(string(b), "50013") {
		t.Errorf("kicking the owner: %d %s, want 403 50013", st, b)
	}
}
