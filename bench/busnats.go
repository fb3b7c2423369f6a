package main

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/natsfleet"
)

// childKinds are the helper processes of the scenarios that span
// processes, by the name given to -child.
var childKinds = map[string]func(args []string) error{}

func init() {
	register("bus-nats", runBusNATS)
	childKinds["bus-nats-service"] = runBusNATSService
}

// natsInfoEnv carries a child's NATS URL and credentials: the
// environment, not the command line, so that they do not show in ps.
const natsInfoEnv = "FLEET_BENCH_NATS"

// busNATSResult is what the "bus-nats" scenario prints.
type busNATSResult struct {
	Scenario      string  `json:"scenario"`
	Processes     int     `json:"processes"`
	SeqP50us      float64 `json:"seq_p50_us"`
	SeqP99us      float64 `json:"seq_p99_us"`
	ConcurrentRPS float64 `json:"concurrent_rps"`
	Requesters    int     `json:"concurrent_requesters"`
	InMemoryRPS   float64 `json:"in_memory_concurrent_rps"`
	// The share of the sequential calls that went over the direct link
	// (natsfleet.TransportConfig.Direct) rather than through the server,
	// and the sequential median of the same transport without it, in
	// the same run.
	SeqDirectShare float64 `json:"seq_direct_share"`
	NATSSeqP50us   float64 `json:"nats_route_seq_p50_us"`
	// How many calls one message carried on average in the concurrent
	// phase, and how many replies.
	CallsPerMessage   float64 `json:"concurrent_calls_per_message"`
	RepliesPerMessage float64 `json:"concurrent_replies_per_message"`
	// CPU time (user and system) per call in the first concurrent round:
	// in the calling process (with the embedded server) and in the
	// service process. Less sensitive to other load than the rates.
	CallerCPUus  float64 `json:"concurrent_caller_cpu_us_per_call"`
	ServiceCPUus float64 `json:"concurrent_service_cpu_us_per_call"`
	PayloadBytes int     `json:"payload_bytes"`
	// The GOMAXPROCS of the calling process (which embeds the server) and
	// of the service process.
	CallerProcs  int `json:"caller_gomaxprocs"`
	ServiceProcs int `json:"service_gomaxprocs"`
	// Bare nats.go request/reply between the same two processes, in the
	// same run: on the same connections as the transport, what the
	// transport adds to NATS itself; and with both processes on TCP, what
	// the in-process connection saves.
	BareSeqP50us         float64 `json:"bare_nats_seq_p50_us"`
	BareConcurrentRPS    float64 `json:"bare_nats_concurrent_rps"`
	BareTCPSeqP50us      float64 `json:"bare_nats_tcp_seq_p50_us"`
	BareTCPConcurrentRPS float64 `json:"bare_nats_tcp_concurrent_rps"`
	// eris-fleet's cross-process IPC (bench/erisipc/ipc.js under node) in
	// the same run: null, with Note saying why, when it could not run.
	ErisSeqP50us      *float64 `json:"eris_fleet_seq_p50_us"`
	ErisSeqP99us      *float64 `json:"eris_fleet_seq_p99_us"`
	ErisConcurrentRPS *float64 `json:"eris_fleet_concurrent_rps"`
	// ConcurrentVsEris is concurrent_rps / eris_fleet_concurrent_rps.
	ConcurrentVsEris *float64 `json:"concurrent_vs_eris"`
	Note             string   `json:"note,omitempty"`
	// The concurrent phase runs in rounds alternating with eris-fleet's;
	// concurrent_rps and eris_fleet_concurrent_rps are their medians.
	ConcurrentRounds     []float64 `json:"concurrent_rps_rounds"`
	ErisConcurrentRounds []float64 `json:"eris_fleet_concurrent_rps_rounds"`
}

const (
	busNATSSeq          = 20_000
	busNATSPerRequester = 2_000
	busNATSWarmup       = 5_000
	busNATSServiceProcs = 1  // the service process's GOMAXPROCS
	busNATSRounds       = 3  // rounds of the concurrent phase
	busNATSSeqRounds    = 10 // rounds of the sequential phase
)

// runBusNATS measures request/reply between two OS processes through an
// embedded NATS server: this process calls service/bench in a child.
func runBusNATS() (any, error) {
	res := busNATSResult{Scenario: "bus-nats", Processes: 2, Requesters: busRequesters, PayloadBytes: 100,
		CallerProcs: runtime.GOMAXPROCS(0), ServiceProcs: busNATSServiceProcs}
	srv, err := natsfleet.StartServer(natsfleet.ServerConfig{})
	if err != nil {
		return nil, err
	}
	defer srv.Close()
	// The service process runs on one P: two processes on two cores, and
	// a request then wakes no second thread in the child.
	child, err := startChild("bus-nats-service", srv.ConnectInfo(), []string{fmt.Sprintf("GOMAXPROCS=%d", busNATSServiceProcs)})
	if err != nil {
		return nil, err
	}
	defer child.stop()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// The caller's process embeds the server, as a process-mode parent
	// does, and reaches it through memory; the child connects over TCP.
	nc, err := srv.ConnectInProcess(ctx, natsfleet.Name("bench caller"))
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	tcp, err := srv.Connect(ctx, natsfleet.Name("bench TCP caller"))
	if err != nil {
		return nil, err
	}
	defer tcp.Close()
	// The caller's calls take the direct link to the service process;
	// a second transport, on its own in-process connection, without it.
	tr, err := natsfleet.NewTransport(nc, natsfleet.TransportConfig{Prefix: "bench", Direct: true})
	if err != nil {
		return nil, err
	}
	defer tr.Close()
	b := bus.New(bus.Options{Transport: tr, Logger: slog.New(slog.DiscardHandler)})
	defer b.Close()
	viaNATS, err := srv.ConnectInProcess(ctx, natsfleet.Name("bench caller without the direct link"))
	if err != nil {
		return nil, err
	}
	defer viaNATS.Close()
	trNATS, err := natsfleet.NewTransport(viaNATS, natsfleet.TransportConfig{Prefix: "bench"})
	if err != nil {
		return nil, err
	}
	defer trNATS.Close()
	bNATS := bus.New(bus.Options{Transport: trNATS, Logger: slog.New(slog.DiscardHandler)})
	defer bNATS.Close()
	svc := bus.Service("bench")
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	err = tr.WaitMember(wctx, svc)
	if err == nil {
		err = trNATS.WaitMember(wctx, svc)
	}
	wcancel()
	if err != nil {
		return nil, fmt.Errorf("waiting for the child process to serve %s: %w", svc, err)
	}
	payload := make([]byte, res.PayloadBytes)
	for i := range payload {
		payload[i] = byte(i)
	}
	for _, b := range []*bus.Bus{b, bNATS} {
		for range busNATSWarmup {
			if _, err := bus.Request[[]byte, []byte](ctx, b, svc, "echo", payload); err != nil {
				return nil, fmt.Errorf("warm-up: %w", err)
			}
		}
	}
	// The sequential phase, in rounds that alternate with the transport
	// without the direct link, so that both see the same conditions.
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	seq := func(b *bus.Bus, lat []time.Duration) error {
		for i := range lat {
			start := time.Now()
			if _, err := bus.Request[[]byte, []byte](ctx, b, svc, "echo", payload); err != nil {
				return fmt.Errorf("sequential: %w", err)
			}
			lat[i] = time.Since(start)
		}
		return nil
	}
	lat, latNATS := make([]time.Duration, busNATSSeq), make([]time.Duration, busNATSSeq)
	before := tr.Stats()
	prof := startPhaseProfile(child, "seq")
	for r, n := 0, busNATSSeq/busNATSSeqRounds; r < busNATSSeqRounds; r++ {
		if err := seq(b, lat[r*n:(r+1)*n]); err != nil {
			return nil, err
		}
		if err := seq(bNATS, latNATS[r*n:(r+1)*n]); err != nil {
			return nil, err
		}
	}
	prof.stop()
	after := tr.Stats()
	res.SeqDirectShare = float64(after.DirectCalls-before.DirectCalls) / float64(after.Calls-before.Calls)
	slices.Sort(lat)
	slices.Sort(latNATS)
	res.SeqP50us = us(lat[len(lat)/2])
	res.SeqP99us = us(lat[len(lat)*99/100])
	res.NATSSeqP50us = us(latNATS[len(latNATS)/2])

	// The concurrent phase, in rounds that alternate with eris-fleet's so
	// that both see the same conditions; medians are reported.
	concurrent := func(round int) (float64, error) {
		var wg sync.WaitGroup
		errs := make(chan error, busRequesters)
		gate := make(chan struct{})
		for range busRequesters {
			wg.Go(func() {
				<-gate
				for range busNATSPerRequester {
					if _, err := bus.Request[[]byte, []byte](ctx, b, svc, "echo", payload); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		prof := &phaseProfile{}
		if round == 0 {
			prof = startPhaseProfile(child, "concurrent")
		}
		before := tr.Stats()
		cpuBefore, childBefore := cpuTime(), child.cpuTime()
		start := time.Now()
		close(gate)
		wg.Wait()
		elapsed := time.Since(start)
		cpuAfter, childAfter := cpuTime(), child.cpuTime()
		after := tr.Stats()
		prof.stop()
		close(errs)
		if err := <-errs; err != nil {
			return 0, fmt.Errorf("concurrent: %w", err)
		}
		calls := float64(busRequesters * busNATSPerRequester)
		if round == 0 {
			res.CallsPerMessage = calls / float64(after.CallMessages-before.CallMessages)
			res.RepliesPerMessage = calls / float64(after.AnswerMessages-before.AnswerMessages)
			res.CallerCPUus = float64((cpuAfter - cpuBefore).Microseconds()) / calls
			if childBefore >= 0 && childAfter >= 0 {
				res.ServiceCPUus = float64((childAfter - childBefore).Microseconds()) / calls
			}
		}
		return calls / elapsed.Seconds(), nil
	}
	var erisErr error
	for round := range busNATSRounds {
		rps, err := concurrent(round)
		if err != nil {
			return nil, err
		}
		res.ConcurrentRounds = append(res.ConcurrentRounds, rps)
		if erisErr != nil {
			continue
		}
		seq := 0
		if round == 0 {
			seq = busNATSSeq
		}
		eris, err := measureErisIPC(ctx, res.PayloadBytes, seq)
		if err != nil {
			erisErr = err
			res.Note = "eris-fleet IPC not measured: " + err.Error()
			continue
		}
		if round == 0 {
			res.ErisSeqP50us, res.ErisSeqP99us = eris.SeqP50us, eris.SeqP99us
		}
		res.ErisConcurrentRounds = append(res.ErisConcurrentRounds, eris.ConcurrentRPS)
	}
	res.ConcurrentRPS = median(res.ConcurrentRounds)
	if erisErr == nil {
		m := median(res.ErisConcurrentRounds)
		res.ErisConcurrentRPS = &m
		if m > 0 {
			ratio := res.ConcurrentRPS / m
			res.ConcurrentVsEris = &ratio
		}
	}

	if res.BareSeqP50us, res.BareConcurrentRPS, err = measureBareNATS(ctx, nc, "bare.echo", payload); err != nil {
		return nil, fmt.Errorf("bare NATS: %w", err)
	}
	if res.BareTCPSeqP50us, res.BareTCPConcurrentRPS, err = measureBareNATS(ctx, tcp, "bare.echo", payload); err != nil {
		return nil, fmt.Errorf("bare NATS over TCP: %w", err)
	}

	mem, err := measureBus(false, res.PayloadBytes, true)
	if err != nil {
		return nil, fmt.Errorf("in memory: %w", err)
	}
	res.InMemoryRPS = mem.ConcurrentRPS
	return res, nil
}

// median returns the median of xs (0 if empty); it sorts xs' copy.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// erisIPCScript reproduces eris-fleet 1.0.2's cross-process IPC (a
// cluster's serviceCommand through the master to a service and back);
// its header says how.
//
//go:embed erisipc/ipc.js
var erisIPCScript []byte

// erisFigures is what erisipc/ipc.js prints.
type erisFigures struct {
	SeqP50us      *float64 `json:"seq_p50_us"` // null when not measured
	SeqP99us      *float64 `json:"seq_p99_us"`
	ConcurrentRPS float64  `json:"concurrent_rps"`
	Requesters    int      `json:"concurrent_requesters"`
}

// measureErisIPC runs erisipc/ipc.js under node with the bus-nats
// scenario's counts and payload size, and seq sequential calls (0: none).
func measureErisIPC(ctx context.Context, payloadBytes, seq int) (erisFigures, error) {
	var f erisFigures
	node, err := exec.LookPath("node")
	if err != nil {
		return f, errors.New("node is not on PATH (install Node.js to compare with eris-fleet)")
	}
	dir, err := os.MkdirTemp("", "erisipc")
	if err != nil {
		return f, err
	}
	defer os.RemoveAll(dir)
	script := filepath.Join(dir, "ipc.js")
	if err := os.WriteFile(script, erisIPCScript, 0o600); err != nil {
		return f, err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, script, strconv.Itoa(seq), strconv.Itoa(busNATSPerRequester),
		strconv.Itoa(busRequesters), strconv.Itoa(payloadBytes))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return f, fmt.Errorf("%s: %w", node, err)
	}
	if err := json.Unmarshal(bytes.TrimSpace(out), &f); err != nil {
		return f, fmt.Errorf("%s printed %q: %w", node, out, err)
	}
	if f.Requesters != busRequesters {
		return f, fmt.Errorf("%s ran %d requesters, want %d", node, f.Requesters, busRequesters)
	}
	return f, nil
}

// runBusNATSService serves service/bench's echo until stdin closes.
func runBusNATSService([]string) error {
	nc, tr, err := childTransport("bench service")
	if err != nil {
		return err
	}
	defer nc.Close()
	defer tr.Close()
	b := bus.New(bus.Options{Transport: tr, Logger: slog.New(slog.DiscardHandler)})
	defer b.Close()
	ep, err := b.Register(bus.Service("bench"))
	if err != nil {
		return err
	}
	bus.Handle(ep, "echo", func(_ context.Context, p []byte) ([]byte, error) { return p, nil })
	if _, err := nc.Subscribe("bare.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		return err
	}
	if err := nc.Flush(); err != nil {
		return err
	}
	fmt.Println("ready")
	// The parent's commands: "profile <file>" starts a CPU profile,
	// "stop" ends it, "cpu" prints the CPU time used so far (ns).
	in := bufio.NewScanner(os.Stdin)
	var prof *os.File
	for in.Scan() {
		switch cmd, arg, _ := strings.Cut(in.Text(), " "); cmd {
		case "profile":
			if prof, err = os.Create(arg); err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(prof); err != nil {
				return err
			}
		case "stop":
			if prof != nil {
				pprof.StopCPUProfile()
				_ = prof.Close()
				prof = nil
			}
			fmt.Println("stopped")
		case "cpu":
			fmt.Println(int64(cpuTime()))
		}
	}
	return nil
}

// cpuTime returns the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuTime asks a bus-nats service child for its CPU time; -1 if it does
// not answer.
func (c *child) cpuTime() time.Duration {
	if _, err := io.WriteString(c.stdin, "cpu\n"); err != nil {
		return -1
	}
	line, err := c.line(10 * time.Second)
	if err != nil {
		return -1
	}
	n, err := strconv.ParseInt(line, 10, 64)
	if err != nil {
		return -1
	}
	return time.Duration(n)
}

// phaseProfile is a CPU profile of this process and of a child during
// one phase of a scenario.
type phaseProfile struct {
	f     *os.File
	child *child
}

// startPhaseProfile starts profiling phase in this process and in c, if
// profileEnv (FLEET_BENCH_PPROF) names a directory: caller-<phase>.pprof
// and service-<phase>.pprof there. Its stop does nothing otherwise.
func startPhaseProfile(c *child, phase string) *phaseProfile {
	dir := os.Getenv(profileEnv)
	if dir == "" {
		return &phaseProfile{}
	}
	f, err := os.Create(filepath.Join(dir, "caller-"+phase+".pprof"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: profile:", err)
		return &phaseProfile{}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintln(os.Stderr, "bench: profile:", err)
		_ = f.Close()
		return &phaseProfile{}
	}
	_, _ = io.WriteString(c.stdin, "profile "+filepath.Join(dir, "service-"+phase+".pprof")+"\n")
	return &phaseProfile{f: f, child: c}
}

func (p *phaseProfile) stop() {
	if p.f == nil {
		return
	}
	pprof.StopCPUProfile()
	_ = p.f.Close()
	_, _ = io.WriteString(p.child.stdin, "stop\n")
	if _, err := p.child.line(10 * time.Second); err != nil {
		fmt.Fprintln(os.Stderr, "bench: profile:", err)
	}
}

// childConnect connects a child to the parent's NATS.
func childConnect(name string, opts ...natsfleet.Option) (*nats.Conn, error) {
	var info natsfleet.ConnectInfo
	if err := json.Unmarshal([]byte(os.Getenv(natsInfoEnv)), &info); err != nil {
		return nil, fmt.Errorf("%s: %w", natsInfoEnv, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return natsfleet.Connect(ctx, info.URL, append(append(info.Options(), natsfleet.Name(name)), opts...)...)
}

// childTransport connects a child to the parent's NATS and makes it a
// Transport.
func childTransport(name string) (*nats.Conn, *natsfleet.Transport, error) {
	nc, err := childConnect(name)
	if err != nil {
		return nil, nil, err
	}
	tr, err := natsfleet.NewTransport(nc, natsfleet.TransportConfig{Prefix: "bench", Direct: true})
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, tr, nil
}

// measureBareNATS measures nats.go's own request/reply with the child's
// subscriber on subject: sequential median and 64-in-flight throughput.
func measureBareNATS(ctx context.Context, nc *nats.Conn, subject string, payload []byte) (p50us, rps float64, err error) {
	for range busNATSWarmup {
		if _, err := nc.RequestWithContext(ctx, subject, payload); err != nil {
			return 0, 0, err
		}
	}
	lat := make([]time.Duration, busNATSSeq)
	for i := range lat {
		start := time.Now()
		if _, err := nc.RequestWithContext(ctx, subject, payload); err != nil {
			return 0, 0, err
		}
		lat[i] = time.Since(start)
	}
	slices.Sort(lat)
	var wg sync.WaitGroup
	errs := make(chan error, busRequesters)
	start := time.Now()
	for range busRequesters {
		wg.Go(func() {
			for range busNATSPerRequester {
				if _, err := nc.RequestWithContext(ctx, subject, payload); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return 0, 0, err
	}
	return float64(lat[len(lat)/2].Nanoseconds()) / 1e3, float64(busRequesters*busNATSPerRequester) / elapsed.Seconds(), nil
}

// child is a helper process: it says "ready" on stdout and stops when its
// stdin closes.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
}

// startChild starts this binary as helper kind, with info and env in its
// environment, and waits for its "ready" line.
func startChild(kind string, info natsfleet.ConnectInfo, env []string, args ...string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	raw, _ := json.Marshal(info)
	cmd := exec.Command(exe, append([]string{"-child", kind}, args...)...)
	cmd.Env = append(append(os.Environ(), natsInfoEnv+"="+string(raw)), env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}
	ready := make(chan error, 1)
	go func() {
		if c.out.Scan() && strings.TrimSpace(c.out.Text()) == "ready" {
			ready <- nil
			return
		}
		ready <- errors.New("it exited or wrote something else")
	}()
	select {
	case err = <-ready:
	case <-time.After(60 * time.Second):
		err = errors.New("no answer within 60s")
	}
	if err != nil {
		c.kill()
		return nil, fmt.Errorf("waiting for child %s to say ready: %w", kind, err)
	}
	return c, nil
}

// line reads the child's next output line, within limit.
func (c *child) line(limit time.Duration) (string, error) {
	got := make(chan string, 1)
	go func() {
		if c.out.Scan() {
			got <- c.out.Text()
		} else {
			got <- ""
		}
	}()
	select {
	case s := <-got:
		if s == "" {
			return "", errors.New("the child exited")
		}
		return s, nil
	case <-time.After(limit):
		return "", fmt.Errorf("no line from the child within %v", limit)
	}
}

// stop closes the child's stdin and waits for it, killing it after 10 s.
// startAll tells every child "go" and waits, each within limit, for its
// next line to be want; what names the wait in the error.
func startAll(children []*child, want, what string, limit time.Duration) error {
	for _, c := range children {
		if _, err := io.WriteString(c.stdin, "go\n"); err != nil {
			return err
		}
	}
	for i, c := range children {
		line, err := c.line(limit)
		if err != nil {
			return fmt.Errorf("waiting for process %d's %s: %w", i, what, err)
		}
		if line != want {
			return fmt.Errorf("process %d: %s", i, line)
		}
	}
	return nil
}

func (c *child) stop() {
	_ = c.stdin.Close()
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
}

func (c *child) kill() {
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
}
