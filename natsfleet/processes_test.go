package natsfleet_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/disgoorg/disgo/bot"
	devents "github.com/disgoorg/disgo/events"

	"github.com/gofleet/fleet/bus"
	"github.com/gofleet/fleet/discordtest"
	"github.com/gofleet/fleet/natsfleet"
	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

func init() {
	childKinds["fleet"] = fleetChild
	childKinds["fleetparent"] = fleetParent
}

// procPrefix names the fleets this test process starts, so that
// TestMain can tell its own children from other processes'.
var procPrefix = "ptest" + strconv.Itoa(os.Getpid())

// fleetArgs is what the program below needs, the same in the parent and
// in the children (a real program reads its token and options itself).
type fleetArgs struct {
	Token, GatewayURL, RESTURL string
	Interval                   time.Duration
	Clusters                   int
	Prefix                     string
	// SetupFailsOnce, if set, is a directory: each cluster's first child
	// exits in Setup, leaving a file there so that the next one does not.
	SetupFailsOnce string
	ColdStart      bool // natsfleet.ProcessConfig.ColdStart
	// IdentifyLease is natsfleet.ProcessConfig.IdentifyLease.
	IdentifyLease time.Duration
}

// seen is a MESSAGE_CREATE a child delivered, reported to the parent.
type seen struct{ Shard, Seq int }

// ledgerBot reports every MESSAGE_CREATE to the parent's "ledger"
// service, answers "pid", and panics outside any guard on "crash".
type ledgerBot struct{}

func (ledgerBot) Setup(_ context.Context, g *shardgroup.Group) error {
	b := g.Bus()
	g.Client().AddEventListeners(bot.NewListenerFunc(func(e *devents.MessageCreate) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = bus.Send(ctx, b, bus.Service("ledger"), "seen", seen{e.ShardID(), e.SequenceNumber()})
	}))
	return nil
}

func (ledgerBot) Commands(h bus.Handlers) {
	bus.Handle(h, "pid", func(context.Context, struct{}) (int, error) { return os.Getpid(), nil })
	bus.Handle(h, "crash", func(context.Context, struct{}) (bool, error) {
		go func() { panic("the cluster's code crashes") }()
		return true, nil
	})
}

// fleetConfig is the program's Config in process mode.
func fleetConfig(a fleetArgs) runtime.Config {
	raw, _ := json.Marshal(a)
	return runtime.Config{
		Token: runtime.Token(a.Token), GatewayURL: a.GatewayURL, RESTURL: a.RESTURL, IdentifyInterval: a.Interval,
		Clusters: a.Clusters, ShutdownTimeout: 5 * time.Second, RestartBackoff: 50 * time.Millisecond,
		Bot: func(id int) runtime.Bot {
			if a.SetupFailsOnce != "" {
				return failOnceBot{dir: a.SetupFailsOnce, cluster: id}
			}
			return ledgerBot{}
		},
		Processes: natsfleet.Processes(natsfleet.ProcessConfig{
			Prefix: a.Prefix, Args: []string{"-test.run=^$"}, CheckpointInterval: 100 * time.Millisecond, ColdStart: a.ColdStart,
			Env: []string{childEnv + "=fleet", childArgsEnv + "={}", fleetArgsEnv + "=" + string(raw)}, IdentifyLease: a.IdentifyLease,
		}),
	}
}

const fleetArgsEnv = "NATSFLEET_TEST_FLEET_ARGS"

// fleetChild is the program run as a child: the same Config, whose Run
// serves the child's cluster.
func fleetChild(childArgs) error {
	var a fleetArgs
	if err := json.Unmarshal([]byte(os.Getenv(fleetArgsEnv)), &a); err != nil {
		return err
	}
	if !natsfleet.IsChild() {
		return errors.New("no child spec in the environment")
	}
	rt, err := runtime.New(fleetConfig(a))
	if err != nil {
		return err
	}
	return rt.Run(context.Background())
}

// ledger counts what the children delivered, by shard and sequence.
type ledger struct {
	mu    sync.Mutex
	count map[seen]int
	n     int
	ch    chan struct{}
}

func newLedger(t *testing.T, rt *runtime.Runtime) *ledger {
	t.Helper()
	l := &ledger{count: map[seen]int{}, ch: make(chan struct{}, 1)}
	ep, err := rt.Bus().Register(bus.Service("ledger"), bus.Concurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	bus.Handle(ep, "seen", func(_ context.Context, s seen) (struct{}, error) {
		l.mu.Lock()
		l.count[s]++
		l.n++
		l.mu.Unlock()
		select {
		case l.ch <- struct{}{}:
		default:
		}
		return struct{}{}, nil
	})
	return l
}

// atLeast waits until n events were seen.
func (l *ledger) atLeast(t *testing.T, n int) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		l.mu.Lock()
		got := l.n
		l.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-l.ch:
		case <-timeout:
			t.Fatalf("the children delivered %d events within 30 s, want %d", got, n)
		}
	}
}

// distinct waits until n distinct events were seen (or fails saying how
// many were lost), and returns how many were seen more than once.
func (l *ledger) distinct(t *testing.T, n int64) (duplicates int) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		l.mu.Lock()
		got := len(l.count)
		l.mu.Unlock()
		if int64(got) >= n {
			break
		}
		select {
		case <-l.ch:
		case <-timeout:
			t.Fatalf("the children delivered %d distinct events, want %d: %d lost", got, n, n-int64(got))
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n - len(l.count)
}

// procFleet is a fleet in process mode against s, ready.
type procFleet struct {
	rt     *runtime.Runtime
	mode   *natsfleet.ProcessMode
	ledger *ledger
	mu     sync.Mutex
	events []runtime.Event
	evCh   chan struct{}
}

func startProcFleet(t *testing.T, s *discordtest.Server, clusters int, opts ...func(*runtime.Config)) *procFleet {
	t.Helper()
	cfg := fleetConfig(fleetArgs{Token: s.Token(), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		Interval: s.IdentifyWindow(), Clusters: clusters, Prefix: procPrefix + "-" + newPrefix()})
	for _, o := range opts {
		o(&cfg)
	}
	rt, err := runtime.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := &procFleet{rt: rt, mode: cfg.Processes.(*natsfleet.ProcessMode), evCh: make(chan struct{}, 1)}
	rt.Subscribe(func(e runtime.Event) {
		f.mu.Lock()
		f.events = append(f.events, e)
		f.mu.Unlock()
		select {
		case f.evCh <- struct{}{}:
		default:
		}
	})
	f.ledger = newLedger(t, rt)
	go rt.Run(context.Background())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := rt.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-rt.Done()
	})
	select {
	case <-rt.Ready():
	case <-rt.Done():
		t.Fatalf("Run returned before the fleet was ready: %v", rt.Err())
	case <-time.After(60 * time.Second):
		t.Fatal("the fleet was not ready within 60 s")
	}
	return f
}

// waitEvent waits for the first event from index from on that match
// accepts, and returns it with the index after it.
func (f *procFleet) waitEvent(t *testing.T, from int, what string, match func(runtime.Event) bool) (runtime.Event, int) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		f.mu.Lock()
		evs := f.events
		f.mu.Unlock()
		for i := from; i < len(evs); i++ {
			if match(evs[i]) {
				return evs[i], i + 1
			}
		}
		from = len(evs)
		select {
		case <-f.evCh:
		case <-timeout:
			t.Fatalf("no %s within 30 s", what)
		}
	}
}

// checkpointed waits until every shard of cluster has a session
// checkpointed after since.
func (f *procFleet) checkpointed(t *testing.T, shards []int, since time.Time) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		recs, err := f.mode.Sessions(testCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, r := range recs {
			if slices.Contains(shards, r.ShardID) && r.WrittenAt.After(since) {
				n++
			}
		}
		if n == len(shards) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of shards %v checkpointed within 30 s", n, shards)
		}
		time.Sleep(20 * time.Millisecond) // polling the store: checkpoints raise no event
	}
}

func (f *procFleet) mark() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.events)
}

func (f *procFleet) pid(t *testing.T, cluster int) int {
	t.Helper()
	pid, err := bus.Request[struct{}, int](testCtx(t), f.rt.Bus(), bus.Cluster(cluster), "pid", struct{}{})
	if err != nil {
		t.Fatalf("pid of cluster %d: %v", cluster, err)
	}
	if pid == os.Getpid() || pid <= 0 {
		t.Fatalf("cluster %d runs in pid %d, not in a child", cluster, pid)
	}
	return pid
}

func procServer(t *testing.T) *discordtest.Server {
	t.Helper()
	s, err := discordtest.Start(discordtest.WithGuilds(32), discordtest.WithRecommendedShards(4),
		discordtest.WithMaxConcurrency(4), discordtest.WithIdentifyWindow(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// load sends n MESSAGE_CREATEs at 2,000/s in the background.
func load(t *testing.T, s *discordtest.Server, n int) <-chan discordtest.LoadResult {
	out := make(chan discordtest.LoadResult, 1)
	go func() {
		res, err := s.Load(context.Background(), discordtest.Load{Events: n, Rate: 2000})
		if err != nil {
			t.Error(err)
		}
		out <- res
	}()
	return out
}

// TestProcessesCrashResumes: a child killed with SIGKILL costs only its
// cluster, which the parent restarts at once; the new child RESUMEs from
// the checkpointed sessions: no IDENTIFY, no event lost.
func TestProcessesCrashResumes(t *testing.T) {
	s := procServer(t)
	f := startProcFleet(t, s, 2)
	pids := []int{f.pid(t, 0), f.pid(t, 1)}
	if pids[0] == pids[1] {
		t.Fatalf("both clusters run in pid %d", pids[0])
	}
	f.checkpointed(t, []int{2, 3}, time.Now())
	identifies := s.Stats().Identifies
	m := f.mark()
	loaded := load(t, s, 600)
	f.ledger.atLeast(t, 200) // half-way through the load
	killed := time.Now()
	if err := syscall.Kill(pids[1], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e, next := f.waitEvent(t, m, "ClusterRestarted of cluster 1", func(e runtime.Event) bool {
		r, ok := e.(runtime.ClusterRestarted)
		return ok && r.Cluster == 1
	})
	if r := e.(runtime.ClusterRestarted); r.Backoff != 0 || r.Err == nil || !strings.Contains(r.Err.Error(), "killed") {
		t.Errorf("restart after the crash: %+v; want no back-off and the exit reason", r)
	}
	f.waitEvent(t, next, "ClusterReady of cluster 1", func(e runtime.Event) bool {
		r, ok := e.(runtime.ClusterReady)
		return ok && r.Cluster == 1
	})
	recovery := time.Since(killed)
	res := <-loaded
	dups := f.ledger.distinct(t, res.Dispatches)
	if got := s.Stats().Identifies - identifies; got != 0 {
		t.Errorf("%d IDENTIFYs after the crash, want 0 (the shards resume)", got)
	}
	if pid := f.pid(t, 1); pid == pids[1] {
		t.Errorf("cluster 1 still in pid %d", pid)
	}
	if pid := f.pid(t, 0); pid != pids[0] {
		t.Errorf("cluster 0 moved from pid %d to %d: the crash cost more than its cluster", pids[0], pid)
	}
	t.Logf("crash_recovery_ms=%d crash_lost=0 crash_duplicate=%d dispatches=%d", recovery.Milliseconds(), dups, res.Dispatches)
}

// TestProcessesChildPanics: a panic outside the listeners' guard ends
// the child's process; the parent restarts the cluster, which resumes.
func TestProcessesChildPanics(t *testing.T) {
	s := procServer(t)
	f := startProcFleet(t, s, 2)
	pid := f.pid(t, 0)
	f.checkpointed(t, []int{0, 1}, time.Now())
	identifies := s.Stats().Identifies
	m := f.mark()
	// The child may die before its acknowledgement leaves: the call's
	// error does not matter, the restart below shows the crash.
	cctx, cancel := context.WithTimeout(testCtx(t), 2*time.Second)
	_ = bus.Send(cctx, f.rt.Bus(), bus.Cluster(0), "crash", struct{}{})
	cancel()
	e, next := f.waitEvent(t, m, "ClusterRestarted of cluster 0", func(e runtime.Event) bool {
		r, ok := e.(runtime.ClusterRestarted)
		return ok && r.Cluster == 0
	})
	if r := e.(runtime.ClusterRestarted); r.Err == nil || !strings.Contains(r.Err.Error(), "exit status 2") {
		t.Errorf("restart after the panic: %+v; want the exit status of a panic", r)
	}
	f.waitEvent(t, next, "ClusterReady of cluster 0", func(e runtime.Event) bool {
		r, ok := e.(runtime.ClusterReady)
		return ok && r.Cluster == 0
	})
	if got := f.pid(t, 0); got == pid {
		t.Errorf("cluster 0 still in pid %d", got)
	}
	if got := s.Stats().Identifies - identifies; got != 0 {
		t.Errorf("%d IDENTIFYs after the panic, want 0", got)
	}
}

// TestProcessesSoftRestartUnderLoad: a soft restart moves a cluster to a
// new child by handing its sessions over: nothing lost, nothing twice,
// no IDENTIFY.
func TestProcessesSoftRestartUnderLoad(t *testing.T) {
	s := procServer(t)
	f := startProcFleet(t, s, 2)
	old := f.pid(t, 0)
	identifies := s.Stats().Identifies
	m := f.mark()
	loaded := load(t, s, 1000)
	if err := f.rt.SoftRestart(testCtx(t), 0); err != nil {
		t.Fatal(err)
	}
	res := <-loaded
	dups := f.ledger.distinct(t, res.Dispatches)
	if dups != 0 {
		t.Errorf("%d events delivered twice", dups)
	}
	if got := s.Stats().Identifies - identifies; got != 0 {
		t.Errorf("%d IDENTIFYs during the soft restart, want 0", got)
	}
	if pid := f.pid(t, 0); pid == old {
		t.Errorf("cluster 0 still in pid %d", pid)
	}
	e, _ := f.waitEvent(t, m, "SoftRestartHandedOver", func(e runtime.Event) bool {
		_, ok := e.(runtime.SoftRestartHandedOver)
		return ok
	})
	h := e.(runtime.SoftRestartHandedOver)
	if h.Sessions != h.Shards {
		t.Errorf("%d of %d sessions handed over", h.Sessions, h.Shards)
	}
	t.Logf("softrestart_pause_ms=%d lost=0 duplicates=%d identifies=0 dispatches=%d", h.Pause.Milliseconds(), dups, res.Dispatches)
}

// TestProcessesShutdownLeavesNoChild: Shutdown stops every child, which
// saves its sessions, and no child process is left.
func TestProcessesShutdownLeavesNoChild(t *testing.T) {
	s := procServer(t)
	f := startProcFleet(t, s, 2)
	pids := []int{f.pid(t, 0), f.pid(t, 1)}
	for _, cs := range f.rt.Clusters() {
		if cs.State != shardgroup.StateReady || len(cs.Shards) != 2 {
			t.Errorf("cluster %d: %v with %d shards, want ready with 2", cs.ID, cs.State, len(cs.Shards))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := f.rt.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("child %d still running after Shutdown", pid)
		}
	}
	if st := s.Stats(); st.Sessions != 4 {
		t.Errorf("%d resumable sessions on the gateway, want 4: the children's shards closed resumably", st.Sessions)
	}
}

// fleetParent runs a fleet in process mode as a process of its own,
// prints its children's pids and waits to be killed.
func fleetParent(childArgs) error {
	var a fleetArgs
	if err := json.Unmarshal([]byte(os.Getenv(fleetArgsEnv)), &a); err != nil {
		return err
	}
	rt, err := runtime.New(fleetConfig(a))
	if err != nil {
		return err
	}
	ep, err := rt.Bus().Register(bus.Service("ledger"))
	if err != nil {
		return err
	}
	bus.Handle(ep, "seen", func(context.Context, seen) (struct{}, error) { return struct{}{}, nil })
	go rt.Run(context.Background())
	select {
	case <-rt.Ready():
	case <-rt.Done():
		return rt.Err()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var pids []string
	for id := range a.Clusters {
		pid, err := bus.Request[struct{}, int](ctx, rt.Bus(), bus.Cluster(id), "pid", struct{}{})
		if err != nil {
			return err
		}
		pids = append(pids, strconv.Itoa(pid))
	}
	fmt.Println("pids " + strings.Join(pids, " "))
	waitStdin()
	return rt.Shutdown(ctx)
}

// TestProcessesParentKilled: children whose parent is killed with
// SIGKILL notice (their stdin closes) and exit on their own.
func TestProcessesParentKilled(t *testing.T) {
	s := procServer(t)
	raw, _ := json.Marshal(fleetArgs{Token: s.Token(), GatewayURL: s.GatewayURL(), RESTURL: s.RESTURL(),
		Interval: s.IdentifyWindow(), Clusters: 2, Prefix: procPrefix + "-" + newPrefix()})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=fleetparent", childArgsEnv+"={}", fleetArgsEnv+"="+string(raw))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "pids ") {
				lines <- sc.Text()
			}
		}
		close(lines)
	}()
	var pids []int
	select {
	case line, ok := <-lines:
		if !ok {
			_ = cmd.Wait()
			t.Fatal("the parent exited before its fleet was ready")
		}
		for _, f := range strings.Fields(line)[1:] {
			pid, _ := strconv.Atoi(f)
			pids = append(pids, pid)
		}
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatal("the parent's fleet was not ready within 60 s")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed := time.Now()
	for _, pid := range pids {
		for alive(pid) {
			if time.Since(killed) > 10*time.Second {
				t.Fatalf("child %d still running 10 s after its parent was killed", pid)
			}
			time.Sleep(20 * time.Millisecond) // polling another process's exit: there is no event to wait on
		}
	}
	t.Logf("children exited %v after the parent was killed", time.Since(killed).Round(time.Millisecond))
}

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return syscall.Kill(pid, 0) == nil
	}
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// leftChildren lists the processes this test process started, directly
// or as a fleet's children, that still run.
func leftChildren() []string {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []string
	me := strconv.Itoa(os.Getpid())
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !alive(pid) {
			continue
		}
		status, _ := os.ReadFile("/proc/" + e.Name() + "/status")
		if strings.Contains(string(status), "\nPPid:\t"+me+"\n") {
			out = append(out, e.Name()+" (child)")
			continue
		}
		env, _ := os.ReadFile("/proc/" + e.Name() + "/environ")
		if strings.Contains(string(env), natsfleet.ChildEnv+"=") && strings.Contains(string(env), `"prefix":"`+procPrefix+"-") {
			out = append(out, e.Name()+" (fleet child)")
		}
	}
	return out
}

// TestProcessesOperations: a hard restart, a rolling soft restart and a
// cluster's shutdown act on the children as on clusters in one process
// (a reshard: TestModesReshard, TestProcessesReshardOverlaps).
func TestProcessesOperations(t *testing.T) {
	s := procServer(t)
	f := startProcFleet(t, s, 2)
	ctx := testCtx(t)
	pids := []int{f.pid(t, 0), f.pid(t, 1)}

	identifies := s.Stats().Identifies
	if err := f.rt.Restart(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if got := s.Stats().Identifies - identifies; got != 2 {
		t.Errorf("a hard restart of a 2-shard cluster spent %d IDENTIFYs, want 2", got)
	}
	if pid := f.pid(t, 1); pid == pids[1] {
		t.Errorf("cluster 1 still in pid %d after its hard restart", pid)
	}

	identifies = s.Stats().Identifies
	before := []int{f.pid(t, 0), f.pid(t, 1)}
	if err := f.rt.SoftRestartAll(ctx); err != nil {
		t.Fatal(err)
	}
	for id, old := range before {
		if pid := f.pid(t, id); pid == old {
			t.Errorf("cluster %d still in pid %d after SoftRestartAll", id, pid)
		}
	}
	if got := s.Stats().Identifies - identifies; got != 0 {
		t.Errorf("SoftRestartAll spent %d IDENTIFYs, want 0", got)
	}

	last := f.pid(t, 0)
	if err := f.rt.ShutdownCluster(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if alive(last) {
		t.Errorf("cluster 0's child %d still runs after ShutdownCluster", last)
	}
	if err := f.rt.SoftRestart(ctx, 0); err == nil || !strings.Contains(err.Error(), "stopped") {
		t.Errorf("soft restart of a stopped cluster: %v, want an error saying it is stopped", err)
	}
}

// TestProcessesResumeAcrossParentRestart: with Config.SessionStore, a
// fleet in process mode saves its sessions when it stops, and the next
// run's children resume them: a new version of the whole program spends
// no IDENTIFY.
func TestProcessesResumeAcrossParentRestart(t *testing.T) {
	s := procServer(t)
	store := &runtime.MemorySessionStore{}
	withStore := func(c *runtime.Config) { c.SessionStore = store }
	f := startProcFleet(t, s, 2, withStore)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := f.rt.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	saved, _ := store.Load(ctx)
	if len(saved) != 4 {
		t.Fatalf("%d sessions saved, want 4", len(saved))
	}
	identifies := s.Stats().Identifies
	startProcFleet(t, s, 2, withStore)
	if got := s.Stats().Identifies - identifies; got != 0 {
		t.Errorf("the second run spent %d IDENTIFYs, want 0: its children resume the saved sessions", got)
	}
}
