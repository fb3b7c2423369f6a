package shardgroup

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/disgoorg/disgo/gateway"
	djson "github.com/disgoorg/json"
	gojson "github.com/goccy/go-json"
	"github.com/gorilla/websocket"

	"github.com/gofleet/fleet/discordtest"
)

// simulatorFrames collects what the simulator sends a raw client: HELLO,
// READY, GUILD_CREATE (large and small), MESSAGE_CREATE, then RESUMED and
// the replay after a resume, op 7, op 9 and heartbeat ACKs.
func simulatorFrames(t *testing.T) [][]byte {
	t.Helper()
	srv := discordtest.NewServer(discordtest.WithGuilds(3), discordtest.WithGuildShape(60, 4, 3),
		discordtest.WithIdentifyWindow(time.Millisecond))
	defer srv.Close()
	var frames [][]byte
	read := func(ws *websocket.Conn, until func(op int, t string) bool) {
		t.Helper()
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			_, data, err := ws.ReadMessage()
			if err != nil {
				t.Fatalf("read: %v (after %d frames)", err, len(frames))
			}
			frames = append(frames, data)
			var e struct {
				Op int    `json:"op"`
				T  string `json:"t"`
			}
			_ = json.Unmarshal(data, &e)
			if until(e.Op, e.T) {
				return
			}
		}
	}
	send := func(ws *websocket.Conn, v any) {
		t.Helper()
		b, _ := json.Marshal(v)
		if err := ws.WriteMessage(websocket.TextMessage, b); err != nil {
			t.Fatal(err)
		}
	}
	ws, _, err := websocket.DefaultDialer.Dial(srv.GatewayURL()+"?v=10&encoding=json", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	send(ws, map[string]any{"op": 2, "d": map[string]any{"token": srv.Token(), "intents": 513, "large_threshold": 50,
		"properties": map[string]string{"os": "linux", "browser": "test", "device": "test"}}})
	guilds := 0
	read(ws, func(op int, typ string) bool {
		if typ == "GUILD_CREATE" {
			guilds++
		}
		return guilds == 3
	})
	send(ws, map[string]any{"op": 1, "d": 4})
	read(ws, func(op int, _ string) bool { return op == 11 })
	gid := srv.GuildID(1)
	if _, err := srv.Dispatch(gid, "MESSAGE_CREATE", srv.MessageCreate(gid, "h\u00e9llo \"q\" \U0001F600 <@1>", 7)); err != nil {
		t.Fatal(err)
	}
	read(ws, func(_ int, typ string) bool { return typ == "MESSAGE_CREATE" })
	var ready struct {
		D struct {
			SessionID string `json:"session_id"`
			ResumeURL string `json:"resume_gateway_url"`
		} `json:"d"`
	}
	if err := json.Unmarshal(frames[1], &ready); err != nil || ready.D.SessionID == "" {
		t.Fatalf("second frame is not READY: %s", frames[1])
	}
	srv.Reconnect(0)
	read(ws, func(op int, _ string) bool { return op == 7 })
	ws.Close()

	ws2, _, err := websocket.DefaultDialer.Dial(ready.D.ResumeURL+"?v=10&encoding=json", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws2.Close()
	read(ws2, func(op int, _ string) bool { return op == 10 })
	send(ws2, map[string]any{"op": 6, "d": map[string]any{"token": srv.Token(), "session_id": ready.D.SessionID, "seq": 2}})
	read(ws2, func(_ int, typ string) bool { return typ == "RESUMED" })
	srv.InvalidateSession(0, false)
	read(ws2, func(op int, _ string) bool { return op == 9 })
	return frames
}

// documentedFrames are dispatches in the shapes Discord's documentation
// gives, with the fields a decoder can get wrong: nulls, nested objects
// with their own UnmarshalJSON (components, interactions, channels),
// escapes, unknown fields and event types.
var documentedFrames = []string{
	`{"op":10,"d":{"heartbeat_interval":41250,"_trace":["gateway-prd-1"]},"s":null,"t":null}`,
	`{"op":11,"s":null,"t":null,"d":null}`,
	`{"op":1,"d":251,"s":null,"t":null}`,
	`{"op":7,"d":null,"s":null,"t":null}`,
	`{"op":9,"d":true,"s":null,"t":null}`,
	`{"op":0,"s":1,"t":"READY","d":{"v":10,"user":{"id":"80351110224678912","username":"bot","discriminator":"0","global_name":null,"avatar":"8342729096ea3675442027381ff50dfe","bot":true,"verified":true,"mfa_enabled":true,"flags":0},"guilds":[{"id":"41771983423143937","unavailable":true}],"session_id":"9f1c2e","resume_gateway_url":"wss://gateway-us-east1-b.discord.gg","shard":[0,1],"application":{"id":"80351110224678912","flags":8388608},"_trace":["x"]}}`,
	`{"op":0,"s":2,"t":"MESSAGE_CREATE","d":{"type":19,"tts":false,"timestamp":"2024-03-12T18:04:55.123000+00:00","edited_timestamp":"2024-03-12T18:05:01.5+00:00","pinned":false,"nonce":12345,"mentions":[{"id":"53908232506183680","username":"Mason","discriminator":"0","avatar":null,"public_flags":64,"member":{"roles":["41771983423143936"],"joined_at":"2015-04-26T06:26:56.936000+00:00","deaf":false,"mute":false,"flags":0}}],"mention_roles":["41771983423143936"],"mention_everyone":false,"member":{"roles":[],"premium_since":null,"pending":false,"nick":"Nick","mute":false,"joined_at":"2023-01-01T00:00:00+00:00","flags":0,"deaf":false,"communication_disabled_until":null,"avatar":null},"id":"334385199974967042","flags":4,"embeds":[{"type":"rich","title":"T","description":"D","url":"https://example.com","color":16711680,"timestamp":"2024-03-12T18:04:55+00:00","footer":{"text":"f","icon_url":"https://example.com/i.png"},"fields":[{"name":"a","value":"b","inline":true}],"author":{"name":"n"},"thumbnail":{"url":"https://example.com/t.png","width":10,"height":20}}],"content":"Supa Hot \u00e9 \ud83d\ude00 \"quoted\" \\ back","components":[{"type":1,"id":1,"components":[{"type":2,"id":2,"style":1,"label":"Click","custom_id":"click_one","emoji":{"name":"\ud83d\udd25"}},{"type":2,"id":3,"style":5,"label":"Link","url":"https://example.com"}]},{"type":1,"id":4,"components":[{"type":3,"id":5,"custom_id":"select","options":[{"label":"A","value":"a","default":true},{"label":"B","value":"b","description":"bee"}],"placeholder":"choose","min_values":1,"max_values":2}]}],"channel_id":"290926798999357250","guild_id":"290926798626357250","author":{"username":"Mason","public_flags":131141,"id":"53908232506183680","discriminator":"0","global_name":"Mason","avatar":"a_d5efa99b3eeaa7dd43acca82f5692432","avatar_decoration_data":null},"attachments":[{"id":"1","filename":"a.png","size":1024,"url":"https://cdn.example.com/a.png","proxy_url":"https://media.example.com/a.png","width":64,"height":64,"content_type":"image/png","ephemeral":false}],"reactions":[{"count":2,"count_details":{"burst":0,"normal":2},"me":false,"me_burst":false,"emoji":{"id":null,"name":"\ud83d\udd25"},"burst_colors":[]}],"message_reference":{"type":0,"message_id":"334385199974967041","channel_id":"290926798999357250","guild_id":"290926798626357250"},"referenced_message":{"id":"334385199974967041","channel_id":"290926798999357250","author":{"id":"1","username":"u","discriminator":"0","avatar":null},"content":"original","timestamp":"2024-03-12T18:00:00+00:00","edited_timestamp":null,"tts":false,"mention_everyone":false,"mentions":[],"mention_roles":[],"attachments":[],"embeds":[],"pinned":false,"type":0},"sticker_items":[{"id":"749054660769218631","name":"Wave","format_type":3}],"webhook_id":null,"unknown_future_field":{"a":[1,2,{"b":null}]}}}`,
	`{"op":0,"s":3,"t":"MESSAGE_UPDATE","d":{"id":"334385199974967042","channel_id":"290926798999357250","guild_id":"290926798626357250","author":{"id":"53908232506183680","username":"Mason","discriminator":"0","avatar":null},"content":"edited","timestamp":"2024-03-12T18:04:55+00:00","edited_timestamp":"2024-03-12T18:06:00+00:00","tts":false,"mention_everyone":false,"mentions":[],"mention_roles":[],"attachments":[],"embeds":[],"pinned":true,"type":0}}`,
	`{"op":0,"s":4,"t":"MESSAGE_DELETE","d":{"id":"334385199974967042","channel_id":"290926798999357250","guild_id":"290926798626357250"}}`,
	`{"op":0,"s":5,"t":"MESSAGE_DELETE_BULK","d":{"ids":["1","2","3"],"channel_id":"290926798999357250"}}`,
	`{"op":0,"s":6,"t":"MESSAGE_REACTION_ADD","d":{"user_id":"53908232506183680","type":0,"message_id":"334385199974967042","message_author_id":"1","member":{"user":{"id":"53908232506183680","username":"Mason","discriminator":"0","avatar":null},"roles":[],"joined_at":"2023-01-01T00:00:00+00:00","deaf":false,"mute":false,"flags":0},"emoji":{"name":"blob","id":"41771983429993937","animated":true},"channel_id":"290926798999357250","burst":false,"guild_id":"290926798626357250"}}`,
	`{"op":0,"s":7,"t":"TYPING_START","d":{"channel_id":"290926798999357250","guild_id":"290926798626357250","user_id":"53908232506183680","timestamp":1710266695,"member":{"user":{"id":"53908232506183680","username":"Mason","discriminator":"0","avatar":null},"roles":[],"joined_at":"2023-01-01T00:00:00+00:00","deaf":false,"mute":false,"flags":0}}}`,
	`{"op":0,"s":8,"t":"GUILD_MEMBER_ADD","d":{"guild_id":"290926798626357250","user":{"id":"53908232506183680","username":"Mason","discriminator":"0","avatar":null,"bot":false},"nick":null,"roles":["41771983423143936"],"joined_at":"2024-03-12T18:04:55.123456+00:00","premium_since":null,"deaf":false,"mute":false,"pending":true,"flags":1,"communication_disabled_until":"2024-03-13T00:00:00+00:00"}}`,
	`{"op":0,"s":9,"t":"GUILD_MEMBER_UPDATE","d":{"guild_id":"290926798626357250","roles":[],"user":{"id":"53908232506183680","username":"Mason","discriminator":"0","avatar":null},"nick":"new","avatar":null,"joined_at":"2024-03-12T18:04:55+00:00","premium_since":null,"deaf":false,"mute":false,"pending":false,"communication_disabled_until":null,"flags":0}}`,
	`{"op":0,"s":10,"t":"GUILD_MEMBER_REMOVE","d":{"guild_id":"290926798626357250","user":{"id":"53908232506183680","username":"Mason","discriminator":"0","avatar":null}}}`,
	`{"op":0,"s":11,"t":"PRESENCE_UPDATE","d":{"user":{"id":"53908232506183680"},"guild_id":"290926798626357250","status":"online","activities":[{"name":"Rocket League","type":0,"created_at":1507665886184,"application_id":"379286085710381999","state":"In a Match","details":"Ranked Duos: 2-1","timestamps":{"start":15112000660000},"party":{"id":"9dd6594e-81b3-49f6-a6b5-a679e6a060d3","size":[2,2]},"assets":{"large_image":"351371005538729000","large_text":"DFH Stadium"}},{"name":"Custom Status","type":4,"state":"hi","emoji":{"name":"\ud83d\udc4b"},"created_at":1507665886185}],"client_status":{"desktop":"online","mobile":"idle"}}}`,
	`{"op":0,"s":12,"t":"CHANNEL_CREATE","d":{"id":"41771983423143937","guild_id":"41771983423143937","name":"general","type":0,"position":6,"permission_overwrites":[{"id":"41771983423143937","type":0,"allow":"1024","deny":"2048"}],"rate_limit_per_user":2,"nsfw":true,"topic":"24/7 chat about how to gank Mike #2","last_message_id":"155117677105512449","parent_id":"399942396007890945","default_auto_archive_duration":60,"flags":0}}`,
	`{"op":0,"s":13,"t":"CHANNEL_CREATE","d":{"id":"41771983423143938","guild_id":"41771983423143937","name":"voice","type":2,"position":1,"permission_overwrites":[],"bitrate":64000,"user_limit":10,"rtc_region":null,"parent_id":null,"nsfw":false}}`,
	`{"op":0,"s":14,"t":"THREAD_CREATE","d":{"id":"41771983423143939","guild_id":"41771983423143937","parent_id":"41771983423143937","owner_id":"53908232506183680","name":"a thread","type":11,"last_message_id":null,"message_count":0,"member_count":1,"rate_limit_per_user":0,"thread_metadata":{"archived":false,"auto_archive_duration":1440,"archive_timestamp":"2024-03-12T18:04:55+00:00","locked":false,"create_timestamp":"2024-03-12T18:04:55+00:00"},"total_message_sent":0,"newly_created":true,"flags":0,"applied_tags":[]}}`,
	`{"op":0,"s":15,"t":"GUILD_ROLE_CREATE","d":{"guild_id":"41771983423143937","role":{"id":"41771983423143936","name":"WE DEM BOYZZ!!!!!!","color":3447003,"colors":{"primary_color":3447003,"secondary_color":null,"tertiary_color":null},"hoist":true,"icon":"cf3ced8600b777c9486c6d8d84fb4327","unicode_emoji":null,"position":1,"permissions":"66321471","managed":false,"mentionable":false,"flags":0,"tags":{"bot_id":"1","premium_subscriber":null}}}}`,
	`{"op":0,"s":16,"t":"VOICE_STATE_UPDATE","d":{"guild_id":"41771983423143937","channel_id":"157733188964188161","user_id":"80351110224678912","member":{"user":{"id":"80351110224678912","username":"Nelly","discriminator":"0","avatar":null},"roles":[],"joined_at":"2023-01-01T00:00:00+00:00","deaf":false,"mute":false,"flags":0},"session_id":"90326bd25d71d39b9ef95b299e3872ff","deaf":false,"mute":false,"self_deaf":false,"self_mute":true,"self_stream":false,"self_video":false,"suppress":false,"request_to_speak_timestamp":"2021-03-31T18:45:31.297561+00:00"}}`,
	`{"op":0,"s":17,"t":"GUILD_MEMBERS_CHUNK","d":{"guild_id":"41771983423143937","members":[{"user":{"id":"1","username":"a","discriminator":"0","avatar":null},"roles":[],"joined_at":"2023-01-01T00:00:00+00:00","deaf":false,"mute":false,"flags":0}],"chunk_index":0,"chunk_count":1,"not_found":["2"],"presences":[{"user":{"id":"1"},"status":"idle","activities":[],"client_status":{"web":"idle"}}],"nonce":"n1"}}`,
	`{"op":0,"s":18,"t":"INTERACTION_CREATE","d":{"type":2,"token":"A_UNIQUE_TOKEN","member":{"user":{"id":"53908232506183680","username":"Mason","avatar":"a_d5efa99b3eeaa7dd43acca82f5692432","discriminator":"0","public_flags":131141},"roles":["539082325061836999"],"premium_since":null,"permissions":"2147483647","pending":false,"nick":null,"mute":false,"joined_at":"2017-03-13T19:19:14.040000+00:00","deaf":false,"flags":0},"id":"786008729715212338","guild_id":"290926798626357999","app_permissions":"442368","guild_locale":"en-US","locale":"en-US","entitlements":[],"authorizing_integration_owners":{"0":"290926798626357999"},"context":0,"attachment_size_limit":26214400,"data":{"options":[{"type":3,"name":"cardname","value":"The Gitrog Monster"},{"type":6,"name":"who","value":"53908232506183680"}],"type":1,"name":"cardsearch","id":"771825006014889984","resolved":{"users":{"53908232506183680":{"id":"53908232506183680","username":"Mason","discriminator":"0","avatar":null}}}},"channel_id":"645027906669510667","channel":{"id":"645027906669510667","type":0,"guild_id":"290926798626357999","name":"general","position":0,"permission_overwrites":[],"nsfw":false,"permissions":"2147483647"},"application_id":"771825006014889984","version":1}}`,
	`{"op":0,"s":19,"t":"INTERACTION_CREATE","d":{"type":3,"token":"t","id":"786008729715212339","application_id":"771825006014889984","version":1,"guild_id":"290926798626357999","channel_id":"645027906669510667","member":{"user":{"id":"1","username":"a","discriminator":"0","avatar":null},"roles":[],"permissions":"8","joined_at":"2017-03-13T19:19:14+00:00","deaf":false,"mute":false,"flags":0},"locale":"fr","app_permissions":"8","entitlements":[],"authorizing_integration_owners":{"0":"290926798626357999"},"context":0,"data":{"custom_id":"click_one","component_type":2},"message":{"id":"334385199974967042","channel_id":"645027906669510667","author":{"id":"771825006014889984","username":"bot","discriminator":"0","avatar":null,"bot":true},"content":"","timestamp":"2024-03-12T18:04:55+00:00","edited_timestamp":null,"tts":false,"mention_everyone":false,"mentions":[],"mention_roles":[],"attachments":[],"embeds":[],"pinned":false,"type":0,"components":[{"type":1,"components":[{"type":2,"style":1,"label":"Click","custom_id":"click_one"}]}]}}}`,
	`{"op":0,"s":20,"t":"GUILD_UPDATE","d":{"id":"41771983423143937","name":"G","icon":null,"splash":null,"discovery_splash":null,"owner_id":"80351110224678912","afk_channel_id":null,"afk_timeout":300,"verification_level":1,"default_message_notifications":0,"explicit_content_filter":0,"roles":[],"emojis":[{"id":"41771983429993937","name":"LUL","roles":[],"require_colons":true,"managed":false,"animated":false,"available":true}],"features":["COMMUNITY","NEWS"],"mfa_level":0,"application_id":null,"system_channel_id":null,"system_channel_flags":0,"rules_channel_id":null,"vanity_url_code":null,"description":null,"banner":null,"premium_tier":0,"preferred_locale":"en-US","public_updates_channel_id":null,"nsfw_level":0,"premium_progress_bar_enabled":false,"safety_alerts_channel_id":null,"stickers":[]}}`,
	`{"op":0,"s":21,"t":"GUILD_DELETE","d":{"id":"41771983423143937","unavailable":true}}`,
	`{"op":0,"s":22,"t":"SOME_FUTURE_EVENT","d":{"x":[1,"two",{"three":null}],"y":1.5e3}}`,
	` { "T" : "MESSAGE_DELETE" , "Op":0, "s" : 24 , "d" : {"id":"1","channel_id":"2"} } `,
	`{"op":0,"t":"MESSAGE_\u0044ELETE","s":25,"d":{"id":"1","channel_id":"2"}}`,
	`{"d":{"id":"1","channel_id":"2","guild_id":"3"},"op":0,"s":26,"t":"MESSAGE_DELETE","extra":[{"a":"b\"}{]"},null,true,-1.5e-3]}`,
	`{"op":0,"s":null,"t":"MESSAGE_CREATE","d":null}`,
	`{"t":"MESSAGE_CREATE","s":23,"op":0,"d":{"id":"1","channel_id":"2","author":{"id":"3","username":"dm","discriminator":"0","avatar":null},"content":"key order and a DM","timestamp":"2024-01-01T00:00:00Z","edited_timestamp":null,"tts":false,"mention_everyone":false,"mentions":[],"mention_roles":[],"attachments":[],"embeds":[],"pinned":false,"type":0}}`,
}

// TestDecodeMatchesEncodingJSON decodes every frame of the corpus with the
// fleet's decoder and with disgo's own path on encoding/json, and wants the
// same typed values.
func TestDecodeMatchesEncodingJSON(t *testing.T) {
	frames := simulatorFrames(t)
	types := map[string]bool{}
	for _, f := range documentedFrames {
		frames = append(frames, []byte(f))
	}
	fast := make([]gateway.Message, len(frames))
	for i, f := range frames {
		buf := bytes.Clone(f)
		m, err := decodeMessage(buf)
		if err != nil {
			t.Fatalf("frame %d: %v\n%s", i, err, f)
		}
		var e struct {
			D json.RawMessage `json:"d"`
		}
		_ = json.Unmarshal(f, &e)
		if !bytes.Equal(m.RawD, e.D) {
			t.Errorf("frame %d: raw d %s, want %s", i, m.RawD, e.D)
		}
		// RawD shares the read buffer; nothing else may.
		m.RawD = bytes.Clone(m.RawD)
		for j := range buf {
			buf[j] = 'x'
		}
		fast[i] = m
		types[string(m.T)] = true
	}
	for _, want := range []string{"READY", "GUILD_CREATE", "MESSAGE_CREATE", "RESUMED", "INTERACTION_CREATE"} {
		if !types[want] {
			t.Errorf("corpus has no %s", want)
		}
	}

	// disgo's path with the codec it ships with. No goroutine decodes
	// meanwhile: the simulator is closed and nothing else runs.
	saved := djson.Unmarshal
	djson.Unmarshal = json.Unmarshal
	defer func() { djson.Unmarshal = saved }()
	for i, f := range frames {
		var want gateway.Message
		if err := json.Unmarshal(f, &want); err != nil {
			t.Fatalf("frame %d: encoding/json: %v", i, err)
		}
		if !reflect.DeepEqual(fast[i], want) {
			t.Errorf("frame %d (op %d %s) differs:\nfast %#v\nwant %#v", i, want.Op, want.T, fast[i], want)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, f := range []string{``, `{`, `{"op":0,"t":"MESSAGE_CREATE","d":{"id":}}`, `{"op":10,"d":{"heartbeat_interval":"x"}}`, `[]`} {
		if _, err := decodeMessage([]byte(f)); err == nil {
			t.Errorf("%q: no error", f)
		}
	}
}

// FuzzDecode checks that the one-pass envelope reader never panics and,
// on every payload the general decoder reads, gives the same message.
func FuzzDecode(f *testing.F) {
	for _, s := range documentedFrames {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := decodeMessage(data)
		var e envelope
		if gojson.Unmarshal(data, &e) != nil {
			return
		}
		want, werr := decodeData(data, e)
		if werr != nil {
			return
		}
		if err != nil {
			t.Fatalf("%q: %v, the general decoder reads it", data, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q:\n got %#v\nwant %#v", data, got, want)
		}
	})
}

func BenchmarkDecodeMessageCreate(b *testing.B) {
	frame := []byte(`{"op":0,"s":42,"t":"MESSAGE_CREATE","d":{"id":"1234567890123456789","channel_id":"1234567890123456790","guild_id":"1234567890123456000","author":{"id":"1234567890123451111","username":"user1","discriminator":"0","global_name":"User 1","avatar":null,"bot":false},"content":"load","timestamp":"2024-01-01T00:00:00Z","edited_timestamp":null,"tts":false,"mention_everyone":false,"mentions":[],"mention_roles":[],"attachments":[],"embeds":[],"pinned":false,"type":0,"nonce":"12"}}`)
	b.Run("fleet", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decodeMessage(frame); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("disgo-encoding-json", func(b *testing.B) {
		saved := djson.Unmarshal
		djson.Unmarshal = json.Unmarshal
		defer func() { djson.Unmarshal = saved }()
		b.ReportAllocs()
		for b.Loop() {
			var m gateway.Message
			if err := json.Unmarshal(frame, &m); err != nil {
				b.Fatal(err)
			}
		}
	})
}
