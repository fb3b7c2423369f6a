//go:build !race

package shardgroup

import (
	"testing"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/events"
)

// TestMessageCreateBuildsWhatIsTaken: with listeners of MessageCreate
// only, a guild's MESSAGE_CREATE costs the allocations of a
// GuildMessageCreate less than with a listener of every event.
func TestMessageCreateBuildsWhatIsTaken(t *testing.T) {
	allocs := func(l bot.EventListener) float64 {
		g := offlineGroup(t, Config{ClientOptions: []bot.ConfigOpt{bot.WithEventListeners(l)}})
		return testing.AllocsPerRun(100, func() { feed(t, g, messageFrames[:1]) })
	}
	some := allocs(bot.NewListenerFunc(func(*events.MessageCreate) {}))
	every := allocs(bot.NewListenerFunc(func(bot.Event) {}))
	if every-some < 2 { // the GuildMessageCreate and its GenericGuildMessage
		t.Errorf("%.0f allocations per MESSAGE_CREATE for a MessageCreate listener, %.0f for a listener of every event", some, every)
	}
}
