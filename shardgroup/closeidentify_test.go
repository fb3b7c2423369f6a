package shardgroup

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/gateway"
	"github.com/gorilla/websocket"
)

// unlockTimes is an IdentifyLimiter that lets every IDENTIFY go at once
// and notes when each bucket is given back.
type unlockTimes chan time.Time

func (u unlockTimes) WaitBucket(context.Context, int) error { return nil }
func (u unlockTimes) UnlockBucket(int)                      { u <- time.Now() }

// TestBucketKeptUntilTheGatewayReadsTheClose: a shard stopped with its
// IDENTIFY sent and no READY gives its identify bucket back only once the
// gateway has read the close frame that follows the IDENTIFY (so it has
// surely read the IDENTIFY): the bucket's next IDENTIFY cannot reach the
// gateway less than an interval after this one, however late the gateway
// reads what it was sent.
func TestBucketKeptUntilTheGatewayReadsTheClose(t *testing.T) {
	identified := make(chan struct{})
	readOn := make(chan struct{})
	closeRead := make(chan time.Time, 1)
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.WriteMessage(websocket.TextMessage, []byte(`{"op":10,"d":{"heartbeat_interval":45000}}`))
		for {
			_, p, err := c.ReadMessage()
			if err != nil {
				return
			}
			if strings.Contains(string(p), `"op":2`) {
				break
			}
		}
		c.SetCloseHandler(func(code int, _ string) error {
			closeRead <- time.Now() // read, not yet answered
			return c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), time.Now().Add(time.Second))
		})
		close(identified)
		<-readOn // a gateway slow to read on: the close frame waits
		_, _, _ = c.ReadMessage()
	}))
	defer gw.Close()
	unlocked := make(unlockTimes, 1)
	r, err := New(Config{ID: 1, ShardIDs: []int{0}, ShardCount: 1, Token: "MTIz.gofleet.test", GatewayURL: "ws" + strings.TrimPrefix(gw.URL, "http"),
		Intents: gateway.IntentGuilds, IdentifyLimiter: unlocked, ClientOptions: []bot.ConfigOpt{quietREST}})
	if err != nil {
		t.Fatal(err)
	}
	r.Start(context.Background())
	select {
	case <-identified:
	case <-time.After(10 * time.Second):
		t.Fatal("no IDENTIFY in 10 s")
	}
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := r.Stop(ctx, false)
		stopped <- err
	}()
	select {
	case <-unlocked:
		t.Fatal("the bucket was given back before the gateway read the close frame after the IDENTIFY")
	case <-time.After(closeWait / 4):
	}
	close(readOn)
	var read time.Time
	select {
	case read = <-closeRead:
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway read no close frame")
	}
	if at := <-unlocked; at.Before(read) {
		t.Errorf("the bucket was given back %v before the gateway read the close frame", read.Sub(at))
	}
	if err := <-stopped; err != nil {
		t.Errorf("Stop = %v", err)
	}
}
