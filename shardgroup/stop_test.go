package shardgroup

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"

	"github.com/gofleet/fleet/discordtest"
)

// TestStopHonoursCtx: a shard whose WebSocket handshake the gateway holds
// does not stop when asked; Stop gives up with its ctx and names it, and
// Done is closed only once the shard has ended (here when the gateway
// drops the held connection: the dial itself does not watch a stop).
func TestStopHonoursCtx(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	var mu sync.Mutex
	accepted := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // never answered
			mu.Unlock()
			select {
			case accepted <- struct{}{}:
			default:
			}
		}
	}()
	defer func() {
		ln.Close()
		<-done
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()
	srv := discordtest.NewServer() // for a token disgo accepts
	defer srv.Close()
	g, err := New(Config{ID: 3, ShardIDs: []int{0}, ShardCount: 1, Token: Token(srv.Token()), GatewayURL: "ws://" + ln.Addr().String(),
		IdentifyLimiter: noLimit{}, ClientOptions: []bot.ConfigOpt{quietREST}})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancelRun := context.WithCancel(context.Background())
	defer cancelRun()
	g.Start(runCtx)
	<-accepted
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = g.Stop(ctx, true)
	if err == nil || !strings.Contains(err.Error(), "group 3: shards [0] did not stop") {
		t.Fatalf("Stop = %v, want it to name shard 0", err)
	}
	select {
	case <-g.Done():
		t.Fatal("Done closed while the shard still runs")
	default:
	}
	cancelRun()
	mu.Lock()
	for _, c := range held {
		c.Close()
	}
	mu.Unlock()
	select {
	case <-g.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed after the shard ended")
	}
}
