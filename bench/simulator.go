package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/disgoorg/disgo/gateway"
	"github.com/gorilla/websocket"

	"github.com/gofleet/fleet/discordtest"
)

type simulatorResult struct {
	Scenario          string  `json:"scenario"`
	Shards            int     `json:"shards"`
	Events            int     `json:"events"` // per round; the better of the rounds counts
	Rounds            int     `json:"rounds"`
	EventsPerSec      float64 `json:"events_per_sec"`
	DisgoEvents       int     `json:"disgo_events"`
	DisgoEventsPerSec float64 `json:"disgo_events_per_sec"`
	IdleConns         int     `json:"idle_conns"`
	BytesPerConn      float64 `json:"bytes_per_conn"`
}

const simShards = 16

func runSimulator() (any, error) {
	res := simulatorResult{Scenario: "simulator", Shards: simShards, Events: 1_000_000, Rounds: 2, DisgoEvents: 50_000, IdleConns: 1000}
	var err error
	// The raw rate is the better of two rounds, so that a moment in which
	// the machine is busy elsewhere does not stand for the simulator.
	if res.EventsPerSec, err = rawThroughput(res.Events, res.Rounds); err != nil {
		return nil, fmt.Errorf("raw clients: %w", err)
	}
	if res.DisgoEventsPerSec, err = disgoThroughput(res.DisgoEvents); err != nil {
		return nil, fmt.Errorf("disgo shards: %w", err)
	}
	if res.BytesPerConn, err = bytesPerConn(res.IdleConns); err != nil {
		return nil, fmt.Errorf("idle connections: %w", err)
	}
	return res, nil
}

// identifyRaw dials and identifies one raw websocket client.
func identifyRaw(url, token string, shard, shards int) (*websocket.Conn, error) {
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	ws, _, err := d.Dial(url+"?v=10&encoding=json", nil)
	if err != nil {
		return nil, err
	}
	id, _ := json.Marshal(map[string]any{"op": 2, "d": map[string]any{
		"token": token, "intents": 513, "shard": [2]int{shard, shards},
		"properties": map[string]string{"os": "linux", "browser": "bench", "device": "bench"},
	}})
	if err := ws.WriteMessage(websocket.TextMessage, id); err != nil {
		ws.Close()
		return nil, err
	}
	return ws, nil
}

// rawThroughput streams events to 16 identified raw clients that read and
// discard frames, rounds times, and returns the best rate of MESSAGE_CREATEs
// delivered per second.
func rawThroughput(events, rounds int) (float64, error) {
	// The raw clients do not heartbeat: a long interval keeps a slow run
	// (a busy machine) from being cut off.
	s := discordtest.NewServer(discordtest.WithGuilds(simShards*4), discordtest.WithMaxConcurrency(simShards),
		discordtest.WithIdentifyWindow(time.Nanosecond), discordtest.WithHeartbeatInterval(time.Hour))
	defer s.Close()
	var received atomic.Int64
	var wg sync.WaitGroup
	conns := make([]*websocket.Conn, 0, simShards)
	defer func() {
		for _, ws := range conns {
			ws.Close()
		}
		wg.Wait()
	}()
	for i := range simShards {
		ws, err := identifyRaw(s.GatewayURL(), s.Token(), i, simShards)
		if err != nil {
			return 0, fmt.Errorf("identify shard %d: %w", i, err)
		}
		conns = append(conns, ws)
		wg.Go(func() { countDispatches(ws, "MESSAGE_CREATE", &received) })
	}
	if err := waitSessionsReady(s, simShards); err != nil {
		return 0, err
	}
	best := 0.0
	for range rounds {
		rate, err := timeLoad(s, &received, events, 100_000)
		if err != nil {
			return 0, err
		}
		best = max(best, rate)
	}
	return best, nil
}

// timeLoad sends events as fast as the clients read and returns the
// events per second counted by got, from the start of the load to the
// last one counted. Both the load and the wait are bounded by
// eventsBound(events, floor).
func timeLoad(s *discordtest.Server, got *atomic.Int64, events int, floor float64) (float64, error) {
	limit := eventsBound(events, floor)
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	base := got.Load()
	start := time.Now()
	if _, err := s.Load(ctx, discordtest.Load{Events: events}); err != nil {
		return 0, fmt.Errorf("load of %d events: %w (%d received)", events, err, got.Load()-base)
	}
	err := waitFor(limit-time.Since(start), fmt.Sprintf("%d MESSAGE_CREATEs to arrive", events), func() (bool, string) {
		n := got.Load() - base
		return n >= int64(events), fmt.Sprintf("%d arrived", n)
	})
	if err != nil {
		return 0, err
	}
	return float64(events) / time.Since(start).Seconds(), nil
}

// countDispatches reads ws until it fails and counts the dispatches of
// type t, telling them by the frame's head: {"op":0,"s":N,"t":"T",...}.
func countDispatches(ws *websocket.Conn, t string, n *atomic.Int64) {
	want := []byte(`"t":"` + t + `"`)
	var head [64]byte
	for {
		_, r, err := ws.NextReader()
		if err != nil {
			return
		}
		k, _ := io.ReadFull(r, head[:])
		if bytes.Contains(head[:k], want) {
			n.Add(1)
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			return
		}
	}
}

// disgoThroughput streams the same load to 16 disgo gateway shards.
func disgoThroughput(events int) (float64, error) {
	s := discordtest.NewServer(discordtest.WithGuilds(simShards*4), discordtest.WithMaxConcurrency(simShards),
		discordtest.WithIdentifyWindow(time.Nanosecond))
	defer s.Close()
	var got atomic.Int64
	handler := func(t gateway.EventType, _ int, _ int, _ gateway.EventData) {
		if t == gateway.EventTypeMessageCreate {
			got.Add(1)
		}
	}
	quiet := slog.New(slog.DiscardHandler)
	shards := make([]gateway.Gateway, 0, simShards)
	defer func() {
		for _, g := range shards {
			g.Close(context.Background())
		}
	}()
	for i := range simShards {
		g := gateway.New(s.Token(), handler, nil, gateway.WithURL(s.GatewayURL()), gateway.WithShardID(i),
			gateway.WithShardCount(simShards), gateway.WithLogger(quiet),
			gateway.WithIntents(gateway.IntentGuilds, gateway.IntentGuildMessages))
		shards = append(shards, g)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := g.Open(ctx)
		cancel()
		if err != nil {
			return 0, fmt.Errorf("open shard %d: %w", i, err)
		}
	}
	if err := waitSessionsReady(s, simShards); err != nil {
		return 0, err
	}
	return timeLoad(s, &got, events, 2_000)
}

// bytesPerConn measures the server's heap and stacks per idle identified
// connection. The clients run in a child process so that only the
// server's memory is counted.
func bytesPerConn(n int) (float64, error) {
	s := discordtest.NewServer(discordtest.WithGuilds(n), discordtest.WithMaxConcurrency(n),
		discordtest.WithIdentifyWindow(time.Nanosecond), discordtest.WithHeartbeatInterval(time.Hour))
	defer s.Close()
	before := memNow()
	exe, err := os.Executable()
	if err != nil {
		return 0, err
	}
	// The child is killed if the scenario outlives its bound, so that no
	// read below can wait for it forever.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second+time.Duration(n)*20*time.Millisecond)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-child", "idle", s.GatewayURL(), s.Token(), strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		return 0, fmt.Errorf("child identifying %d connections: %q %v (ctx: %v)", n, line, err, ctx.Err())
	}
	if err := waitSessionsReady(s, n); err != nil {
		return 0, err
	}
	after := memNow()
	return float64(after-before) / float64(n), nil
}

func memNow() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc + m.StackInuse
}

// runChild runs the helper-process side of a scenario.
func runChild(kind string, args []string) error {
	if fn, ok := childKinds[kind]; ok {
		return fn(args)
	}
	if kind != "idle" || len(args) != 3 {
		return fmt.Errorf("unknown child %q %v", kind, args)
	}
	n, _ := strconv.Atoi(args[2])
	conns := make([]*websocket.Conn, 0, n)
	for i := range n {
		ws, err := identifyRaw(args[0], args[1], i, n)
		if err != nil {
			return err
		}
		conns = append(conns, ws)
		go func() { // drain HELLO, READY and GUILD_CREATE, answer nothing
			for {
				if _, _, err := ws.NextReader(); err != nil {
					return
				}
			}
		}()
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, ws := range conns {
		ws.Close()
	}
	return nil
}
