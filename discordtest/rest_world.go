package discordtest

import (
	"bytes"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Discord's JSON error codes the REST API answers with.
const (
	codeUnknownChannel     = 10003
	codeUnknownGuild       = 10004
	codeUnknownMember      = 10007
	codeUnknownMessage     = 10008
	codeUnknownRole        = 10011
	codeUnknownUser        = 10013
	codeUnknownEmoji       = 10014
	codeUnknownWebhook     = 10015
	codeUnknownInteraction = 10062
	codeAlreadyAcked       = 40060
	codeMissingAccess      = 50001
	codeNotAuthor          = 50005
	codeEmptyMessage       = 50006
	codeMissingPermissions = 50013
	codeBulkCount          = 50016
	codeBulkTooOld         = 50034
	codeInvalidBody        = 50035
	codeInvalidJSON        = 50109
)

func (s *Server) fail(w http.ResponseWriter, status, code int, message string) {
	s.restReply(w, status, restJSONError(code, message))
}

func (s *Server) noContent(w http.ResponseWriter) { s.restReply(w, http.StatusNoContent, nil) }

func (s *Server) ok(w http.ResponseWriter, body []byte) { s.restReply(w, http.StatusOK, body) }

// handleREST answers a request that went through the limits.
func (s *Server) handleREST(w http.ResponseWriter, r *http.Request, c restCall) {
	switch c.route {
	case routeGateway:
		s.ok(w, []byte(`{"url":"`+s.wsURL+`"}`))
	case routeGatewayBot:
		s.ok(w, s.gatewayBot())
	case routeMe, "PATCH /users/@me":
		s.ok(w, s.appendSelf(nil))
	case "GET /users/@me/guilds":
		s.currentUserGuilds(w, r)
	case "DELETE /users/@me/guilds/{id}":
		g := s.guildOf(c.ids[0])
		if g < 0 {
			s.fail(w, http.StatusNotFound, codeUnknownGuild, "Unknown Guild")
			return
		}
		_, _ = s.Dispatch(guildID(g), "GUILD_DELETE", s.GuildDelete(g))
		s.noContent(w)
	case routeUser:
		if !s.userExists(c.ids[0]) {
			s.fail(w, http.StatusNotFound, codeUnknownUser, "Unknown User")
			return
		}
		s.ok(w, s.appendUser(nil, c.ids[0]))
	case routeApplication, "GET /oauth2/applications/@me":
		s.ok(w, s.application())
	case "GET /applications/{id}/commands", "PUT /applications/{id}/commands", "POST /applications/{id}/commands",
		"GET /applications/{id}/guilds/{id}/commands", "PUT /applications/{id}/guilds/{id}/commands":
		s.commands(w, r, c)
	case routeGuild:
		g := s.guildOf(c.ids[0])
		if g < 0 {
			s.fail(w, http.StatusNotFound, codeUnknownGuild, "Unknown Guild")
			return
		}
		b := s.appendGuildFields([]byte{'{'}, g)
		if r.URL.Query().Get("with_counts") == "true" {
			b = strconv.AppendInt(append(b, `,"approximate_member_count":`...), int64(s.cfg.membersPerGuild), 10)
			b = append(b, `,"approximate_presence_count":0`...)
		}
		s.ok(w, append(b, '}'))
	default:
		if strings.Contains(c.route, " /guilds/") {
			s.guildREST(w, r, c)
			return
		}
		if strings.Contains(c.route, " /channels/") {
			s.channelREST(w, r, c)
			return
		}
		s.interactionREST(w, r, c)
	}
}

// guildREST answers the routes below /guilds/{id}/.
func (s *Server) guildREST(w http.ResponseWriter, r *http.Request, c restCall) {
	g := s.guildOf(c.ids[0])
	if g < 0 {
		s.fail(w, http.StatusNotFound, codeUnknownGuild, "Unknown Guild")
		return
	}
	switch c.route {
	case "GET /guilds/{id}/channels":
		b := []byte{'['}
		for ch := 0; ch < s.cfg.channelsPerGuild; ch++ {
			if ch > 0 {
				b = append(b, ',')
			}
			b = s.appendChannel(b, g, ch)
		}
		s.ok(w, append(b, ']'))
		return
	case "GET /guilds/{id}/roles":
		b := []byte{'['}
		for ro := 0; ro <= s.cfg.rolesPerGuild; ro++ {
			if ro > 0 {
				b = append(b, ',')
			}
			b = s.appendRole(b, g, ro)
		}
		s.ok(w, append(b, ']'))
		return
	case "GET /guilds/{id}/members":
		limit, after := 1, uint64(0)
		if v := r.URL.Query().Get("limit"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 1000 {
				s.restReply(w, http.StatusBadRequest, formError("limit", "NUMBER_TYPE_MAX", "int value should be less than or equal to 1000."))
				return
			}
			limit = n
		}
		if v := r.URL.Query().Get("after"); v != "" {
			after, _ = strconv.ParseUint(v, 10, 64)
		}
		ms := make([]int, 0, s.cfg.membersPerGuild)
		for m := 0; m < s.cfg.membersPerGuild; m++ {
			ms = append(ms, m)
		}
		slices.SortFunc(ms, func(a, b int) int { return cmpU64(s.userID(g, a), s.userID(g, b)) })
		b := []byte{'['}
		n := 0
		for _, m := range ms {
			if s.userID(g, m) <= after || n == limit {
				continue
			}
			if n > 0 {
				b = append(b, ',')
			}
			b = s.appendMember(b, g, m)
			n++
		}
		s.ok(w, append(b, ']'))
		return
	}
	m := s.memberIndex(g, c.ids[1])
	if m < 0 {
		s.fail(w, http.StatusNotFound, codeUnknownMember, "Unknown Member")
		return
	}
	switch c.route {
	case routeMember:
		s.ok(w, s.appendMember(nil, g, m))
	case "PATCH /guilds/{id}/members/{user}":
		body, status, errBody := readJSON(r)
		if status != 0 {
			s.restReply(w, status, errBody)
			return
		}
		var p map[string]json.RawMessage
		_ = json.Unmarshal(body, &p)
		need := uint64(0)
		if _, ok := p["nick"]; ok {
			need |= PermManageNicknames
		}
		if _, ok := p["roles"]; ok {
			need |= PermManageRoles
		}
		if !s.mayActOn(w, g, m, need) {
			return
		}
		_, _ = s.Dispatch(guildID(g), "GUILD_MEMBER_UPDATE", s.GuildMemberUpdate(g, m))
		s.ok(w, s.appendMember(nil, g, m))
	case "DELETE /guilds/{id}/members/{user}":
		if !s.mayActOn(w, g, m, PermKickMembers) {
			return
		}
		_, _ = s.Dispatch(guildID(g), "GUILD_MEMBER_REMOVE", s.GuildMemberRemove(g, m))
		s.noContent(w)
	case "PUT /guilds/{id}/members/{user}/roles/{id}", "DELETE /guilds/{id}/members/{user}/roles/{id}":
		role := -1
		for ro := 1; ro <= s.cfg.rolesPerGuild; ro++ {
			if roleID(g, ro) == c.ids[2] {
				role = ro
			}
		}
		if role < 0 {
			s.fail(w, http.StatusNotFound, codeUnknownRole, "Unknown Role")
			return
		}
		// A bot manages only the roles below its highest one.
		if s.permissions(g, 0, subID(g, kindChannel, 0))&PermManageRoles == 0 || s.rolePosition(role) >= s.rolePosition(1) {
			s.fail(w, http.StatusForbidden, codeMissingPermissions, "Missing Permissions")
			return
		}
		_, _ = s.Dispatch(guildID(g), "GUILD_MEMBER_UPDATE", s.GuildMemberUpdate(g, m))
		s.noContent(w)
	}
}

// mayActOn checks that the bot holds need in the guild (its permissions
// in no channel: roles only) and outranks member m; it answers 403 if not.
func (s *Server) mayActOn(w http.ResponseWriter, g, m int, need uint64) bool {
	base := s.world.rolePermissions(guildID(g), 0)
	for _, r := range s.memberRoles(g, 0) {
		_, idx := idKind(r)
		base |= s.world.rolePermissions(r, idx)
	}
	owner := m == 1%s.cfg.membersPerGuild
	if (base&PermAdministrator == 0 && base&need != need) || (owner && m != 0) {
		s.fail(w, http.StatusForbidden, codeMissingPermissions, "Missing Permissions")
		return false
	}
	return true
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// channelREST answers the routes below /channels/{id}, judging the bot's
// permissions in the channel as Discord does: 50001 when it cannot see
// the channel, 50013 when it lacks the permission for the action.
func (s *Server) channelREST(w http.ResponseWriter, r *http.Request, c restCall) {
	g, _ := s.channelOf(c.ids[0])
	if g < 0 {
		s.fail(w, http.StatusNotFound, codeUnknownChannel, "Unknown Channel")
		return
	}
	channel := c.ids[0]
	perms := s.permissions(g, 0, channel)
	if perms&PermViewChannel == 0 {
		s.fail(w, http.StatusForbidden, codeMissingAccess, "Missing Access")
		return
	}
	need := func(p uint64) bool {
		if perms&p != p {
			s.fail(w, http.StatusForbidden, codeMissingPermissions, "Missing Permissions")
			return false
		}
		return true
	}
	switch c.route {
	case routeChannel:
		s.ok(w, s.appendChannel(nil, g, s.channelIndex(channel)))
	case "POST /channels/{id}/typing":
		if need(PermSendMessages) {
			s.noContent(w)
		}
	case routeCreateMessage:
		if need(PermSendMessages) {
			s.createMessage(w, r, g, channel, s.cfg.applicationID, 0, nil)
		}
	case "GET /channels/{id}/messages":
		s.listMessages(w, r, channel, perms)
	case "POST /channels/{id}/messages/bulk-delete":
		if need(PermManageMessages) {
			s.bulkDelete(w, r, g, channel)
		}
	default:
		s.messageREST(w, r, c, g, channel, perms, need)
	}
}

// channelIndex is the index of a channel ID within its guild.
func (s *Server) channelIndex(id uint64) int { _, c := s.channelOf(id); return c }

// messageREST answers the routes of one message and its reactions.
func (s *Server) messageREST(w http.ResponseWriter, r *http.Request, c restCall, g int, channel, perms uint64, need func(uint64) bool) {
	id := c.ids[1]
	var m message
	if !s.world.withMessage(id, func(p *message) { m = *p }) || m.channel != channel {
		s.fail(w, http.StatusNotFound, codeUnknownMessage, "Unknown Message")
		return
	}
	switch c.route {
	case "GET /channels/{id}/messages/{id}":
		if need(PermReadMessageHistory) {
			s.ok(w, s.appendMessage(nil, &m, false))
		}
	case "PATCH /channels/{id}/messages/{id}":
		if m.author != s.cfg.applicationID {
			s.fail(w, http.StatusForbidden, codeNotAuthor, "Cannot edit a message authored by another user")
			return
		}
		s.editMessage(w, r, g, id)
	case "DELETE /channels/{id}/messages/{id}":
		if m.author != s.cfg.applicationID && !need(PermManageMessages) {
			return
		}
		s.world.deleteMessage(id)
		_, _ = s.Dispatch(guildID(g), "MESSAGE_DELETE", s.MessageDelete(guildID(g), channel, id))
		s.noContent(w)
	case "PUT /channels/{id}/messages/{id}/reactions/{emoji}/@me", "DELETE /channels/{id}/messages/{id}/reactions/{emoji}/@me":
		emoji := c.strs[0]
		if strings.Contains(emoji, ":") {
			// No guild of the simulator has custom emojis.
			s.fail(w, http.StatusBadRequest, codeUnknownEmoji, "Unknown Emoji")
			return
		}
		add := strings.HasPrefix(c.route, "PUT")
		if add && !need(PermAddReactions|PermReadMessageHistory) {
			return
		}
		changed := false
		s.world.withMessage(id, func(p *message) { changed = p.react(emoji, s.cfg.applicationID, add) })
		if changed {
			t := "MESSAGE_REACTION_REMOVE"
			if add {
				t = "MESSAGE_REACTION_ADD"
			}
			_, _ = s.Dispatch(guildID(g), t, s.reactionEvent(g, &m, emoji, add))
		}
		s.noContent(w)
	case "GET /channels/{id}/messages/{id}/reactions/{emoji}":
		if !need(PermReadMessageHistory) {
			return
		}
		b := []byte{'['}
		for _, rc := range m.reactions {
			if rc.emoji != c.strs[0] {
				continue
			}
			for i, u := range rc.users {
				if i > 0 {
					b = append(b, ',')
				}
				b = s.appendUser(b, u)
			}
		}
		s.ok(w, append(b, ']'))
	}
}

// react adds or removes a user's reaction; it reports whether it changed.
func (m *message) react(emoji string, user uint64, add bool) bool {
	for i, r := range m.reactions {
		if r.emoji != emoji {
			continue
		}
		j := slices.Index(r.users, user)
		switch {
		case add && j < 0:
			r.users = append(r.users, user)
			return true
		case !add && j >= 0:
			r.users = slices.Delete(r.users, j, j+1)
			if len(r.users) == 0 {
				m.reactions = slices.Delete(m.reactions, i, i+1)
			}
			return true
		}
		return false
	}
	if !add {
		return false
	}
	m.reactions = append(m.reactions, &reaction{emoji: emoji, users: []uint64{user}})
	return true
}

// reactionEvent encodes MESSAGE_REACTION_ADD or _REMOVE for the bot.
func (s *Server) reactionEvent(g int, m *message, emoji string, add bool) []byte {
	b := []byte(`{"user_id":`)
	b = appendID(b, s.cfg.applicationID)
	b = append(b, `,"channel_id":`...)
	b = appendID(b, m.channel)
	b = append(b, `,"message_id":`...)
	b = appendID(b, m.id)
	b = append(b, `,"guild_id":`...)
	b = appendID(b, guildID(g))
	if add {
		b = append(b, `,"member":`...)
		b = s.appendMember(b, g, 0)
		b = append(b, `,"message_author_id":`...)
		b = appendID(b, m.author)
		b = append(b, `,"burst_colors":[]`...)
	}
	b = append(b, `,"emoji":`...)
	b = appendEmoji(b, emoji)
	return append(b, `,"burst":false,"type":0}`...)
}

func (s *Server) listMessages(w http.ResponseWriter, r *http.Request, channel, perms uint64) {
	limit := 50
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			s.restReply(w, http.StatusBadRequest, formError("limit", "NUMBER_TYPE_MAX", "int value should be less than or equal to 100."))
			return
		}
		limit = n
	}
	b := []byte{'['}
	if perms&PermReadMessageHistory == 0 {
		s.ok(w, append(b, ']')) // Discord answers an empty list
		return
	}
	var ms []message
	s.world.mu.Lock()
	for i := len(s.world.order) - 1; i >= 0 && len(ms) < limit; i-- {
		if m := s.world.messages[s.world.order[i]]; m != nil && m.channel == channel {
			ms = append(ms, *m)
		}
	}
	s.world.mu.Unlock()
	for i := range ms {
		if i > 0 {
			b = append(b, ',')
		}
		b = s.appendMessage(b, &ms[i], false)
	}
	s.ok(w, append(b, ']'))
}

func (s *Server) bulkDelete(w http.ResponseWriter, r *http.Request, g int, channel uint64) {
	body, status, errBody := readJSON(r)
	if status != 0 {
		s.restReply(w, status, errBody)
		return
	}
	var req struct {
		Messages []string `json:"messages"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		s.restReply(w, http.StatusBadRequest, formError("messages", "BASE_TYPE_BAD_TYPE", "Must be an array of snowflakes."))
		return
	}
	if len(req.Messages) < 2 || len(req.Messages) > 100 {
		s.fail(w, http.StatusBadRequest, codeBulkCount, "You can only bulk delete messages between 2 and 100 at a time.")
		return
	}
	ids := make([]uint64, 0, len(req.Messages))
	old := time.Now().Add(-14 * 24 * time.Hour)
	for _, v := range req.Messages {
		id, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			s.restReply(w, http.StatusBadRequest, formError("messages", "NUMBER_TYPE_COERCE", "Value is not snowflake."))
			return
		}
		if snowflakeTime(id).Before(old) {
			s.fail(w, http.StatusBadRequest, codeBulkTooOld, "You can only bulk delete messages that are under 14 days old.")
			return
		}
		ids = append(ids, id)
	}
	b := []byte(`{"ids":[`)
	n := 0
	for _, id := range ids {
		known := false
		s.world.withMessage(id, func(m *message) { known = m.channel == channel })
		if !known {
			continue
		}
		s.world.deleteMessage(id)
		if n > 0 {
			b = append(b, ',')
		}
		b = appendID(b, id)
		n++
	}
	b = append(b, `],"channel_id":`...)
	b = appendID(b, channel)
	b = append(b, `,"guild_id":`...)
	b = appendID(b, guildID(g))
	if n > 0 {
		_, _ = s.Dispatch(guildID(g), "MESSAGE_DELETE_BULK", append(b, '}'))
	}
	s.noContent(w)
}

// messageCreate is the part of a message create or edit body the server
// reads.
type messageCreate struct {
	Content      *string           `json:"content"`
	Embeds       []json.RawMessage `json:"embeds"`
	StickerIDs   []json.RawMessage `json:"sticker_ids"`
	Nonce        json.RawMessage   `json:"nonce"`
	EnforceNonce bool              `json:"enforce_nonce"`
}

// readJSON reads a JSON or multipart (payload_json) body; callers decode
// it. A status other than 0 is Discord's answer to a body it cannot read.
func readJSON(r *http.Request) (raw []byte, status int, body []byte) {
	raw, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, 8<<20))
	if err != nil {
		return nil, http.StatusRequestEntityTooLarge, restJSONError(40005, "Request entity too large")
	}
	if mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "multipart/form-data" {
		mr := multipart.NewReader(bytes.NewReader(raw), params["boundary"])
		raw = nil
		for {
			p, err := mr.NextPart()
			if err != nil {
				break
			}
			if p.FormName() == "payload_json" {
				raw, _ = io.ReadAll(p)
				break
			}
		}
	}
	return raw, 0, nil
}

// formError is Discord's 50035 body for one bad field.
func formError(field, code, message string) []byte {
	b, _ := json.Marshal(map[string]any{"message": "Invalid Form Body", "code": codeInvalidBody,
		"errors": map[string]any{field: map[string]any{"_errors": []map[string]string{{"code": code, "message": message}}}}})
	return b
}

// readMessage parses a message body; edit bodies may be empty of content.
func readMessage(r *http.Request, edit bool) (mc messageCreate, status int, body []byte) {
	raw, status, body := readJSON(r)
	if status != 0 {
		return mc, status, body
	}
	if err := json.Unmarshal(raw, &mc); err != nil {
		return mc, http.StatusBadRequest, restJSONError(codeInvalidJSON, "The request body contains invalid JSON.")
	}
	content := ""
	if mc.Content != nil {
		content = *mc.Content
	}
	if !edit && content == "" && len(mc.Embeds) == 0 && len(mc.StickerIDs) == 0 {
		return mc, http.StatusBadRequest, restJSONError(codeEmptyMessage, "Cannot send an empty message")
	}
	if utf8.RuneCountInString(content) > 2000 {
		return mc, http.StatusBadRequest, formError("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
	}
	if len(mc.Nonce) > 0 && string(mc.Nonce) != "null" {
		var str string
		var num int64
		switch {
		case json.Unmarshal(mc.Nonce, &str) == nil:
			if len(str) > 25 {
				return mc, http.StatusBadRequest, formError("nonce", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
			}
		case json.Unmarshal(mc.Nonce, &num) == nil:
		default:
			return mc, http.StatusBadRequest, formError("nonce", "BASE_TYPE_BAD_TYPE", "Must be a string or an integer.")
		}
	} else {
		mc.Nonce = nil
	}
	return mc, 0, nil
}

// createMessage creates a message by author (the bot, or an interaction's
// webhook), remembers it, dispatches MESSAGE_CREATE to the shard owning
// the guild and answers with it. With enforce_nonce, a nonce the author
// used in the channel in the last few minutes answers with that message
// instead of a new one, as Discord does.
func (s *Server) createMessage(w http.ResponseWriter, r *http.Request, g int, channel, author, webhookID uint64, original *uint64) {
	mc, status, body := readMessage(r, false)
	if status != 0 {
		s.restReply(w, status, body)
		return
	}
	m := &message{guild: g, channel: channel, author: author, webhookID: webhookID}
	if mc.Content != nil {
		m.content = *mc.Content
	}
	if len(mc.Embeds) > 0 {
		m.embeds, _ = json.Marshal(mc.Embeds)
	}
	if len(mc.Nonce) > 0 {
		var str string
		if json.Unmarshal(mc.Nonce, &str) == nil {
			q, _ := json.Marshal(str)
			m.nonce, m.quoteNonce = q[1:len(q)-1], true
		} else {
			m.nonce = append([]byte(nil), mc.Nonce...)
		}
		if mc.EnforceNonce {
			m.nonceKey = strconv.FormatUint(channel, 10) + "/" + strconv.FormatUint(author, 10) + "/" + string(mc.Nonce)
		}
	}
	if m.nonceKey != "" {
		var prev message
		found := false
		s.world.mu.Lock()
		if id, ok := s.world.nonces[m.nonceKey]; ok {
			if p := s.world.messages[id]; p != nil && time.Since(snowflakeTime(id)) < 5*time.Minute {
				prev, found = *p, true
			}
		}
		s.world.mu.Unlock()
		if found {
			s.ok(w, s.appendMessage(nil, &prev, false))
			return
		}
	}
	m.id = s.world.mint()
	s.world.store(m)
	if m.nonceKey != "" {
		s.world.mu.Lock()
		s.world.nonces[m.nonceKey] = m.id
		s.world.mu.Unlock()
	}
	if original != nil {
		*original = m.id
	}
	s.dispatchBuilt(guildID(g), "MESSAGE_CREATE", func() []byte { return s.appendMessage(nil, m, true) })
	s.ok(w, s.appendMessage(nil, m, false))
}

// editMessage applies an edit body to a remembered message, dispatches
// MESSAGE_UPDATE and answers with the message.
func (s *Server) editMessage(w http.ResponseWriter, r *http.Request, g int, id uint64) {
	mc, status, body := readMessage(r, true)
	if status != 0 {
		s.restReply(w, status, body)
		return
	}
	var m message
	ok := s.world.withMessage(id, func(p *message) {
		if mc.Content != nil {
			p.content = *mc.Content
		}
		if mc.Embeds != nil {
			p.embeds, _ = json.Marshal(mc.Embeds)
		}
		p.edited = time.Now()
		m = *p
	})
	if !ok {
		s.fail(w, http.StatusNotFound, codeUnknownMessage, "Unknown Message")
		return
	}
	s.dispatchBuilt(guildID(g), "MESSAGE_UPDATE", func() []byte { return s.appendMessage(nil, &m, true) })
	s.ok(w, s.appendMessage(nil, &m, false))
}

// interactionREST answers interaction callbacks and the webhook routes
// of interaction tokens.
func (s *Server) interactionREST(w http.ResponseWriter, r *http.Request, c restCall) {
	token := c.strs[0]
	s.world.mu.Lock()
	in := s.world.interaction[token]
	var it interaction
	if in != nil {
		it = *in
	}
	s.world.mu.Unlock()
	if c.route == "POST /interactions/{id}/{token}/callback" {
		if in == nil || it.id != c.ids[0] {
			s.fail(w, http.StatusNotFound, codeUnknownInteraction, "Unknown interaction")
			return
		}
		s.interactionCallback(w, r, token, &it)
		return
	}
	if in == nil || c.ids[0] != s.cfg.applicationID {
		s.fail(w, http.StatusNotFound, codeUnknownWebhook, "Unknown Webhook")
		return
	}
	if c.route == "POST /webhooks/{id}/{token}" {
		if !it.acked {
			s.fail(w, http.StatusNotFound, codeUnknownWebhook, "Unknown Webhook")
			return
		}
		s.createMessage(w, r, it.guild, it.channel, s.cfg.applicationID, s.cfg.applicationID, nil)
		return
	}
	id := c.ids[1] // 0 for @original
	if id == 0 {
		id = it.original
	}
	var m message
	if id == 0 || !s.world.withMessage(id, func(p *message) { m = *p }) || m.webhookID == 0 || m.channel != it.channel {
		s.fail(w, http.StatusNotFound, codeUnknownMessage, "Unknown Message")
		return
	}
	switch {
	case strings.HasPrefix(c.route, "GET"):
		s.ok(w, s.appendMessage(nil, &m, false))
	case strings.HasPrefix(c.route, "PATCH"):
		s.editMessage(w, r, it.guild, id)
	default:
		s.world.deleteMessage(id)
		_, _ = s.Dispatch(guildID(it.guild), "MESSAGE_DELETE", s.MessageDelete(guildID(it.guild), it.channel, id))
		s.noContent(w)
	}
}

// interactionCallback acknowledges an interaction once: type 4 answers
// with a message (dispatched as MESSAGE_CREATE), 5 and 6 defer, 7 updates
// nothing the simulator keeps, 9 opens a modal.
func (s *Server) interactionCallback(w http.ResponseWriter, r *http.Request, token string, it *interaction) {
	raw, status, body := readJSON(r)
	if status != 0 {
		s.restReply(w, status, body)
		return
	}
	var cb struct {
		Type int             `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(raw, &cb); err != nil {
		s.restReply(w, http.StatusBadRequest, formError("type", "BASE_TYPE_REQUIRED", "This field is required"))
		return
	}
	switch cb.Type {
	case 4, 5, 6, 7, 9:
	default:
		s.restReply(w, http.StatusBadRequest, formError("type", "ENUM_TYPE_COERCE", "Value is not a valid enum value."))
		return
	}
	s.world.mu.Lock()
	in := s.world.interaction[token]
	already := in == nil || in.acked
	if !already {
		in.acked = true
	}
	s.world.mu.Unlock()
	if already {
		s.fail(w, http.StatusBadRequest, codeAlreadyAcked, "Interaction has already been acknowledged.")
		return
	}
	if cb.Type != 4 {
		s.noContent(w)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(cb.Data))
	r.Header.Set("Content-Type", "application/json")
	rec := &captureWriter{header: http.Header{}}
	var original uint64
	s.createMessage(rec, r, it.guild, it.channel, s.cfg.applicationID, s.cfg.applicationID, &original)
	if rec.status != http.StatusOK {
		s.world.mu.Lock()
		in.acked = false
		s.world.mu.Unlock()
		s.restReply(w, rec.status, rec.body.Bytes())
		return
	}
	s.world.mu.Lock()
	in.original = original
	s.world.mu.Unlock()
	s.noContent(w)
}

// captureWriter records an answer the server builds for itself.
type captureWriter struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (c *captureWriter) Header() http.Header         { return c.header }
func (c *captureWriter) WriteHeader(status int)      { c.status = status }
func (c *captureWriter) Write(p []byte) (int, error) { return c.body.Write(p) }

// currentUserGuilds answers GET /users/@me/guilds: partial guilds, by
// ID, up to limit (default and maximum 200) after the given ID.
func (s *Server) currentUserGuilds(w http.ResponseWriter, r *http.Request) {
	limit := 200
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 200 {
			s.restReply(w, http.StatusBadRequest, formError("limit", "NUMBER_TYPE_MAX", "int value should be less than or equal to 200."))
			return
		}
		limit = n
	}
	first := 0
	if v := r.URL.Query().Get("after"); v != "" {
		after, _ := strconv.ParseUint(v, 10, 64)
		for first < s.cfg.guilds && guildID(first) <= after {
			first++
		}
	}
	b := []byte{'['}
	for g := first; g < s.cfg.guilds && g < first+limit; g++ {
		if g > first {
			b = append(b, ',')
		}
		b = append(b, `{"id":`...)
		b = appendID(b, guildID(g))
		b = append(b, `,"name":"guild-`...)
		b = strconv.AppendInt(b, int64(g), 10)
		b = append(b, `","icon":null,"banner":null,"owner":false,"permissions":"`...)
		b = strconv.AppendUint(b, s.permissions(g, 0, 0), 10)
		b = append(b, `","features":[]}`...)
	}
	s.ok(w, append(b, ']'))
}

// commands answers the application command routes: PUT replaces the
// list, POST adds one, GET lists them.
func (s *Server) commands(w http.ResponseWriter, r *http.Request, c restCall) {
	if c.ids[0] != s.cfg.applicationID {
		s.fail(w, http.StatusForbidden, codeMissingAccess, "Missing Access")
		return
	}
	guild := c.ids[1]
	if guild != 0 && s.guildOf(guild) < 0 {
		s.fail(w, http.StatusNotFound, codeUnknownGuild, "Unknown Guild")
		return
	}
	if r.Method == http.MethodGet {
		s.world.mu.Lock()
		b := s.world.commands[guild]
		s.world.mu.Unlock()
		if b == nil {
			b = []byte("[]")
		}
		s.ok(w, b)
		return
	}
	raw, status, body := readJSON(r)
	if status != 0 {
		s.restReply(w, status, body)
		return
	}
	var in []map[string]any
	if r.Method == http.MethodPost {
		var one map[string]any
		if json.Unmarshal(raw, &one) != nil {
			s.restReply(w, http.StatusBadRequest, formError("name", "BASE_TYPE_REQUIRED", "This field is required"))
			return
		}
		s.world.mu.Lock()
		_ = json.Unmarshal(s.world.commands[guild], &in)
		s.world.mu.Unlock()
		in = append(in, one)
	} else if json.Unmarshal(raw, &in) != nil {
		s.restReply(w, http.StatusBadRequest, formError("_root", "BASE_TYPE_BAD_TYPE", "Must be an array of commands."))
		return
	}
	if len(in) > 100 {
		s.restReply(w, http.StatusBadRequest, formError("_root", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length."))
		return
	}
	for _, cmd := range in {
		if name, _ := cmd["name"].(string); name == "" {
			s.restReply(w, http.StatusBadRequest, formError("name", "BASE_TYPE_REQUIRED", "This field is required"))
			return
		}
		if _, ok := cmd["id"]; !ok {
			cmd["id"] = strconv.FormatUint(s.world.mint(), 10)
		}
		cmd["application_id"] = strconv.FormatUint(s.cfg.applicationID, 10)
		cmd["version"] = strconv.FormatUint(s.world.mint(), 10)
		if _, ok := cmd["type"]; !ok {
			cmd["type"] = 1
		}
		if _, ok := cmd["description"]; !ok {
			cmd["description"] = ""
		}
		if _, ok := cmd["default_member_permissions"]; !ok {
			cmd["default_member_permissions"] = nil
		}
		if _, ok := cmd["nsfw"]; !ok {
			cmd["nsfw"] = false
		}
		if guild != 0 {
			cmd["guild_id"] = strconv.FormatUint(guild, 10)
		}
	}
	out, _ := json.Marshal(in)
	if len(in) == 0 {
		out = []byte("[]")
	}
	s.world.mu.Lock()
	s.world.commands[guild] = out
	s.world.mu.Unlock()
	if r.Method == http.MethodPost {
		one, _ := json.Marshal(in[len(in)-1])
		s.restReply(w, http.StatusCreated, one)
		return
	}
	s.ok(w, out)
}

// guildOf returns the index of the guild with this exact ID, or -1.
func (s *Server) guildOf(id uint64) int {
	g := s.guildIndex(id)
	if g < 0 || guildID(g) != id {
		return -1
	}
	return g
}

// channelOf returns the guild and index of a channel, or -1, -1.
func (s *Server) channelOf(id uint64) (g, c int) {
	g = s.guildIndex(id)
	kind, idx := idKind(id)
	if g < 0 || kind != kindChannel || idx >= s.cfg.channelsPerGuild || subID(g, kindChannel, idx) != id {
		return -1, -1
	}
	return g, idx
}

// memberIndex returns the index of a user among guild g's members, or -1.
func (s *Server) memberIndex(g int, user uint64) int {
	if user == s.cfg.applicationID {
		return 0
	}
	kind, m := idKind(user)
	if s.guildIndex(user) != g || kind != kindUser || m < 1 || m >= s.cfg.membersPerGuild || subID(g, kindUser, m) != user {
		return -1
	}
	return m
}

func (s *Server) userExists(id uint64) bool {
	g := s.guildIndex(id)
	return id == s.cfg.applicationID || (g >= 0 && s.memberIndex(g, id) > 0)
}

// ownerID is the user who owns the application: the first non-bot member
// of guild 0 when there is one.
func (s *Server) ownerID() uint64 {
	if s.cfg.membersPerGuild > 1 && s.cfg.guilds > 0 {
		return s.userID(0, 1)
	}
	return subID(0, kindUser, 1)
}

// application encodes GET /applications/@me and
// /oauth2/applications/@me.
func (s *Server) application() []byte {
	b := []byte(`{"id":`)
	b = appendID(b, s.cfg.applicationID)
	b = append(b, `,"name":"discordtest","icon":null,"description":"","rpc_origins":[],"bot_public":true,"bot_require_code_grant":false,"bot":`...)
	b = s.appendUser(b, s.cfg.applicationID)
	b = append(b, `,"owner":`...)
	b = s.appendUser(b, s.ownerID())
	b = append(b, `,"verify_key":"`...)
	b = append(b, strings.Repeat("0", 64)...)
	b = append(b, `","team":null,"tags":[],"flags":0,"approximate_guild_count":`...)
	b = strconv.AppendInt(b, int64(s.cfg.guilds), 10)
	b = append(b, `,"redirect_uris":[],"interactions_endpoint_url":null,"role_connections_verification_url":null`...)
	return append(b, `,"integration_types_config":{"0":{}}}`...)
}

// dispatchBuilt sends an event to the sessions that own a guild, as
// Dispatch does, and builds its payload only if there is one: a REST
// call with no client connected costs no encoding.
func (s *Server) dispatchBuilt(guildID uint64, t string, build func() []byte) {
	sessions, _ := s.liveSessions()
	var d []byte
	for _, ss := range sessions {
		if !ss.owns(guildID) {
			continue
		}
		if d == nil {
			d = build()
		}
		ss.append(t, d)
	}
}
