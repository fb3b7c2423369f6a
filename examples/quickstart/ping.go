package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/gofleet/fleet/discordtest"
)

// pingSource sends "!ping" messages as a user would, and reads the
// server's counters.
type pingSource interface {
	// ping sends "!ping" number n in the guild with index guild; ok
	// reports whether a session of the bot will receive it.
	ping(ctx context.Context, guild, n int) (ok bool, err error)
	// stats are the server's counters, if it has them to give.
	stats() (discordtest.Stats, bool)
}

// simSource pings through the embedded simulator.
type simSource struct{ s *discordtest.Server }

func (p simSource) ping(_ context.Context, guild, n int) (bool, error) {
	g := p.s.GuildID(guild % p.s.Guilds())
	sessions, err := p.s.Dispatch(g, "MESSAGE_CREATE", p.s.MessageCreate(g, "!ping", n))
	return sessions > 0, err
}

func (p simSource) stats() (discordtest.Stats, bool) { return p.s.Stats(), true }

// controlSource pings through cmd/fakediscord's control API.
type controlSource struct {
	url    string
	client *http.Client
}

func (p *controlSource) ping(ctx context.Context, guild, _ int) (bool, error) {
	body, _ := json.Marshal(map[string]any{"guild": guild, "content": "!ping"})
	var out struct {
		Sessions int `json:"sessions"`
	}
	if err := p.call(ctx, http.MethodPost, "/dispatch", body, &out); err != nil {
		return false, err
	}
	return out.Sessions > 0, nil
}

func (p *controlSource) stats() (discordtest.Stats, bool) {
	var st discordtest.Stats
	err := p.call(context.Background(), http.MethodGet, "/stats", nil, &st)
	return st, err == nil
}

func (p *controlSource) call(ctx context.Context, method, path string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(p.url, "/")+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("-control %s: %w", p.url, err)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("-control: %s %s: %w (is fakediscord running with -control?)", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("-control: %s %s: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("-control: %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(data))
	}
	return json.Unmarshal(data, out)
}
