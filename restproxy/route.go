package restproxy

import "strings"

// classify turns a request path below /api/vN into the route the limiter
// keys buckets by, with IDs replaced by placeholders
// ("/channels/{channel.id}/messages/{id}"), and the major parameter that
// splits a route into independent buckets: the channel, guild, or webhook
// ID plus token. Routes under /interactions are exempt from the global
// limit, as Discord exempts interaction endpoints.
//
// The major parameter can hold a webhook token: it never leaves the
// limiter (no log, no hook, no error).
func classify(path string) (route, major string, exempt bool) {
	var b strings.Builder
	b.Grow(len(path) + 16)
	var first, prev string
	n := 0
	for i := 0; i < len(path); {
		if path[i] == '/' {
			i++
			continue
		}
		j := strings.IndexByte(path[i:], '/')
		if j < 0 {
			j = len(path) - i
		}
		seg := path[i : i+j]
		i += j
		b.WriteByte('/')
		switch {
		case n == 1 && first == "channels":
			major = "channel:" + seg
			b.WriteString("{channel.id}")
		case n == 1 && first == "guilds" && isSnowflake(seg):
			major = "guild:" + seg
			b.WriteString("{guild.id}")
		case n == 1 && first == "webhooks":
			major = "webhook:" + seg
			b.WriteString("{webhook.id}")
		case n == 2 && first == "webhooks" && !isSnowflake(seg):
			major += "/" + seg
			b.WriteString("{webhook.token}")
		case n == 1 && first == "interactions":
			major = "interaction:" + seg
			b.WriteString("{interaction.id}")
		case n == 2 && first == "interactions":
			b.WriteString("{interaction.token}")
		case prev == "reactions":
			b.WriteString("{emoji}")
		case prev == "invites" || prev == "templates":
			b.WriteString("{code}")
		case isSnowflake(seg):
			b.WriteString("{id}")
		default:
			b.WriteString(seg)
		}
		if n == 0 {
			first = seg
		}
		prev = seg
		n++
	}
	if b.Len() == 0 {
		return "/", "", false
	}
	return b.String(), major, first == "interactions"
}

func isSnowflake(s string) bool {
	if s == "" || len(s) > 20 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// apiPath strips the "/api" or "/api/vN" prefix of a Discord URL path.
func apiPath(p string) string {
	rest, ok := strings.CutPrefix(p, "/api")
	if !ok || (rest != "" && rest[0] != '/') {
		return p
	}
	if strings.HasPrefix(rest, "/v") {
		j := strings.IndexByte(rest[1:], '/')
		if j < 0 {
			return "/"
		}
		rest = rest[1+j:]
	}
	return rest
}
