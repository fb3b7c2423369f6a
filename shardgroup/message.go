package shardgroup

import (
	"reflect"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/snowflake/v2"
	gojson "github.com/goccy/go-json"
)

// scanMessage reads the d of a MESSAGE_CREATE or MESSAGE_UPDATE in one
// pass into m, which must be zero, for the shape most messages have: a
// message without components, embeds, attachments, reactions or
// references, by a user, with its member. It gives what
// discord.Message's UnmarshalJSON gives. ok is false for anything else:
// a field it does not read (or a key that differs only in case from one),
// a string with escapes, a number or null where it does not expect one, a
// key given twice, malformed text; the caller then decodes d with the
// general decoder, which gives the result or the error. Keys no field has
// are skipped, once validated, as the general decoder does.
func scanMessage(d []byte, m *discord.Message) bool {
	end := messageAt(d, skipSpace(d, 0), m)
	return end >= 0 && skipSpace(d, end) == len(d)
}

// The value readers below read the JSON value at b[i] and return the
// index just past it, or -1 if they do not read it.

func messageAt(b []byte, i int, m *discord.Message) int {
	var seen uint32
	end := objectAt(b, i, func(key []byte, i int) int {
		switch string(key) {
		case "id":
			if once(&seen, 0) {
				return idAt(b, i, &m.ID)
			}
		case "channel_id":
			if once(&seen, 1) {
				return idAt(b, i, &m.ChannelID)
			}
		case "guild_id":
			if once(&seen, 2) {
				if isNullAt(b, i) {
					return i + 4
				}
				m.GuildID = new(snowflake.ID)
				return idAt(b, i, m.GuildID)
			}
		case "webhook_id":
			if once(&seen, 3) {
				if isNullAt(b, i) {
					return i + 4
				}
				m.WebhookID = new(snowflake.ID)
				return idAt(b, i, m.WebhookID)
			}
		case "application_id":
			if once(&seen, 4) {
				if isNullAt(b, i) {
					return i + 4
				}
				m.ApplicationID = new(snowflake.ID)
				return idAt(b, i, m.ApplicationID)
			}
		case "content":
			if once(&seen, 5) {
				return stringAt(b, i, &m.Content)
			}
		case "timestamp":
			if once(&seen, 6) {
				return timeAt(b, i, &m.CreatedAt)
			}
		case "edited_timestamp":
			if once(&seen, 7) {
				if isNullAt(b, i) {
					return i + 4
				}
				m.EditedTimestamp = new(time.Time)
				return timeAt(b, i, m.EditedTimestamp)
			}
		case "tts":
			if once(&seen, 8) {
				return boolAt(b, i, &m.TTS)
			}
		case "mention_everyone":
			if once(&seen, 9) {
				return boolAt(b, i, &m.MentionEveryone)
			}
		case "pinned":
			if once(&seen, 10) {
				return boolAt(b, i, &m.Pinned)
			}
		case "type":
			if once(&seen, 11) {
				return intAt(b, i, (*int)(&m.Type))
			}
		case "flags":
			if once(&seen, 12) {
				return intAt(b, i, (*int)(&m.Flags))
			}
		case "nonce":
			if once(&seen, 13) {
				return nonceAt(b, i, &m.Nonce)
			}
		case "mention_roles":
			if once(&seen, 14) {
				if isNullAt(b, i) {
					return i + 4
				}
				return idsAt(b, i, &m.MentionRoles)
			}
		case "mentions":
			if once(&seen, 15) {
				return emptySliceAt(b, i, &m.Mentions)
			}
		case "attachments":
			if once(&seen, 16) {
				return emptySliceAt(b, i, &m.Attachments)
			}
		case "embeds":
			if once(&seen, 17) {
				return emptySliceAt(b, i, &m.Embeds)
			}
		case "reactions":
			if once(&seen, 18) {
				return emptySliceAt(b, i, &m.Reactions)
			}
		case "sticker_items":
			if once(&seen, 19) {
				return emptySliceAt(b, i, &m.StickerItems)
			}
		case "mention_channels":
			if once(&seen, 20) {
				return emptySliceAt(b, i, &m.MentionChannels)
			}
		case "components":
			// UnmarshalJSON leaves Components nil unless there are some.
			if once(&seen, 21) {
				if isNullAt(b, i) {
					return i + 4
				}
				return emptyArrayAt(b, i)
			}
		case "author":
			if once(&seen, 22) {
				return userAt(b, i, &m.Author)
			}
		case "member":
			if once(&seen, 23) {
				if isNullAt(b, i) {
					return i + 4
				}
				m.Member = new(discord.Member)
				return memberAt(b, i, m.Member)
			}
		default:
			return unknownAt(b, i, key, messageFields)
		}
		return -1
	})
	if end >= 0 && m.Member != nil && m.GuildID != nil {
		m.Member.GuildID = *m.GuildID
	}
	return end
}

func userAt(b []byte, i int, u *discord.User) int {
	var seen uint32
	return objectAt(b, i, func(key []byte, i int) int {
		switch string(key) {
		case "id":
			if once(&seen, 0) {
				return idAt(b, i, &u.ID)
			}
		case "username":
			if once(&seen, 1) {
				return stringAt(b, i, &u.Username)
			}
		case "discriminator":
			if once(&seen, 2) {
				return stringAt(b, i, &u.Discriminator)
			}
		case "global_name":
			if once(&seen, 3) {
				if isNullAt(b, i) {
					return i + 4
				}
				u.GlobalName = new(string)
				return stringAt(b, i, u.GlobalName)
			}
		case "avatar":
			if once(&seen, 4) {
				if isNullAt(b, i) {
					return i + 4
				}
				u.Avatar = new(string)
				return stringAt(b, i, u.Avatar)
			}
		case "banner":
			if once(&seen, 5) {
				if isNullAt(b, i) {
					return i + 4
				}
				u.Banner = new(string)
				return stringAt(b, i, u.Banner)
			}
		case "accent_color":
			if once(&seen, 6) {
				if isNullAt(b, i) {
					return i + 4
				}
				u.AccentColor = new(int)
				return intAt(b, i, u.AccentColor)
			}
		case "bot":
			if once(&seen, 7) {
				return boolAt(b, i, &u.Bot)
			}
		case "system":
			if once(&seen, 8) {
				return boolAt(b, i, &u.System)
			}
		case "public_flags":
			if once(&seen, 9) {
				return intAt(b, i, (*int)(&u.PublicFlags))
			}
		case "avatar_decoration_data":
			if once(&seen, 10) && isNullAt(b, i) {
				return i + 4
			}
		default:
			return unknownAt(b, i, key, userFields)
		}
		return -1
	})
}

func memberAt(b []byte, i int, mb *discord.Member) int {
	var seen uint32
	return objectAt(b, i, func(key []byte, i int) int {
		switch string(key) {
		case "user":
			if once(&seen, 0) {
				return userAt(b, i, &mb.User)
			}
		case "nick":
			if once(&seen, 1) {
				if isNullAt(b, i) {
					return i + 4
				}
				mb.Nick = new(string)
				return stringAt(b, i, mb.Nick)
			}
		case "avatar":
			if once(&seen, 2) {
				if isNullAt(b, i) {
					return i + 4
				}
				mb.Avatar = new(string)
				return stringAt(b, i, mb.Avatar)
			}
		case "banner":
			if once(&seen, 3) {
				if isNullAt(b, i) {
					return i + 4
				}
				mb.Banner = new(string)
				return stringAt(b, i, mb.Banner)
			}
		case "roles":
			if once(&seen, 4) {
				if isNullAt(b, i) {
					return i + 4
				}
				return idsAt(b, i, &mb.RoleIDs)
			}
		case "joined_at":
			if once(&seen, 5) {
				return timeAt(b, i, &mb.JoinedAt)
			}
		case "premium_since":
			if once(&seen, 6) {
				if isNullAt(b, i) {
					return i + 4
				}
				mb.PremiumSince = new(time.Time)
				return timeAt(b, i, mb.PremiumSince)
			}
		case "deaf":
			if once(&seen, 7) {
				return boolAt(b, i, &mb.Deaf)
			}
		case "mute":
			if once(&seen, 8) {
				return boolAt(b, i, &mb.Mute)
			}
		case "pending":
			if once(&seen, 9) {
				return boolAt(b, i, &mb.Pending)
			}
		case "flags":
			if once(&seen, 10) {
				return intAt(b, i, (*int)(&mb.Flags))
			}
		case "communication_disabled_until":
			if once(&seen, 11) {
				if isNullAt(b, i) {
					return i + 4
				}
				mb.CommunicationDisabledUntil = new(time.Time)
				return timeAt(b, i, mb.CommunicationDisabledUntil)
			}
		case "avatar_decoration_data":
			if once(&seen, 12) && isNullAt(b, i) {
				return i + 4
			}
		default:
			return unknownAt(b, i, key, memberFields)
		}
		return -1
	})
}

// once sets bit n of seen and reports whether it was clear.
func once(seen *uint32, n int) bool {
	if *seen&(1<<n) != 0 {
		return false
	}
	*seen |= 1 << n
	return true
}

var (
	// The keys, in lower case, that some field of the type takes: the
	// general decoder matches keys to fields without regard to case.
	messageFields = fieldKeys(reflect.TypeFor[discord.Message]())
	userFields    = fieldKeys(reflect.TypeFor[discord.User]())
	memberFields  = fieldKeys(reflect.TypeFor[discord.Member]())
)

// fieldKeys lists the JSON keys of t's fields, in lower case.
func fieldKeys(t reflect.Type) map[string]bool {
	keys := map[string]bool{}
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() || f.Anonymous {
			panic("shardgroup: " + t.String() + " has a field the message scanner does not expect: " + f.Name)
		}
		if name == "" {
			name = f.Name
		}
		keys[strings.ToLower(name)] = true
	}
	return keys
}

// unknownAt skips the value of a key the scanner does not read, if no
// field takes the key (the general decoder skips it too) and the value is
// valid JSON.
func unknownAt(b []byte, i int, key []byte, fields map[string]bool) int {
	var lower [64]byte
	if len(key) > len(lower) {
		return -1
	}
	for j, c := range key {
		if c >= utf8.RuneSelf {
			return -1 // Unicode case folding could map it to a field
		}
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower[j] = c
	}
	if fields[string(lower[:len(key)])] {
		return -1
	}
	end := skipValue(b, i)
	if end < 0 || !gojson.Valid(b[i:end]) {
		return -1
	}
	return end
}

// objectAt reads the object at b[i], calling member for each key (which
// has no escapes) with the index of its value; member returns the index
// just past the value, or -1.
func objectAt(b []byte, i int, member func(key []byte, i int) int) int {
	if i >= len(b) || b[i] != '{' {
		return -1
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return -1
		}
		k := i + 1
		for k < len(b) && b[k] != '"' && b[k] != '\\' && b[k] >= 0x20 {
			k++
		}
		if k >= len(b) || b[k] != '"' {
			return -1
		}
		key := b[i+1 : k]
		i = skipSpace(b, k+1)
		if i >= len(b) || b[i] != ':' {
			return -1
		}
		if i = member(key, skipSpace(b, i+1)); i < 0 {
			return -1
		}
		i = skipSpace(b, i)
		if i >= len(b) {
			return -1
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return i + 1
		default:
			return -1
		}
	}
}

func isNullAt(b []byte, i int) bool { return len(b)-i >= 4 && string(b[i:i+4]) == "null" }

// emptySliceAt reads null (leaving *dst nil) or an empty array (setting
// *dst to an empty slice, as decoding does) at b[i:]; see emptyArrayAt.
func emptySliceAt[T any](b []byte, i int, dst *[]T) int {
	if isNullAt(b, i) {
		return i + 4
	}
	*dst = []T{}
	return emptyArrayAt(b, i)
}

func emptyArrayAt(b []byte, i int) int {
	if i >= len(b) || b[i] != '[' {
		return -1
	}
	if i = skipSpace(b, i+1); i >= len(b) || b[i] != ']' {
		return -1
	}
	return i + 1
}

func boolAt(b []byte, i int, v *bool) int {
	switch {
	case len(b)-i >= 4 && string(b[i:i+4]) == "true":
		*v = true
		return i + 4
	case len(b)-i >= 5 && string(b[i:i+5]) == "false":
		*v = false
		return i + 5
	}
	return -1
}

// intAt reads an integer (no fraction or exponent, as the general decoder
// wants for an int).
func intAt(b []byte, i int, n *int) int {
	j := i
	for j < len(b) && (b[j] == '-' || '0' <= b[j] && b[j] <= '9') {
		j++
	}
	if j < len(b) && (b[j] == '.' || b[j] == 'e' || b[j] == 'E' || b[j] == '+') {
		return -1
	}
	x, ok := parseInt(b[i:j])
	if !ok {
		return -1
	}
	*n = x
	return j
}

// plainAt returns the text of the string at b[i] if it has no escapes,
// control characters or invalid UTF-8 (the string's value, byte for
// byte), and the index past it.
func plainAt(b []byte, i int) ([]byte, int) {
	if i >= len(b) || b[i] != '"' {
		return nil, -1
	}
	ascii := true
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			s := b[i+1 : j]
			if !ascii && !utf8.Valid(s) {
				return nil, -1
			}
			return s, j + 1
		case c < 0x20 || c == '\\':
			return nil, -1
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return nil, -1
}

func stringAt(b []byte, i int, s *string) int {
	v, end := plainAt(b, i)
	if end >= 0 {
		*s = string(v)
	}
	return end
}

// idAt reads a snowflake as its UnmarshalJSON does: a string of decimal
// digits that fits in 64 bits.
func idAt(b []byte, i int, id *snowflake.ID) int {
	v, end := plainAt(b, i)
	if end < 0 || len(v) == 0 || len(v) > 20 {
		return -1
	}
	var n uint64
	for _, c := range v {
		if c < '0' || c > '9' {
			return -1
		}
		d := uint64(c - '0')
		if n > (1<<64-1-d)/10 {
			return -1
		}
		n = n*10 + d
	}
	*id = snowflake.ID(n)
	return end
}

// idsAt reads an array of snowflakes; [] gives an empty slice, as the
// general decoder does.
func idsAt(b []byte, i int, ids *[]snowflake.ID) int {
	if i >= len(b) || b[i] != '[' {
		return -1
	}
	out := []snowflake.ID{}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		*ids = out
		return i + 1
	}
	for {
		var id snowflake.ID
		if i = idAt(b, i, &id); i < 0 {
			return -1
		}
		out = append(out, id)
		i = skipSpace(b, i)
		if i >= len(b) {
			return -1
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case ']':
			*ids = out
			return i + 1
		default:
			return -1
		}
	}
}

// timeAt reads a timestamp with time.Time's own UnmarshalJSON, from a
// string only (the general decoder refuses anything else).
func timeAt(b []byte, i int, t *time.Time) int {
	_, end := plainAt(b, i)
	if end < 0 || t.UnmarshalJSON(b[i:end]) != nil {
		return -1
	}
	return end
}

// nonceAt reads a nonce with its own UnmarshalJSON: a string, or an
// integer it formats. That method unquotes by Go's rules, so only strings
// whose JSON and Go readings agree are given to it.
func nonceAt(b []byte, i int, n *discord.Nonce) int {
	_, end := plainAt(b, i)
	if end < 0 {
		var x int
		if end = intAt(b, i, &x); end < 0 {
			return -1
		}
	}
	if n.UnmarshalJSON(b[i:end]) != nil {
		return -1
	}
	return end
}
