package discordtest

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"time"
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
	kindCommand = 5
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

// json fragments, built with strconv to stay allocation-light. They
// carry every field Discord documents as always present and, to keep
// GUILD_CREATE and MESSAGE_CREATE small, few of the optional ones.

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

// appendSelf writes the bot's own user as READY and GET /users/@me carry
// it, with the account fields only its owner sees.
func (s *Server) appendSelf(b []byte) []byte {
	b = s.appendUser(b, s.cfg.applicationID)
	return append(b[:len(b)-1], `,"verified":true,"mfa_enabled":false,"flags":0,"email":null,"locale":"en-US"}`...)
}

// memberRoles is the roles member m of a guild has: the bot has role 1
// (the highest), every other member the lowest generated role.
func (s *Server) memberRoles(g, m int) []uint64 {
	switch r := s.cfg.rolesPerGuild; {
	case r == 0:
		return nil
	case m == 0:
		return []uint64{subID(g, kindRole, 1)}
	case r >= 2:
		return []uint64{subID(g, kindRole, r)}
	}
	return nil
}

// appendMemberFields writes a guild member's fields without the user and
// the closing brace, for the member objects with and without one.
func (s *Server) appendMemberFields(b []byte, g, m int) []byte {
	b = append(b, `"roles":[`...)
	for i, r := range s.memberRoles(g, m) {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendID(b, r)
	}
	return append(b, `],"joined_at":"2024-01-01T00:00:00.000000+00:00","deaf":false,"mute":false,"flags":0`...)
}

func (s *Server) appendMember(b []byte, g, m int) []byte {
	b = append(b, `{"user":`...)
	b = s.appendUser(b, s.userID(g, m))
	b = append(b, ',')
	b = s.appendMemberFields(b, g, m)
	return append(b, '}')
}

func (s *Server) appendChannel(b []byte, g, c int) []byte {
	id := subID(g, kindChannel, c)
	b = append(b, `{"id":`...)
	b = appendID(b, id)
	b = append(b, `,"type":0,"guild_id":`...)
	b = appendID(b, guildID(g))
	b = append(b, `,"name":"channel-`...)
	b = strconv.AppendInt(b, int64(c), 10)
	b = append(b, `","position":`...)
	b = strconv.AppendInt(b, int64(c), 10)
	b = append(b, `,"permission_overwrites":[`...)
	b = s.world.appendOverwrites(b, id)
	return append(b, `],"nsfw":false,"rate_limit_per_user":0}`...)
}

// roleID is the ID of role r of guild g; role 0 is @everyone, which
// shares the guild's ID.
func roleID(g, r int) uint64 {
	if r == 0 {
		return guildID(g)
	}
	return subID(g, kindRole, r)
}

// rolePosition places role 1 highest and @everyone at 0.
func (s *Server) rolePosition(r int) int {
	if r == 0 {
		return 0
	}
	return s.cfg.rolesPerGuild - r + 1
}

func (s *Server) appendRole(b []byte, g, r int) []byte {
	id := roleID(g, r)
	name := "role-" + strconv.Itoa(r)
	switch r {
	case 0:
		name = "@everyone"
	case 1:
		name = "bot"
	}
	b = append(b, `{"id":`...)
	b = appendID(b, id)
	b = append(b, `,"name":"`...)
	b = append(b, name...)
	b = append(b, `","color":0,"colors":{"primary_color":0,"secondary_color":null,"tertiary_color":null},"hoist":false,"position":`...)
	b = strconv.AppendInt(b, int64(s.rolePosition(r)), 10)
	b = append(b, `,"permissions":"`...)
	b = strconv.AppendUint(b, s.world.rolePermissions(id, r), 10)
	return append(b, `","managed":false,"mentionable":false,"flags":0}`...)
}

// appendGuildFields writes the guild object's fields (no members or
// channels), without braces.
func (s *Server) appendGuildFields(b []byte, g int) []byte {
	b = append(b, `"id":`...)
	b = appendID(b, guildID(g))
	b = append(b, `,"name":"guild-`...)
	b = strconv.AppendInt(b, int64(g), 10)
	b = append(b, `","icon":null,"splash":null,"discovery_splash":null,"owner_id":`...)
	b = appendID(b, s.userID(g, 1%s.cfg.membersPerGuild))
	b = append(b, `,"afk_channel_id":null,"afk_timeout":300,"verification_level":0,"default_message_notifications":0,"explicit_content_filter":0,"features":[],"mfa_level":0,"application_id":null,"system_channel_id":`...)
	b = appendID(b, subID(g, kindChannel, 0))
	b = append(b, `,"system_channel_flags":0,"rules_channel_id":null,"vanity_url_code":null,"description":null,"banner":null,"premium_tier":0,"preferred_locale":"en-US","public_updates_channel_id":null,"nsfw_level":0,"premium_progress_bar_enabled":false,"safety_alerts_channel_id":null,"incidents_data":null`...)
	b = append(b, `,"roles":[`...)
	for r := 0; r < s.cfg.rolesPerGuild+1; r++ {
		if r > 0 {
			b = append(b, ',')
		}
		b = s.appendRole(b, g, r)
	}
	return append(b, `],"emojis":[],"stickers":[]`...)
}

// guildCreate encodes the GUILD_CREATE payload of guild g: an unavailable
// guild object while the guild is in an outage.
func (s *Server) guildCreate(g int, large bool) []byte {
	if s.world.unavailable(g) {
		return s.unavailableGuild(g)
	}
	n := s.cfg.membersPerGuild
	b := make([]byte, 0, 1024+n*300+s.cfg.channelsPerGuild*250)
	b = append(b, '{')
	b = s.appendGuildFields(b, g)
	b = append(b, `,"joined_at":"2024-01-01T00:00:00.000000+00:00","large":`...)
	b = strconv.AppendBool(b, large)
	b = append(b, `,"unavailable":false,"member_count":`...)
	b = strconv.AppendInt(b, int64(s.cfg.membersPerGuild), 10)
	b = append(b, `,"voice_states":[],"threads":[],"presences":[],"stage_instances":[],"guild_scheduled_events":[],"soundboard_sounds":[],"channels":[`...)
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

// unavailableGuild encodes {"id":…,"unavailable":true}.
func (s *Server) unavailableGuild(g int) []byte {
	b := append([]byte(`{"id":`), appendID(nil, guildID(g))...)
	return append(b, `,"unavailable":true}`...)
}

// MessageCreate returns a MESSAGE_CREATE payload for a message by the
// guild's first non-bot member in the guild's first channel, for use with
// Dispatch and Load. Its ID is minted now, so its snowflake time is the
// time it was built, and nonce is echoed as the message's nonce.
func (s *Server) MessageCreate(guildID uint64, content string, nonce int) []byte {
	g := s.guildIndex(guildID)
	if g < 0 {
		g = 0
	}
	m := 1 % s.cfg.membersPerGuild
	msg := message{id: s.world.mint(), guild: g, channel: subID(g, kindChannel, 0), member: m,
		author: s.userID(g, m), content: content, nonce: strconv.AppendInt(nil, int64(nonce), 10), quoteNonce: true}
	return s.appendMessage(nil, &msg, true)
}

// appendMessage encodes a message; gateway adds the MESSAGE_CREATE extra
// fields (guild_id, member).
func (s *Server) appendMessage(b []byte, m *message, gateway bool) []byte {
	b = append(b, `{"id":`...)
	b = appendID(b, m.id)
	b = append(b, `,"channel_id":`...)
	b = appendID(b, m.channel)
	if gateway {
		b = append(b, `,"guild_id":`...)
		b = appendID(b, guildID(m.guild))
		b = append(b, `,"member":{`...)
		b = s.appendMemberFields(b, m.guild, m.member)
		b = append(b, '}')
	}
	b = append(b, `,"author":`...)
	b = s.appendUser(b, m.author)
	b = append(b, `,"content":`...)
	q, _ := json.Marshal(m.content)
	b = append(b, q...)
	b = append(b, `,"timestamp":"`...)
	b = appendTimestamp(b, snowflakeTime(m.id))
	b = append(b, `","edited_timestamp":`...)
	if m.edited.IsZero() {
		b = append(b, "null"...)
	} else {
		b = append(b, '"')
		b = appendTimestamp(b, m.edited)
		b = append(b, '"')
	}
	b = append(b, `,"tts":false,"mention_everyone":false,"mentions":[],"mention_roles":[],"attachments":[],"embeds":`...)
	if len(m.embeds) > 0 {
		b = append(b, m.embeds...)
	} else {
		b = append(b, "[]"...)
	}
	if len(m.reactions) > 0 {
		b = append(b, `,"reactions":[`...)
		for i, r := range m.reactions {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendReaction(b, r, s.cfg.applicationID)
		}
		b = append(b, ']')
	}
	b = append(b, `,"pinned":false,"type":0`...)
	if len(m.nonce) > 0 {
		b = append(b, `,"nonce":`...)
		if m.quoteNonce {
			b = append(b, '"')
			b = append(b, m.nonce...)
			b = append(b, '"')
		} else {
			b = append(b, m.nonce...)
		}
	}
	if m.webhookID != 0 {
		b = append(b, `,"webhook_id":`...)
		b = appendID(b, m.webhookID)
		b = append(b, `,"application_id":`...)
		b = appendID(b, s.cfg.applicationID)
	}
	return append(b, '}')
}

// appendTimestamp writes t as Discord's ISO 8601 timestamps look.
func appendTimestamp(b []byte, t time.Time) []byte {
	return t.UTC().AppendFormat(b, "2006-01-02T15:04:05.000000+00:00")
}
