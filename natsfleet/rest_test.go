package natsfleet_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/rest"
	"github.com/disgoorg/snowflake/v2"

	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/natsfleet"
	"github.com/gofleet/fleet/restproxy"
)

func init() { childKinds["rest"] = restChild }

// restChild posts its requests through the fleet's REST proxy, all at
// once, and says how many failed.
func restChild(a childArgs) error {
	opts, err := natsfleet.RESTProxy{URL: a.ProxyURL}.ClientOpts()
	if err != nil {
		return err
	}
	c := rest.NewClient(a.Token, append(opts, rest.WithLogger(quiet))...)
	defer c.Close(context.Background())
	r := rest.New(c)
	fmt.Println("ready")
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []error
	for i := range a.Requests {
		wg.Go(func() {
			if _, err := r.CreateMessage(snowflake.ID(a.Channels[i%len(a.Channels)]), discord.MessageCreate{Content: "hi"}); err != nil {
				mu.Lock()
				failed = append(failed, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(failed) > 0 {
		fmt.Printf("%d failed, first: %v\n", len(failed), failed[0])
	} else {
		fmt.Println("done")
	}
	waitStdin()
	return nil
}

// TestRESTLimitsAcrossProcesses: processes that send through the fleet's
// REST proxy together never exceed a bucket.
func TestRESTLimitsAcrossProcesses(t *testing.T) {
	t.Parallel()
	const procs, each, channels = 3, 30, 2
	s, err := discordtest.Start(discordtest.WithGuilds(1), discordtest.WithGuildShape(2, channels, 0),
		discordtest.WithRouteRateLimit(10, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	l, err := restproxy.New(restproxy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := restproxy.NewServer(l, restproxy.ServerConfig{Upstream: "http://" + s.Addr(), Token: s.Token()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan struct{})
	go func() { defer close(served); _ = hs.Serve(ln) }()
	defer func() {
		_ = hs.Shutdown(context.Background())
		<-served
		p.Close()
	}()

	var chans []uint64
	for i := range channels {
		chans = append(chans, uint64(s.ChannelID(0, i)))
	}
	kids := make([]*testChild, procs)
	for i := range kids {
		kids[i] = startChild(t, "rest", childArgs{Token: s.Token(), ProxyURL: "http://" + ln.Addr().String(), Requests: each, Channels: chans})
	}
	for i, c := range kids {
		if line, err := c.line(time.Minute); err != nil || line != "done" {
			t.Fatalf("process %d: %q, %v; want done", i, line, err)
		}
	}
	for _, c := range kids {
		c.stop()
	}
	st := s.Stats()
	total := 0
	for _, n := range st.REST.RateLimited {
		total += n
	}
	if total != 0 {
		t.Errorf("%d requests got 429 (%v), want none", total, st.REST.RateLimited)
	}
}

// TestRuntimeDoesNotLinkNATS: a single-process fleet does not link NATS.
func TestRuntimeDoesNotLinkNATS(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", "github.com/gofleet/fleet/runtime").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.Contains(pkg, "nats-io") {
			t.Errorf("runtime depends on %s", pkg)
		}
	}
}
