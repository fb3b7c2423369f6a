package runtime

import (
	"log/slog"
	"slices"
	"sync"
	"time"
)

// progressEvery bounds the time between two StartupProgress events while
// the fleet starts, whatever the identify window.
const progressEvery = 10 * time.Second

// StartupProgress is where the fleet's start-up stands. While the shards
// of the first generation start, one is emitted per identify window (at
// least every 10 s), and a last one when every shard is ready, right
// before FleetReady; Runtime.Startup answers it at any time.
type StartupProgress struct {
	Ready  int `json:"ready"`  // shards ready
	Shards int `json:"shards"` // shards this runtime runs
	// Window is the identify window the queue has reached, counting the
	// IDENTIFYs sent: ceil(sent / MaxConcurrency). Windows is the number
	// the start-up needs: ceil(Shards / MaxConcurrency).
	Window         int `json:"window"`
	Windows        int `json:"windows"`
	MaxConcurrency int `json:"max_concurrency"`
	// Elapsed is the time since Run began; once every shard is ready,
	// the time the start-up took.
	Elapsed time.Duration `json:"elapsed_ns"`
	// ETA is the identify queue's physical limit for the shards not
	// ready yet: ceil((Shards − Ready) / MaxConcurrency) identify windows.
	// It is a lower bound: a window also waits for its READYs.
	ETA time.Duration `json:"eta_ns"`
	// Late lists the shards that sent IDENTIFY more than two identify
	// windows ago and are not ready yet, in order.
	Late []int `json:"late,omitempty"`
}

// Kind is EventStartupProgress.
func (StartupProgress) Kind() EventKind { return EventStartupProgress }

func (e StartupProgress) String() string { return eventString(e) }

func (e StartupProgress) LogValue() slog.Value {
	as := []slog.Attr{slog.Int("ready", e.Ready), slog.Int("shards", e.Shards), slog.Int("window", e.Window),
		slog.Int("windows", e.Windows), slog.Duration("elapsed", e.Elapsed.Round(time.Millisecond)),
		slog.Duration("eta", e.ETA)}
	if len(e.Late) > 0 {
		as = append(as, slog.Any("late", e.Late))
	}
	return slog.GroupValue(as...)
}

// Startup reports where the fleet's start-up stands; the zero value
// before Run has planned the fleet. The caller owns Late.
func (r *Runtime) Startup() StartupProgress {
	return r.startup.snapshot()
}

// startup follows the first generation's start-up for StartupProgress.
type startup struct {
	emitMu sync.Mutex // held while a progress event is made and emitted, so that they go out in order

	clock func() time.Time // nil: time.Now; read under mu, so that what is recorded keeps its order

	mu         sync.Mutex // guards the fields below
	planned    bool
	began      time.Time
	shards, mc int
	interval   time.Duration
	sentAt     map[int]time.Time // shard -> its first IDENTIFY
	ready      map[int]bool
	done       chan struct{} // closed when every shard is ready
	doneAt     time.Time
}

// plan starts following a start-up of shards at max concurrency mc and
// the identify interval, begun at began.
func (s *startup) plan(began time.Time, shards, mc int, interval time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.planned, s.began, s.shards, s.mc, s.interval = true, began, shards, mc, interval
	s.sentAt, s.ready, s.done = map[int]time.Time{}, map[int]bool{}, make(chan struct{})
}

func (s *startup) nowLocked() time.Time {
	if s.clock != nil {
		return s.clock()
	}
	return time.Now()
}

// identified records a shard's IDENTIFY.
func (s *startup) identified(shard int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.planned || !s.doneAt.IsZero() {
		return
	}
	if _, ok := s.sentAt[shard]; !ok {
		s.sentAt[shard] = s.nowLocked()
	}
}

// shardReady records a shard ready; it returns how many are, and whether
// it was the last.
func (s *startup) shardReady(shard int) (n int, last bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.planned || !s.doneAt.IsZero() || s.ready[shard] {
		return len(s.ready), false
	}
	s.ready[shard] = true
	if len(s.ready) < s.shards {
		return len(s.ready), false
	}
	s.doneAt = s.nowLocked()
	close(s.done)
	return len(s.ready), true
}

// snapshot is the progress now.
func (s *startup) snapshot() StartupProgress {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.planned {
		return StartupProgress{}
	}
	now := s.nowLocked()
	p := StartupProgress{Ready: len(s.ready), Shards: s.shards, MaxConcurrency: s.mc,
		Window: ceilDiv(len(s.sentAt), s.mc), Windows: ceilDiv(s.shards, s.mc), Elapsed: now.Sub(s.began)}
	if !s.doneAt.IsZero() {
		p.Elapsed = s.doneAt.Sub(s.began)
		p.Window = max(p.Window, p.Windows) // resumed shards send no IDENTIFY
		return p
	}
	p.ETA = time.Duration(ceilDiv(s.shards-p.Ready, s.mc)) * s.interval
	for shard, at := range s.sentAt {
		if !s.ready[shard] && now.Sub(at) > 2*s.interval {
			p.Late = append(p.Late, shard)
		}
	}
	slices.Sort(p.Late)
	return p
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// progressLoop emits a StartupProgress every identify window (at most
// progressEvery apart) until the start-up is done or stop closes.
func (r *Runtime) progressLoop(stop <-chan struct{}) {
	s := &r.startup
	s.mu.Lock()
	every, done := min(s.interval, progressEvery), s.done
	s.mu.Unlock()
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-done:
			return
		case <-t.C:
			s.emitMu.Lock()
			select {
			case <-done: // the last event is out, or about to be
			default:
				r.events.emit(s.snapshot())
			}
			s.emitMu.Unlock()
			t.Reset(every) // counted from the event: never two in one window
		}
	}
}

// emitLast emits the start-up's last progress event: every shard ready.
func (r *Runtime) emitLast() {
	r.startup.emitMu.Lock()
	defer r.startup.emitMu.Unlock()
	r.events.emit(r.startup.snapshot())
}
