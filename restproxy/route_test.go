package restproxy

import (
	"net/http"
	"net/url"
	"testing"
)

func TestRestClassify(t *testing.T) {
	for _, tc := range []struct {
		path, route, major string
		exempt             bool
	}{
		{"/channels/123/messages", "/channels/{channel.id}/messages", "channel:123", false},
		{"/channels/123/messages/456", "/channels/{channel.id}/messages/{id}", "channel:123", false},
		{"/channels/1/messages/2/reactions/%F0%9F%91%8D/@me", "/channels/{channel.id}/messages/{id}/reactions/{emoji}/@me", "channel:1", false},
		{"/guilds/77/members/88", "/guilds/{guild.id}/members/{id}", "guild:77", false},
		{"/guilds/templates/abc", "/guilds/templates/{code}", "", false},
		{"/invites/discord-go", "/invites/{code}", "", false},
		{"/webhooks/5/tok-en", "/webhooks/{webhook.id}/{webhook.token}", "webhook:5/tok-en", false},
		{"/webhooks/5", "/webhooks/{webhook.id}", "webhook:5", false},
		{"/interactions/9/aW50/callback", "/interactions/{interaction.id}/{interaction.token}/callback", "interaction:9", true},
		{"/users/@me", "/users/@me", "", false},
		{"/users/42", "/users/{id}", "", false},
		{"/gateway/bot", "/gateway/bot", "", false},
		{"", "/", "", false},
	} {
		route, major, exempt := classify(tc.path)
		if route != tc.route || major != tc.major || exempt != tc.exempt {
			t.Errorf("classify(%q) = %q, %q, %t; want %q, %q, %t", tc.path, route, major, exempt, tc.route, tc.major, tc.exempt)
		}
	}
}

func TestRestAPIPath(t *testing.T) {
	for in, want := range map[string]string{
		"/api/v10/channels/1": "/channels/1",
		"/api/v9/users/@me":   "/users/@me",
		"/api/gateway":        "/gateway",
		"/api/v10":            "/",
		"/apix/channels":      "/apix/channels",
		"/channels/1":         "/channels/1",
	} {
		if got := apiPath(in); got != want {
			t.Errorf("apiPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRestHeaderNamesAreCanonical(t *testing.T) {
	for _, k := range []string{hdrBucket, hdrLimit, hdrRemaining, hdrReset, hdrResetAfter, hdrScope, hdrGlobal} {
		if c := http.CanonicalHeaderKey(k); c != k {
			t.Errorf("%q is not canonical: %q", k, c)
		}
	}
}

func TestRestTokenless(t *testing.T) {
	for _, tc := range []struct {
		method, path string
		want         bool
	}{
		{"POST", "/interactions/9/aW50/callback", true},
		{"POST", "/interactions/9/aW50", true},
		{"POST", "/interactions/9", false},
		{"POST", "/webhooks/77/tok-en", true},
		{"PATCH", "/webhooks/77/tok-en/messages/@original", true},
		{"GET", "/webhooks/77", false},
		{"GET", "/webhooks/77/", false},
		{"GET", "/webhooks/77/88", false},
		{"GET", "/gateway", true},
		{"POST", "/gateway", false},
		{"GET", "/gateway/bot", false},
		{"GET", "/gateway/", false},
		{"GET", "/users/@me", false},
		{"GET", "/", false},
	} {
		if got := tokenless(tc.method, tc.path); got != tc.want {
			t.Errorf("tokenless(%s %s) = %t, want %t", tc.method, tc.path, got, tc.want)
		}
	}
}

func TestRestCheckPath(t *testing.T) {
	for raw, want := range map[string]string{
		"/api/v10/channels/1/messages":  "/channels/1/messages",
		"/api/v9/users/@me":             "/users/@me",
		"/api/v10/channels/1/messages/": "/channels/1/messages/",
		"/api/v10//users/@me":           "",
		"/api/v10/users/../x":           "",
		"/api/v10/./users":              "",
		"/api/v10/channels%2F1":         "",
		"/api/v10":                      "",
		"/api/v10/":                     "",
		"/api/v1000/users/@me":          "",
		"/oauth2/authorize":             "",
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		got, status, _ := checkPath(u)
		if got != want || (want == "") != (status != 0) {
			t.Errorf("checkPath(%s) = %q, %d; want %q", raw, got, status, want)
		}
	}
}
