package multihost

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/gofleet/fleet/discordtest"
)

// Sender dispatches MESSAGE_CREATEs spread over every guild of a
// discordtest server at a steady rate, each with its own message ID, and
// remembers the IDs that reached a session (connected or resumable: a
// disconnected one receives them on RESUME).
type Sender struct {
	s    *discordtest.Server
	rate int

	mu       sync.Mutex // guards sent, unrouted
	sent     []uint64
	unrouted int
}

// NewSender returns a Sender of rate events per second to s.
func NewSender(s *discordtest.Server, rate int) *Sender {
	return &Sender{s: s, rate: rate}
}

// Run sends until ctx ends, in the caller's goroutine, in batches every
// 10 ms so that the rate holds on a busy machine.
func (d *Sender) Run(ctx context.Context) error {
	const tick = 10 * time.Millisecond
	t := time.NewTicker(tick)
	defer t.Stop()
	start := time.Now()
	n := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			due := int(now.Sub(start).Seconds() * float64(d.rate))
			for ; n < due; n++ {
				g := d.s.GuildID(n % d.s.Guilds())
				payload := d.s.MessageCreate(g, "load", n)
				id, err := messageID(payload)
				if err != nil {
					return err
				}
				k, err := d.s.Dispatch(g, "MESSAGE_CREATE", payload)
				if err != nil {
					return err
				}
				d.mu.Lock()
				if k > 0 {
					d.sent = append(d.sent, id)
				} else {
					d.unrouted++
				}
				d.mu.Unlock()
			}
		}
	}
}

// Mark returns how many events have been sent so far: the start or end
// of a phase for [Sender.Sent].
func (d *Sender) Mark() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.sent)
}

// Sent returns the IDs of the events sent between two marks (to = -1:
// until now).
func (d *Sender) Sent(from, to int) []uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if to < 0 || to > len(d.sent) {
		to = len(d.sent)
	}
	return append([]uint64(nil), d.sent[from:to]...)
}

// Unrouted returns how many events found no session of their shard (a
// shard that never connected): not sent, so never counted as lost.
func (d *Sender) Unrouted() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.unrouted
}

func messageID(payload []byte) (uint64, error) {
	var m struct {
		ID json.RawMessage `json:"id"`
	}
	if err := json.Unmarshal(payload, &m); err != nil {
		return 0, fmt.Errorf("message payload: %w", err)
	}
	s := string(m.ID)
	if len(s) >= 2 && s[0] == '"' {
		s = s[1 : len(s)-1]
	}
	return strconv.ParseUint(s, 10, 64)
}
