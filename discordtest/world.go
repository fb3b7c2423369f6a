package discordtest

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
)

// The world is the bot's view of Discord: guilds with channels, roles and
// members, all generated from the guild index so that nothing is stored
// per member. IDs are snowflakes whose timestamp part is the guild index
// plus one, so (id >> 22) % shards spreads guilds evenly over any shard
// count, and an ID tells which guild it belongs to.

const (
	guildBase   = 1 << 30 // timestamp part of guild 0, in ms after the Discord epoch
	kindGuild   = 0
	kindChannel = 1
	kindRole    = 2
	kindUser    = 3
	kindMessage = 4
)

// GuildID returns the ID of the i-th generated guild (0-based).
func (s *Server) GuildID(i int) uint64 { return guildID(i) }

func guildID(i int) uint64 { return uint64(guildBase+i) << 22 }

// id builds the ID of a guild's sub-object: the guild's timestamp with the
// kind and index in the low 22 bits.
func subID(guild int, kind, idx int) uint64 {
	return guildID(guild) | uint64(kind)<<18 | uint64(idx&(1<<18-1))
}

// guildIndex returns the index of the guild an ID belongs to, or -1.
func (s *Server) guildIndex(id uint64) int {
	i := int(id>>22) - guildBase
	if i < 0 || i >= s.cfg.guilds {
		return -1
	}
	return i
}

func idKind(id uint64) (kind, idx int) { return int(id>>18) & 0xf, int(id & (1<<18 - 1)) }

// ShardFor returns the shard that owns a guild: (guild_id >> 22) % shards.
func ShardFor(guildID uint64, shards int) int { return int((guildID >> 22) % uint64(shards)) }

// userID returns the ID of the m-th member of guild g. Member 0 of every
// guild is the bot itself.
func (s *Server) userID(g, m int) uint64 {
	if m == 0 {
		return s.cfg.applicationID
	}
	return subID(g, kindUser, m)
}

func makeToken(appID uint64) string {
	return base64.RawStdEncoding.EncodeToString([]byte(strconv.FormatUint(appID, 10))) + ".GfLeet.c2ltdWxhdGVkLWJvdC10b2tlbi1ub3QtcmVhbA"
}

// json fragments, built with strconv to stay allocation-light.

func appendID(b []byte, id uint64) []byte {
	b = append(b, '"')
	b = strconv.AppendUint(b, id, 10)
	return append(b, '"')
}

func (s *Server) appendUser(b []byte, id uint64) []byte {
	b = append(b, `{"id":`...)
	b = appendID(b, id)
	b = append(b, `,"username":"user`...)
	b = strconv.AppendUint(b, id%100000, 10)
	b = append(b, `","discriminator":"0","global_name":null,"avatar":null`...)
	if id == s.cfg.applicationID {
		b = append(b, `,"bot":true`...)
	}
	return append(b, '}')
}

func (s *Server) appendMember(b []byte, g, m int) []byte {
	b = append(b, `{"user":`...)
	b = s.appendUser(b, s.userID(g, m))
	b = append(b, `,"roles":[],"joined_at":"2024-01-01T00:00:00Z","deaf":false,"mute":false,"flags":0}`...)
	return b
}

func (s *Server) appendChannel(b []byte, g, c int) []byte {
	b = append(b, `{"id":`...)
	b = appendID(b, subID(g, kindChannel, c))
	b = append(b, `,"type":0,"guild_id":`...)
	b = appendID(b, guildID(g))
	b = append(b, `,"name":"channel-`...)
	b = strconv.AppendInt(b, int64(c), 10)
	b = append(b, `","position":`...)
	b = strconv.AppendInt(b, int64(c), 10)
	return append(b, `,"permission_overwrites":[],"nsfw":false,"rate_limit_per_user":0}`...)
}

func (s *Server) appendRole(b []byte, g, r int) []byte {
	id := guildID(g) // @everyone shares the guild's ID
	if r > 0 {
		id = subID(g, kindRole, r)
	}
	b = append(b, `{"id":`...)
	b = appendID(b, id)
	b = append(b, `,"name":"role-`...)
	b = strconv.AppendInt(b, int64(r), 10)
	return append(b, `","color":0,"hoist":false,"position":0,"permissions":"0","managed":false,"mentionable":false,"flags":0}`...)
}

// appendGuild writes the REST guild object (no members or channels).
func (s *Server) appendGuildFields(b []byte, g int) []byte {
	b = append(b, `"id":`...)
	b = appendID(b, guildID(g))
	b = append(b, `,"name":"guild-`...)
	b = strconv.AppendInt(b, int64(g), 10)
	b = append(b, `","icon":null,"owner_id":`...)
	b = appendID(b, s.userID(g, 1%s.cfg.membersPerGuild))
	b = append(b, `,"afk_timeout":300,"verification_level":0,"default_message_notifications":0,"explicit_content_filter":0,"features":[],"mfa_level":0,"system_channel_flags":0,"premium_tier":0,"preferred_locale":"en-US","nsfw_level":0,"member_count":`...)
	b = strconv.AppendInt(b, int64(s.cfg.membersPerGuild), 10)
	b = append(b, `,"roles":[`...)
	for r := 0; r < s.cfg.rolesPerGuild+1; r++ {
		if r > 0 {
			b = append(b, ',')
		}
		b = s.appendRole(b, g, r)
	}
	return append(b, `],"emojis":[],"stickers":[]`...)
}

// guildCreate encodes the GUILD_CREATE payload of guild g.
func (s *Server) guildCreate(g int, large bool) []byte {
	n := s.cfg.membersPerGuild
	b := make([]byte, 0, 512+n*200+s.cfg.channelsPerGuild*200)
	b = append(b, '{')
	b = s.appendGuildFields(b, g)
	b = append(b, `,"joined_at":"2024-01-01T00:00:00Z","large":`...)
	b = strconv.AppendBool(b, large)
	b = append(b, `,"unavailable":false,"voice_states":[],"threads":[],"presences":[],"stage_instances":[],"guild_scheduled_events":[],"soundboard_sounds":[],"channels":[`...)
	for c := 0; c < s.cfg.channelsPerGuild; c++ {
		if c > 0 {
			b = append(b, ',')
		}
		b = s.appendChannel(b, g, c)
	}
	b = append(b, `],"members":[`...)
	// A large guild sends only the bot's own member, as Discord does.
	if large {
		n = 1
	}
	for m := 0; m < n; m++ {
		if m > 0 {
			b = append(b, ',')
		}
		b = s.appendMember(b, g, m)
	}
	return append(b, "]}"...)
}

// MessageCreate returns a MESSAGE_CREATE payload for a message by the
// guild's first non-bot member in the guild's first channel, for use with
// Dispatch and Load. The nonce makes each message distinct.
func (s *Server) MessageCreate(guildID uint64, content string, nonce int) []byte {
	g := s.guildIndex(guildID)
	if g < 0 {
		g = 0
	}
	author := s.userID(g, 1%s.cfg.membersPerGuild)
	return s.appendMessage(nil, g, subID(g, kindChannel, 0), author, uint64(nonce), content)
}

func (s *Server) appendMessage(b []byte, g int, channel, author, msgIdx uint64, content string) []byte {
	b = append(b, `{"id":`...)
	b = appendID(b, guildID(g)|uint64(kindMessage)<<18|msgIdx&(1<<18-1))
	b = append(b, `,"channel_id":`...)
	b = appendID(b, channel)
	b = append(b, `,"guild_id":`...)
	b = appendID(b, guildID(g))
	b = append(b, `,"author":`...)
	b = s.appendUser(b, author)
	b = append(b, `,"content":`...)
	q, _ := json.Marshal(content)
	b = append(b, q...)
	b = append(b, `,"timestamp":"2024-01-01T00:00:00Z","edited_timestamp":null,"tts":false,"mention_everyone":false,"mentions":[],"mention_roles":[],"attachments":[],"embeds":[],"pinned":false,"type":0,"nonce":"`...)
	b = strconv.AppendUint(b, msgIdx, 10)
	return append(b, `"}`...)
}
