package shardgroup

import (
	"reflect"
	"strings"
	"testing"

	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/gateway"
)

// simMessage is a MESSAGE_CREATE's d as the simulator sends it.
const simMessage = `{"id":"1575692025477464064","channel_id":"4503599627632640","guild_id":"4503599627370496","member":{"roles":["4503599627894786"],"joined_at":"2024-01-01T00:00:00.000000+00:00","deaf":false,"mute":false,"flags":0},"author":{"id":"4503599628156929","username":"user56929","discriminator":"0","global_name":null,"avatar":null},"content":"load","timestamp":"2026-11-27T01:57:33.816000+00:00","edited_timestamp":null,"tts":false,"mention_everyone":false,"mentions":[],"mention_roles":[],"attachments":[],"embeds":[],"pinned":false,"type":0,"nonce":"0"}`

// scanCases are message payloads: fast ones scanMessage reads, the others
// it leaves to the general decoder.
var scanCases = []struct {
	name string
	d    string
	fast bool
}{
	{"simulator", simMessage, true},
	{"discord", `{"type":0,"tts":false,"timestamp":"2024-03-12T18:04:55.123000+00:00","pinned":false,"nonce":"1217146513459232768","mentions":[],"mention_roles":["41771983423143936","41771983423143937"],"mention_everyone":false,"member":{"roles":[],"premium_since":"2023-05-01T00:00:00+00:00","pending":false,"nick":"Nick","mute":false,"joined_at":"2023-01-01T00:00:00+00:00","flags":2,"deaf":false,"communication_disabled_until":null,"banner":null,"avatar":"a_1"},"id":"1217146514021519390","flags":0,"embeds":[],"edited_timestamp":null,"content":"héllo wörld 😀","components":[],"channel_id":"290926798999357250","author":{"username":"mason","public_flags":64,"id":"53908232506183680","global_name":"Mason","discriminator":"0","clan":null,"primary_guild":null,"avatar_decoration_data":null,"avatar":"d5efa99b3eeaa7dd43acca82f5692432","accent_color":255,"bot":true,"system":false,"banner":null},"attachments":[],"guild_id":"290926798626357250","webhook_id":"1","application_id":"2","reactions":[],"sticker_items":[],"mention_channels":[]}`, true},
	{"dm", `{"id":"1","channel_id":"2","author":{"id":"3","username":"dm","discriminator":"0","avatar":null},"content":"","timestamp":"2024-01-01T00:00:00Z","edited_timestamp":"2024-01-01T00:00:01Z","tts":true,"mention_everyone":true,"mentions":null,"mention_roles":null,"attachments":[ ],"embeds":[],"pinned":true,"type":19,"nonce":12345,"flags":4096}`, true},
	{"spaces and unknown fields", " {\n \"id\" : \"1\" , \"unknown\" : {\"a\":[1,2,{\"b\":null}],\"c\":\"\\\"}\"} , \"x\":-1.5e3, \"member\":null, \"guild_id\":null , \"ids\":[\"1\"]\t} ", true},
	{"empty", `{}`, true},
	{"escaped content", `{"id":"1","content":"say \"hi\""}`, false},
	{"escaped key", `{"i\u0064":"1"}`, false},
	{"components", `{"id":"1","components":[{"type":1,"components":[{"type":2,"style":1,"label":"x","custom_id":"y"}]}]}`, false},
	{"embeds", `{"id":"1","embeds":[{"title":"t"}]}`, false},
	{"mentions", `{"id":"1","mentions":[{"id":"2","username":"u","discriminator":"0","avatar":null}]}`, false},
	{"key in another case", `{"ID":"1"}`, false},
	{"member key in another case", `{"member":{"Nick":"n"}}`, false},
	{"kelvin sign", "{\"\u212a\":1}", false},
	{"twice", `{"id":"1","id":"2"}`, false},
	{"author twice", `{"author":{"id":"1"},"author":{"username":"u"}}`, false},
	{"null id", `{"id":null}`, false},
	{"null bool", `{"tts":null}`, false},
	{"float type", `{"type":1.0}`, false},
	{"unquoted id", `{"id":1}`, false},
	{"id too large", `{"id":"18446744073709551616"}`, false},
	{"id with sign", `{"id":"+1"}`, false},
	{"go escape in nonce", `{"nonce":"\a"}`, false},
	{"number timestamp", `{"timestamp":1}`, false},
	{"bad timestamp", `{"timestamp":"yesterday"}`, false},
	{"referenced message", `{"id":"1","referenced_message":{"id":"2"}}`, false},
	{"decoration", `{"author":{"id":"1","avatar_decoration_data":{"asset":"a","sku_id":"2"}}}`, false},
	{"invalid unknown value", `{"id":"1","x":[1,}`, false},
	{"invalid UTF-8", "{\"content\":\"\xff\"}", false},
	{"control character", "{\"content\":\"a\tb\"}", false},
	{"trailing text", `{"id":"1"} x`, false},
	{"not an object", `["id"]`, false},
}

// TestScanMessage wants scanMessage to read the usual messages, and to
// give exactly what discord.Message's UnmarshalJSON gives.
func TestScanMessage(t *testing.T) {
	for _, c := range scanCases {
		t.Run(c.name, func(t *testing.T) {
			var got discord.Message
			fast := scanMessage([]byte(c.d), &got)
			if fast != c.fast {
				t.Fatalf("scanMessage read it: %v, want %v", fast, c.fast)
			}
			if !fast {
				return
			}
			var want discord.Message
			if err := want.UnmarshalJSON([]byte(c.d)); err != nil {
				t.Fatalf("the general decoder fails: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("\n got %#v\nwant %#v", got, want)
			}
		})
	}
}

// TestDecodeMessageFallback wants a MESSAGE_CREATE of each payload, read
// or left by scanMessage, to decode to what the general decoder makes of
// it, or to fail where it fails.
func TestDecodeMessageFallback(t *testing.T) {
	for _, c := range scanCases {
		got, err := decodeMessage([]byte(`{"op":0,"s":1,"t":"MESSAGE_CREATE","d":` + c.d + `}`))
		var want gateway.EventMessageCreate
		werr := want.UnmarshalJSON([]byte(c.d))
		switch {
		case (err != nil) != (werr != nil):
			t.Errorf("%s: error %v, the general decoder's %v", c.name, err, werr)
		case err == nil && !reflect.DeepEqual(got.D, want):
			t.Errorf("%s:\n got %#v\nwant %#v", c.name, got.D, want)
		}
	}
}

// FuzzScanMessage checks that whatever scanMessage reads, the general
// decoder reads the same way.
func FuzzScanMessage(f *testing.F) {
	for _, c := range scanCases {
		f.Add([]byte(c.d))
	}
	f.Fuzz(func(t *testing.T, d []byte) {
		var got discord.Message
		if !scanMessage(d, &got) {
			return
		}
		var want discord.Message
		if err := want.UnmarshalJSON(d); err != nil {
			t.Fatalf("%q: scanned, but the general decoder fails: %v", d, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q:\n got %#v\nwant %#v", d, got, want)
		}
	})
}

// TestScanMessageNulls gives null to every field of a message, of its
// author and of its member: the fields null leaves nil are read, and
// whatever is read equals what the general decoder makes of it.
func TestScanMessageNulls(t *testing.T) {
	read := map[string]bool{ // the nullable fields scanMessage reads
		"guild_id": true, "webhook_id": true, "application_id": true, "edited_timestamp": true, "member": true,
		"mention_roles": true, "mentions": true, "attachments": true, "embeds": true, "reactions": true,
		"sticker_items": true, "mention_channels": true, "components": true,
		"author.global_name": true, "author.avatar": true, "author.banner": true, "author.accent_color": true,
		"author.avatar_decoration_data": true, "member.nick": true, "member.avatar": true, "member.banner": true,
		"member.roles": true, "member.premium_since": true, "member.communication_disabled_until": true,
		"member.avatar_decoration_data": true,
	}
	for _, in := range []struct {
		prefix string
		typ    reflect.Type
	}{{"", reflect.TypeFor[discord.Message]()}, {"author.", reflect.TypeFor[discord.User]()}, {"member.", reflect.TypeFor[discord.Member]()}} {
		for f := range in.typ.Fields() {
			key, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			d := `{"` + key + `":null}`
			if in.prefix != "" {
				d = `{"` + strings.TrimSuffix(in.prefix, ".") + `":` + d + `}`
			}
			var got, want discord.Message
			fast := scanMessage([]byte(d), &got)
			if fast != read[in.prefix+key] {
				t.Errorf("%s: read %v, want %v", d, fast, read[in.prefix+key])
			}
			if !fast {
				continue
			}
			if err := want.UnmarshalJSON([]byte(d)); err != nil || !reflect.DeepEqual(got, want) {
				t.Errorf("%s:\n got %#v\nwant %#v (%v)", d, got, want, err)
			}
		}
	}
}
