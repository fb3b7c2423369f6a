package discordtest

import (
	"encoding/json"
	"strconv"
	"sync"
	"time"
)

// discordEpoch is the first millisecond of 2015, the epoch of snowflakes.
const discordEpoch = 1420070400000

// Permission bits the simulator computes and enforces.
const (
	PermCreateInstantInvite uint64 = 1 << 0
	PermKickMembers         uint64 = 1 << 1
	PermAdministrator       uint64 = 1 << 3
	PermAddReactions        uint64 = 1 << 6
	PermViewChannel         uint64 = 1 << 10
	PermSendMessages        uint64 = 1 << 11
	PermManageMessages      uint64 = 1 << 13
	PermEmbedLinks          uint64 = 1 << 14
	PermAttachFiles         uint64 = 1 << 15
	PermReadMessageHistory  uint64 = 1 << 16
	PermUseExternalEmojis   uint64 = 1 << 18
	PermConnect             uint64 = 1 << 20
	PermSpeak               uint64 = 1 << 21
	PermChangeNickname      uint64 = 1 << 26
	PermManageNicknames     uint64 = 1 << 27
	PermManageRoles         uint64 = 1 << 28
	PermManageWebhooks      uint64 = 1 << 29
	PermUseAppCommands      uint64 = 1 << 31

	// permAll is every permission bit Discord defines today.
	permAll uint64 = 1<<51 - 1

	// DefaultEveryonePermissions are @everyone's permissions in every
	// generated guild: members can read, write and react.
	DefaultEveryonePermissions = PermCreateInstantInvite | PermAddReactions | PermViewChannel | PermSendMessages |
		PermEmbedLinks | PermAttachFiles | PermReadMessageHistory | PermUseExternalEmojis | PermConnect | PermSpeak |
		PermChangeNickname | PermUseAppCommands
	// DefaultBotRolePermissions are the permissions of role 1, the bot's
	// role and the highest generated one.
	DefaultBotRolePermissions = PermKickMembers | PermManageMessages | PermManageNicknames | PermManageRoles |
		PermManageWebhooks
)

// maxMessages bounds the messages the server remembers for fetch, edit,
// delete and reactions; the oldest is forgotten first.
const maxMessages = 10_000

// message is a message the server remembers: one sent through REST.
type message struct {
	id         uint64
	guild      int
	channel    uint64
	member     int    // index of the author among the guild's members
	author     uint64 // user ID
	content    string
	nonce      []byte // as the client sent it: a JSON string's contents or an integer
	quoteNonce bool
	edited     time.Time
	embeds     json.RawMessage
	reactions  []*reaction
	webhookID  uint64
	nonceKey   string // key in world.nonces when enforce_nonce was set
}

// reaction is one emoji on a message and who used it.
type reaction struct {
	emoji string // "name" or "name:id"
	users []uint64
}

// Overwrite is a channel permission overwrite for a role (Member false)
// or a member.
type Overwrite struct {
	ID     uint64
	Member bool
	Allow  uint64
	Deny   uint64
}

// world holds the state the generated guilds do not: permission changes,
// guild outages and the messages sent through REST. It is guarded by its
// own mutex, never held with Server.mu or the REST state's.
type world struct {
	mu          sync.Mutex // guards every field below
	lastID      uint64
	messages    map[uint64]*message
	order       []uint64 // message IDs, oldest first, for eviction
	overwrites  map[uint64][]Overwrite
	rolePerms   map[uint64]uint64
	outage      map[int]bool
	interaction map[string]*interaction // by token, for callbacks and webhooks
	interOrder  []string
	nonces      map[string]uint64 // "channel/author/nonce" -> message, for enforce_nonce
	commands    map[uint64][]byte // application commands by guild (0: global), as a JSON array
}

// interaction is an interaction the server sent and remembers.
type interaction struct {
	id       uint64
	guild    int
	channel  uint64
	acked    bool
	original uint64 // the message the callback created, if any
}

func newWorld() *world {
	return &world{messages: map[uint64]*message{}, overwrites: map[uint64][]Overwrite{},
		rolePerms: map[uint64]uint64{}, outage: map[int]bool{}, interaction: map[string]*interaction{},
		nonces: map[string]uint64{}, commands: map[uint64][]byte{}}
}

// mint returns a new snowflake whose time is now, unique in the server.
func (w *world) mint() uint64 {
	id := uint64(time.Now().UnixMilli()-discordEpoch) << 22
	w.mu.Lock()
	if id <= w.lastID {
		id = w.lastID + 1
	}
	w.lastID = id
	w.mu.Unlock()
	return id
}

// snowflakeTime is the creation time encoded in a snowflake.
func snowflakeTime(id uint64) time.Time {
	return time.UnixMilli(int64(id>>22) + discordEpoch)
}

func (w *world) rolePermissions(id uint64, r int) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rolePermissionsLocked(id, r)
}

// rolePermissionsLocked is rolePermissions with w.mu held.
func (w *world) rolePermissionsLocked(id uint64, r int) uint64 {
	if p, ok := w.rolePerms[id]; ok {
		return p
	}
	switch r {
	case 0:
		return DefaultEveryonePermissions
	case 1:
		return DefaultBotRolePermissions
	}
	return 0
}

func (w *world) appendOverwrites(b []byte, channel uint64) []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, o := range w.overwrites[channel] {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"id":`...)
		b = appendID(b, o.ID)
		b = append(b, `,"type":`...)
		if o.Member {
			b = append(b, '1')
		} else {
			b = append(b, '0')
		}
		b = append(b, `,"allow":"`...)
		b = strconv.AppendUint(b, o.Allow, 10)
		b = append(b, `","deny":"`...)
		b = strconv.AppendUint(b, o.Deny, 10)
		b = append(b, `"}`...)
	}
	return b
}

func (w *world) unavailable(g int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.outage[g]
}

func (w *world) store(m *message) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.order) >= maxMessages {
		// Forget the oldest tenth at once, so that the copy is rare.
		drop := w.order[:maxMessages/10]
		for _, id := range drop {
			if old := w.messages[id]; old != nil && old.nonceKey != "" {
				delete(w.nonces, old.nonceKey)
			}
			delete(w.messages, id)
		}
		w.order = append(make([]uint64, 0, maxMessages), w.order[len(drop):]...)
	}
	w.messages[m.id] = m
	w.order = append(w.order, m.id)
}

// withMessage runs fn on a remembered message under the world's lock;
// false if the server does not know it.
func (w *world) withMessage(id uint64, fn func(*message)) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.messages[id]
	if m == nil {
		return false
	}
	fn(m)
	return true
}

func (w *world) deleteMessage(id uint64) {
	w.mu.Lock()
	delete(w.messages, id)
	w.mu.Unlock()
}

// SetRolePermissions sets the permissions of a role of a generated guild
// (the guild's own ID for @everyone). Later GUILD_CREATEs and REST
// answers carry them, and REST calls are judged by them.
func (s *Server) SetRolePermissions(roleID, permissions uint64) {
	s.world.mu.Lock()
	s.world.rolePerms[roleID] = permissions
	s.world.mu.Unlock()
}

// SetChannelOverwrites replaces a channel's permission overwrites.
func (s *Server) SetChannelOverwrites(channelID uint64, overwrites ...Overwrite) {
	s.world.mu.Lock()
	if len(overwrites) == 0 {
		delete(s.world.overwrites, channelID)
	} else {
		s.world.overwrites[channelID] = append([]Overwrite(nil), overwrites...)
	}
	s.world.mu.Unlock()
}

// RoleID returns the ID of role r of the i-th guild: 0 is @everyone (the
// guild's ID), 1 the bot's role, the highest; the other members have the
// lowest role.
func (s *Server) RoleID(i, r int) uint64 { return roleID(i, r) }

// Permissions computes what member m (0 is the bot) of guild i may do in
// channel c, from @everyone, the member's roles and the channel's
// overwrites, as Discord does: the owner and administrators may do
// everything.
func (s *Server) Permissions(i, m, c int) uint64 {
	return s.permissions(i, m, subID(i, kindChannel, c))
}

func (s *Server) permissions(g, m int, channel uint64) uint64 {
	if m == 1%s.cfg.membersPerGuild {
		return permAll // the owner
	}
	roles := s.memberRoles(g, m)
	user := s.userID(g, m)
	w := s.world
	// One lock for the whole computation: REST calls ask for it often.
	w.mu.Lock()
	defer w.mu.Unlock()
	base := w.rolePermissionsLocked(guildID(g), 0)
	for _, r := range roles {
		_, idx := idKind(r)
		base |= w.rolePermissionsLocked(r, idx)
	}
	if base&PermAdministrator != 0 {
		return permAll
	}
	var roleAllow, roleDeny uint64
	var member *Overwrite
	ows := w.overwrites[channel]
	for i, o := range ows {
		switch {
		case o.Member:
			if o.ID == user {
				member = &ows[i]
			}
		case o.ID == guildID(g):
			base = base&^o.Deny | o.Allow
		default:
			for _, r := range roles {
				if r == o.ID {
					roleAllow |= o.Allow
					roleDeny |= o.Deny
				}
			}
		}
	}
	base = base&^roleDeny | roleAllow
	if member != nil {
		base = base&^member.Deny | member.Allow
	}
	if base&PermViewChannel == 0 {
		return 0 // a channel one cannot see grants nothing
	}
	return base
}

// SetGuildAvailable starts or ends an outage of the i-th guild: its shard
// gets GUILD_DELETE with unavailable true, then, when it is available
// again, a full GUILD_CREATE. Sessions identifying during the outage get
// an unavailable GUILD_CREATE for it.
func (s *Server) SetGuildAvailable(i int, available bool) (int, error) {
	s.world.mu.Lock()
	if s.world.outage[i] == !available {
		s.world.mu.Unlock()
		return 0, nil
	}
	if available {
		delete(s.world.outage, i)
	} else {
		s.world.outage[i] = true
	}
	s.world.mu.Unlock()
	if !available {
		return s.Dispatch(guildID(i), "GUILD_DELETE", s.unavailableGuild(i))
	}
	// Members are sent in full unless the guild is large for the
	// default threshold.
	return s.Dispatch(guildID(i), "GUILD_CREATE", s.guildCreate(i, s.cfg.membersPerGuild > 50))
}

// GuildMemberAdd returns a GUILD_MEMBER_ADD payload for member m of the
// i-th guild.
func (s *Server) GuildMemberAdd(i, m int) []byte {
	b := s.appendMember(nil, i, m)
	b = append(b[:len(b)-1], `,"guild_id":`...)
	b = appendID(b, guildID(i))
	return append(b, '}')
}

// GuildMemberUpdate returns a GUILD_MEMBER_UPDATE payload for member m of
// the i-th guild.
func (s *Server) GuildMemberUpdate(i, m int) []byte {
	b := s.GuildMemberAdd(i, m)
	// The update event always carries the guild avatar and banner.
	return append(b[:len(b)-1], `,"avatar":null,"banner":null}`...)
}

// GuildMemberRemove returns a GUILD_MEMBER_REMOVE payload for member m of
// the i-th guild.
func (s *Server) GuildMemberRemove(i, m int) []byte {
	b := []byte(`{"guild_id":`)
	b = appendID(b, guildID(i))
	b = append(b, `,"user":`...)
	b = s.appendUser(b, s.userID(i, m))
	return append(b, '}')
}

// GuildDelete returns the GUILD_DELETE payload Discord sends when the bot
// leaves or is removed from the i-th guild (no unavailable field).
func (s *Server) GuildDelete(i int) []byte {
	b := []byte(`{"id":`)
	b = appendID(b, guildID(i))
	return append(b, '}')
}

// MessageDelete returns a MESSAGE_DELETE payload.
func (s *Server) MessageDelete(guildID, channelID, messageID uint64) []byte {
	b := []byte(`{"id":`)
	b = appendID(b, messageID)
	b = append(b, `,"channel_id":`...)
	b = appendID(b, channelID)
	if guildID != 0 {
		b = append(b, `,"guild_id":`...)
		b = appendID(b, guildID)
	}
	return append(b, '}')
}

// InteractionCreate returns an INTERACTION_CREATE payload for a slash
// command named command, used by the first non-bot member of the i-th
// guild in its first channel, and the interaction's token, which the
// server accepts on /interactions/{id}/{token}/callback and
// /webhooks/{application}/{token} for as long as it remembers the last
// 10,000 interactions.
func (s *Server) InteractionCreate(i int, command string) (payload []byte, token string) {
	id := s.world.mint()
	token = "aW50ZXJhY3Rpb24." + strconv.FormatUint(id, 36) + "." + newSessionID()
	channel := subID(i, kindChannel, 0)
	s.world.mu.Lock()
	if len(s.world.interOrder) >= maxMessages {
		delete(s.world.interaction, s.world.interOrder[0])
		s.world.interOrder = s.world.interOrder[1:]
	}
	s.world.interaction[token] = &interaction{id: id, guild: i, channel: channel}
	s.world.interOrder = append(s.world.interOrder, token)
	s.world.mu.Unlock()
	m := 1 % s.cfg.membersPerGuild
	b := []byte(`{"id":`)
	b = appendID(b, id)
	b = append(b, `,"application_id":`...)
	b = appendID(b, s.cfg.applicationID)
	b = append(b, `,"type":2,"data":{"id":`...)
	b = appendID(b, subID(i, kindCommand, 0))
	b = append(b, `,"name":`...)
	q, _ := json.Marshal(command)
	b = append(b, q...)
	b = append(b, `,"type":1},"guild":{"id":`...)
	b = appendID(b, guildID(i))
	b = append(b, `,"locale":"en-US","features":[]},"guild_id":`...)
	b = appendID(b, guildID(i))
	b = append(b, `,"channel":`...)
	b = s.appendChannel(b, i, 0)
	b = append(b, `,"channel_id":`...)
	b = appendID(b, channel)
	b = append(b, `,"member":`...)
	member := s.appendMember(nil, i, m)
	b = append(b, member[:len(member)-1]...)
	b = append(b, `,"permissions":"`...)
	b = strconv.AppendUint(b, s.permissions(i, m, channel), 10)
	b = append(b, `"},"token":"`...)
	b = append(b, token...)
	b = append(b, `","version":1,"app_permissions":"`...)
	b = strconv.AppendUint(b, s.permissions(i, 0, channel), 10)
	b = append(b, `","locale":"en-US","guild_locale":"en-US","entitlements":[],"authorizing_integration_owners":{"0":`...)
	b = appendID(b, guildID(i))
	b = append(b, `},"context":0,"attachment_size_limit":10485760}`...)
	return b, token
}

func appendReaction(b []byte, r *reaction, self uint64) []byte {
	me := false
	for _, u := range r.users {
		if u == self {
			me = true
		}
	}
	b = append(b, `{"count":`...)
	b = strconv.AppendInt(b, int64(len(r.users)), 10)
	b = append(b, `,"count_details":{"burst":0,"normal":`...)
	b = strconv.AppendInt(b, int64(len(r.users)), 10)
	b = append(b, `},"me":`...)
	b = strconv.AppendBool(b, me)
	b = append(b, `,"me_burst":false,"emoji":`...)
	b = appendEmoji(b, r.emoji)
	return append(b, `,"burst_colors":[]}`...)
}

// appendEmoji writes a partial emoji from "name" (unicode) or "name:id".
func appendEmoji(b []byte, e string) []byte {
	name, id := e, ""
	for i := len(e) - 1; i >= 0; i-- {
		if e[i] == ':' {
			name, id = e[:i], e[i+1:]
			break
		}
	}
	b = append(b, `{"id":`...)
	if id == "" {
		b = append(b, "null"...)
	} else {
		b = append(b, '"')
		b = append(b, id...)
		b = append(b, '"')
	}
	b = append(b, `,"name":`...)
	q, _ := json.Marshal(name)
	return append(append(b, q...), '}')
}
