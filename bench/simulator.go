package main

import (
	"bufio"
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
	Events            int     `json:"events"`
	EventsPerSec      float64 `json:"events_per_sec"`
	DisgoEvents       int     `json:"disgo_events"`
	DisgoEventsPerSec float64 `json:"disgo_events_per_sec"`
	IdleConns         int     `json:"idle_conns"`
	BytesPerConn      float64 `json:"bytes_per_conn"`
}

const simShards = 16

func runSimulator() (any, error) {
	res := simulatorResult{Scenario: "simulator", Shards: simShards, Events: 2_000_000, DisgoEvents: 200_000, IdleConns: 1000}
	var err error
	if res.EventsPerSec, err = rawThroughput(res.Events); err != nil {
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
	ws, _, err := websocket.DefaultDialer.Dial(url+"?v=10&encoding=json", nil)
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
// discard frames, and returns the events delivered per second.
func rawThroughput(events int) (float64, error) {
	// The raw clients do not heartbeat: a long interval keeps a slow run
	// (a busy machine) from being cut off.
	s := discordtest.NewServer(discordtest.WithGuilds(simShards*4), discordtest.WithMaxConcurrency(simShards),
		discordtest.WithIdentifyWindow(time.Nanosecond), discordtest.WithHeartbeatInterval(time.Hour))
	defer s.Close()
	var received atomic.Int64
	var wg sync.WaitGroup
	conns := make([]*websocket.Conn, simShards)
	for i := range conns {
		ws, err := identifyRaw(s.GatewayURL(), s.Token(), i, simShards)
		if err != nil {
			return 0, err
		}
		conns[i] = ws
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				_, r, err := ws.NextReader()
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, r)
				received.Add(1)
			}
		}()
	}
	// READY + 4 GUILD_CREATE per shard
	defer func() {
		for _, ws := range conns {
			ws.Close()
		}
		wg.Wait()
	}()
	base := int64(simShards * 5)
	if err := waitCount(&received, base, time.Minute); err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := s.Load(context.Background(), discordtest.Load{Events: events}); err != nil {
		return 0, err
	}
	if err := waitCount(&received, base+int64(events), 5*time.Minute); err != nil {
		return 0, err
	}
	return float64(events) / time.Since(start).Seconds(), nil
}

// disgoThroughput streams the same load to 16 disgo gateway shards.
func disgoThroughput(events int) (float64, error) {
	s := discordtest.NewServer(discordtest.WithGuilds(simShards*4), discordtest.WithMaxConcurrency(simShards),
		discordtest.WithIdentifyWindow(time.Nanosecond))
	defer s.Close()
	var got, guilds atomic.Int64
	handler := func(t gateway.EventType, _ int, _ int, _ gateway.EventData) {
		switch t {
		case gateway.EventTypeMessageCreate:
			got.Add(1)
		case gateway.EventTypeGuildCreate:
			guilds.Add(1)
		}
	}
	quiet := slog.New(slog.DiscardHandler)
	shards := make([]gateway.Gateway, simShards)
	for i := range shards {
		shards[i] = gateway.New(s.Token(), handler, nil, gateway.WithURL(s.GatewayURL()), gateway.WithShardID(i),
			gateway.WithShardCount(simShards), gateway.WithLogger(quiet),
			gateway.WithIntents(gateway.IntentGuilds, gateway.IntentGuildMessages))
		if err := shards[i].Open(context.Background()); err != nil {
			return 0, err
		}
	}
	defer func() {
		for _, g := range shards {
			g.Close(context.Background())
		}
	}()
	if err := waitCount(&guilds, simShards*4, time.Minute); err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := s.Load(context.Background(), discordtest.Load{Events: events}); err != nil {
		return 0, err
	}
	if err := waitCount(&got, int64(events), 5*time.Minute); err != nil {
		return 0, err
	}
	return float64(events) / time.Since(start).Seconds(), nil
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
	cmd := exec.Command(exe, "-child", "idle", s.GatewayURL(), s.Token(), strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		return 0, fmt.Errorf("child: %q %v", line, err)
	}
	for deadline := time.Now().Add(time.Minute); s.Stats().OpenConnections < n; {
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%d of %d idle connections open", s.Stats().OpenConnections, n)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let READY and GUILD_CREATE drain
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

// waitCount waits until n reaches want, or fails after limit.
func waitCount(n *atomic.Int64, want int64, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for n.Load() < want {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d arrived in %s", n.Load(), want, limit)
		}
		time.Sleep(100 * time.Microsecond)
	}
	return nil
}
