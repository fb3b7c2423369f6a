package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gofleet/fleet/discordtest"
)

// maxLoads bounds the loads running at once through the control API.
const maxLoads = 8

// control serves the simulator's fault and load operations over HTTP, so
// that a client in any language can drive them. Every operation is a
// POST with a JSON body (or none); GET /stats and GET /identifies read
// the counters.
type control struct {
	s   *discordtest.Server
	mux *http.ServeMux

	ctx    context.Context // cancelled by shutdown; ends running loads
	cancel context.CancelFunc
	wg     sync.WaitGroup // counts running loads

	mu    sync.Mutex // guards loads, next
	loads map[int]*loadRun
	next  int
}

// loadRun is one load started by POST /load.
type loadRun struct {
	ID       int                     `json:"id"`
	Load     loadRequest             `json:"load"`
	Running  bool                    `json:"running"`
	Result   *discordtest.LoadResult `json:"result,omitempty"`
	Error    string                  `json:"error,omitempty"`
	Started  time.Time               `json:"started"`
	cancel   context.CancelFunc
	finished chan struct{}
}

type loadRequest struct {
	Events    int     `json:"events"`
	Rate      float64 `json:"rate"`
	EventType string  `json:"event_type,omitempty"`
	Guilds    int     `json:"guilds,omitempty"`
}

func newControl(s *discordtest.Server) *control {
	c := &control{s: s, mux: http.NewServeMux(), loads: map[int]*loadRun{}}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.mux.HandleFunc("GET /stats", c.stats)
	c.mux.HandleFunc("GET /identifies", c.identifies)
	c.mux.HandleFunc("POST /reset-counters", c.resetCounters)
	c.mux.HandleFunc("POST /dispatch", c.dispatch)
	c.mux.HandleFunc("POST /broadcast", c.broadcast)
	c.mux.HandleFunc("POST /load", c.startLoad)
	c.mux.HandleFunc("GET /loads", c.listLoads)
	c.mux.HandleFunc("GET /loads/{id}", c.getLoad)
	c.mux.HandleFunc("DELETE /loads/{id}", c.stopLoad)
	c.mux.HandleFunc("POST /restart", c.restart)
	c.mux.HandleFunc("POST /shards/{shard}/{op}", c.shardOp)
	c.mux.HandleFunc("POST /guilds/{guild}/availability", c.availability)
	c.mux.HandleFunc("POST /guilds/{guild}/members/{member}/{event}", c.memberEvent)
	c.mux.HandleFunc("POST /interactions", c.interaction)
	c.mux.HandleFunc("PUT /roles/{role}/permissions", c.rolePermissions)
	c.mux.HandleFunc("PUT /channels/{channel}/overwrites", c.overwrites)
	c.mux.HandleFunc("POST /rest/fail", c.restFail)
	c.mux.HandleFunc("POST /rest/shared-limit", c.restShared)
	c.mux.HandleFunc("POST /rest/latency", c.restLatency)
	c.mux.HandleFunc("POST /rest/clear", c.restClear)
	c.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusNotFound, errorBody("no control endpoint %s %s; see the README section \"Using fakediscord from another language\"", r.Method, r.URL.Path))
	})
	return c
}

func (c *control) ServeHTTP(w http.ResponseWriter, r *http.Request) { c.mux.ServeHTTP(w, r) }

// shutdown stops every running load and waits for them, or for ctx.
func (c *control) shutdown(ctx context.Context) error {
	c.cancel()
	done := make(chan struct{})
	go func() { c.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("fakediscord: control: loads still running: %w", ctx.Err())
	}
}

type errorJSON struct {
	Error string `json:"error"`
}

func errorBody(format string, args ...any) errorJSON {
	return errorJSON{Error: fmt.Sprintf(format, args...)}
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// decode reads an optional JSON body into v; an empty body leaves v as
// it is. Unknown fields are refused, so a typo is an error, not a no-op.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		reply(w, http.StatusRequestEntityTooLarge, errorBody("body: %v (the limit is 1 MiB)", err))
		return false
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return true
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		reply(w, http.StatusBadRequest, errorBody("body: %v", err))
		return false
	}
	return true
}

func (c *control) stats(w http.ResponseWriter, _ *http.Request) { reply(w, http.StatusOK, c.s.Stats()) }

func (c *control) identifies(w http.ResponseWriter, _ *http.Request) {
	reply(w, http.StatusOK, c.s.Identifies())
}

func (c *control) resetCounters(w http.ResponseWriter, _ *http.Request) {
	c.s.ResetCounters()
	reply(w, http.StatusOK, struct{}{})
}

// snowflake accepts a snowflake as a JSON string or number.
type snowflake uint64

func (f *snowflake) UnmarshalJSON(b []byte) error {
	v, err := strconv.ParseUint(strings.Trim(string(b), `"`), 10, 64)
	if err != nil {
		return fmt.Errorf("snowflake %s: want a decimal ID", b)
	}
	*f = snowflake(v)
	return nil
}

type dispatchRequest struct {
	GuildID snowflake       `json:"guild_id"`
	Guild   *int            `json:"guild"` // index of a generated guild, instead of guild_id
	T       string          `json:"t"`
	D       json.RawMessage `json:"d"`
	Content string          `json:"content"` // for a generated MESSAGE_CREATE when d is absent
}

// dispatch sends one event to the sessions of the shard owning a guild.
func (c *control) dispatch(w http.ResponseWriter, r *http.Request) {
	req := dispatchRequest{T: "MESSAGE_CREATE"}
	if !decode(w, r, &req) {
		return
	}
	guild := uint64(req.GuildID)
	if req.Guild != nil {
		if *req.Guild < 0 || *req.Guild >= c.s.Guilds() {
			reply(w, http.StatusBadRequest, errorBody("guild %d: the server has guilds 0 to %d", *req.Guild, c.s.Guilds()-1))
			return
		}
		guild = c.s.GuildID(*req.Guild)
	}
	d := []byte(req.D)
	if len(d) == 0 {
		if req.T != "MESSAGE_CREATE" || guild == 0 {
			reply(w, http.StatusBadRequest, errorBody("d is required unless t is MESSAGE_CREATE in a guild"))
			return
		}
		content := req.Content
		if content == "" {
			content = "hello"
		}
		d = c.s.MessageCreate(guild, content, int(time.Now().UnixNano()&0xffff))
	}
	n, err := c.s.Dispatch(guild, req.T, d)
	if err != nil {
		reply(w, http.StatusBadRequest, errorBody("%v", err))
		return
	}
	reply(w, http.StatusOK, map[string]int{"sessions": n})
}

func (c *control) broadcast(w http.ResponseWriter, r *http.Request) {
	var req dispatchRequest
	if !decode(w, r, &req) {
		return
	}
	if req.T == "" || len(req.D) == 0 {
		reply(w, http.StatusBadRequest, errorBody("broadcast needs t and d"))
		return
	}
	n, err := c.s.Broadcast(req.T, []byte(req.D))
	if err != nil {
		reply(w, http.StatusBadRequest, errorBody("%v", err))
		return
	}
	reply(w, http.StatusOK, map[string]int{"sessions": n})
}

// startLoad starts a load in the background and answers 202 with its id;
// GET /loads/{id} reports it and DELETE /loads/{id} stops it.
func (c *control) startLoad(w http.ResponseWriter, r *http.Request) {
	var req loadRequest
	if !decode(w, r, &req) {
		return
	}
	if req.Events <= 0 || req.Rate < 0 {
		reply(w, http.StatusBadRequest, errorBody("load needs events > 0 and rate >= 0 (0: as fast as the clients read), got %d and %g", req.Events, req.Rate))
		return
	}
	c.mu.Lock()
	running := 0
	for _, l := range c.loads {
		if l.Running {
			running++
		}
	}
	if running >= maxLoads || c.ctx.Err() != nil {
		c.mu.Unlock()
		reply(w, http.StatusTooManyRequests, errorBody("%d loads are running; stop one with DELETE /loads/{id}", running))
		return
	}
	c.next++
	ctx, cancel := context.WithCancel(c.ctx)
	l := &loadRun{ID: c.next, Load: req, Running: true, Started: time.Now(), cancel: cancel, finished: make(chan struct{})}
	c.loads[l.ID] = l
	// Finished loads are forgotten once there are many.
	if len(c.loads) > 4*maxLoads {
		for id, old := range c.loads {
			if !old.Running && id != l.ID {
				delete(c.loads, id)
			}
		}
	}
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		defer cancel()
		res, err := c.s.Load(ctx, discordtest.Load{Events: req.Events, Rate: req.Rate, EventType: req.EventType, Guilds: req.Guilds})
		c.mu.Lock()
		l.Running, l.Result = false, &res
		if err != nil {
			l.Error = err.Error()
		}
		c.mu.Unlock()
		close(l.finished)
	}()
	c.mu.Lock()
	out := *l
	c.mu.Unlock()
	reply(w, http.StatusAccepted, out)
}

func (c *control) listLoads(w http.ResponseWriter, _ *http.Request) {
	c.mu.Lock()
	out := make([]loadRun, 0, len(c.loads))
	for id := 1; id <= c.next; id++ {
		if l, ok := c.loads[id]; ok {
			out = append(out, *l)
		}
	}
	c.mu.Unlock()
	reply(w, http.StatusOK, out)
}

func (c *control) load(w http.ResponseWriter, r *http.Request) *loadRun {
	id, err := strconv.Atoi(r.PathValue("id"))
	c.mu.Lock()
	l := c.loads[id]
	c.mu.Unlock()
	if err != nil || l == nil {
		reply(w, http.StatusNotFound, errorBody("no load %q; GET /loads lists them", r.PathValue("id")))
		return nil
	}
	return l
}

// getLoad reports a load; with ?wait=DURATION it first waits up to that
// long for the load to finish.
func (c *control) getLoad(w http.ResponseWriter, r *http.Request) {
	l := c.load(w, r)
	if l == nil {
		return
	}
	if v := r.URL.Query().Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > 10*time.Minute {
			reply(w, http.StatusBadRequest, errorBody("wait=%q: want a duration such as 30s, at most 10m", v))
			return
		}
		c.answerLoad(w, r, l, d)
		return
	}
	c.answerLoad(w, r, l, 0)
}

// answerLoad waits up to d for l to finish (or the request to end), then
// answers with l's state.
func (c *control) answerLoad(w http.ResponseWriter, r *http.Request, l *loadRun, d time.Duration) {
	if d > 0 {
		t := time.NewTimer(d)
		select {
		case <-l.finished:
		case <-t.C:
		case <-r.Context().Done():
		}
		t.Stop()
	}
	c.mu.Lock()
	out := *l
	c.mu.Unlock()
	reply(w, http.StatusOK, out)
}

func (c *control) stopLoad(w http.ResponseWriter, r *http.Request) {
	l := c.load(w, r)
	if l == nil {
		return
	}
	l.cancel()
	// Load returns once its ctx ends, unless it waits for a client that
	// stopped reading: then the answer says it is still running.
	c.answerLoad(w, r, l, 5*time.Second)
}

func (c *control) restart(w http.ResponseWriter, r *http.Request) {
	var req struct {
		KeepSessions bool `json:"keep_sessions"`
	}
	if !decode(w, r, &req) {
		return
	}
	c.s.Restart(req.KeepSessions)
	reply(w, http.StatusOK, struct{}{})
}

// shardOp runs a fault on one shard, or on every shard for "all".
func (c *control) shardOp(w http.ResponseWriter, r *http.Request) {
	shard := discordtest.AllShards
	if v := r.PathValue("shard"); v != "all" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			reply(w, http.StatusBadRequest, errorBody("shard %q: want a shard id or all", v))
			return
		}
		shard = n
	}
	var req struct {
		Code      int    `json:"code"`
		Reason    string `json:"reason"`
		Resumable bool   `json:"resumable"`
		N         int    `json:"n"`
		MS        *int   `json:"ms"`
		Stop      *bool  `json:"stop"`
	}
	if !decode(w, r, &req) {
		return
	}
	one := func(what string) bool {
		if shard == discordtest.AllShards {
			reply(w, http.StatusBadRequest, errorBody("%s needs one shard id, not all", what))
			return false
		}
		return true
	}
	n := -1 // connections or sessions acted on; -1 when the call has none
	switch op := r.PathValue("op"); op {
	case "drop":
		n = c.s.DropShard(shard)
	case "close":
		if req.Code < 1000 || req.Code > 4999 {
			reply(w, http.StatusBadRequest, errorBody("close needs a code from 1000 to 4999, e.g. {\"code\":4000}"))
			return
		}
		n = c.s.CloseShard(shard, req.Code, req.Reason)
	case "reconnect":
		n = c.s.Reconnect(shard)
	case "invalidate":
		n = c.s.InvalidateSession(shard, req.Resumable)
	case "hold":
		if !one("hold") {
			return
		}
		c.s.HoldShard(shard)
	case "release":
		if !one("release") {
			return
		}
		c.s.ReleaseShard(shard)
	case "refuse-resumes":
		if !one("refuse-resumes") {
			return
		}
		if req.N <= 0 {
			req.N = 1
		}
		c.s.RefuseResumes(shard, req.N)
	case "latency":
		if req.MS == nil || *req.MS < 0 {
			reply(w, http.StatusBadRequest, errorBody("latency needs ms >= 0, e.g. {\"ms\":250}"))
			return
		}
		n = c.s.SetLatency(shard, time.Duration(*req.MS)*time.Millisecond)
	case "stop-acks":
		stop := req.Stop == nil || *req.Stop
		n = c.s.StopAcks(shard, stop)
	case "request-heartbeat":
		n = c.s.RequestHeartbeat(shard)
	default:
		reply(w, http.StatusNotFound, errorBody("unknown shard operation %q; have drop, close, reconnect, invalidate, hold, release, refuse-resumes, latency, stop-acks, request-heartbeat", op))
		return
	}
	if n < 0 {
		reply(w, http.StatusOK, struct{}{})
		return
	}
	reply(w, http.StatusOK, map[string]int{"affected": n})
}

type restFaultRequest struct {
	Route  string `json:"route"`
	Status int    `json:"status"`
	N      int    `json:"n"`
}

// restFault calls fn, turning its panic on a bad route or status into a
// 400 that names the problem.
func restFault(w http.ResponseWriter, fn func()) {
	defer func() {
		if p := recover(); p != nil {
			reply(w, http.StatusBadRequest, errorBody("%v", p))
		}
	}()
	fn()
	reply(w, http.StatusOK, struct{}{})
}

func (c *control) restFail(w http.ResponseWriter, r *http.Request) {
	req := restFaultRequest{N: 1}
	if !decode(w, r, &req) {
		return
	}
	restFault(w, func() { c.s.FailNextREST(req.Route, req.Status, req.N) })
}

func (c *control) restShared(w http.ResponseWriter, r *http.Request) {
	req := restFaultRequest{N: 1}
	if !decode(w, r, &req) {
		return
	}
	restFault(w, func() { c.s.SharedRateLimitNext(req.Route, req.N) })
}

func (c *control) restLatency(w http.ResponseWriter, r *http.Request) {
	var req struct {
		MS int `json:"ms"`
	}
	if !decode(w, r, &req) {
		return
	}
	if req.MS < 0 {
		reply(w, http.StatusBadRequest, errorBody("ms must be >= 0"))
		return
	}
	c.s.SetRESTLatency(time.Duration(req.MS) * time.Millisecond)
	reply(w, http.StatusOK, struct{}{})
}

func (c *control) restClear(w http.ResponseWriter, _ *http.Request) {
	c.s.ClearRESTFaults()
	reply(w, http.StatusOK, struct{}{})
}

// guildIndex reads the {guild} path value: a generated guild's index.
func (c *control) guildIndex(w http.ResponseWriter, r *http.Request) (int, bool) {
	g, err := strconv.Atoi(r.PathValue("guild"))
	if err != nil || g < 0 || g >= c.s.Guilds() {
		reply(w, http.StatusBadRequest, errorBody("guild %q: want an index from 0 to %d", r.PathValue("guild"), c.s.Guilds()-1))
		return 0, false
	}
	return g, true
}

// availability starts or ends a guild outage.
func (c *control) availability(w http.ResponseWriter, r *http.Request) {
	g, ok := c.guildIndex(w, r)
	if !ok {
		return
	}
	var req struct {
		Available *bool `json:"available"`
	}
	if !decode(w, r, &req) {
		return
	}
	if req.Available == nil {
		reply(w, http.StatusBadRequest, errorBody(`availability needs {"available": true|false}`))
		return
	}
	n, err := c.s.SetGuildAvailable(g, *req.Available)
	if err != nil {
		reply(w, http.StatusInternalServerError, errorBody("%v", err))
		return
	}
	reply(w, http.StatusOK, map[string]int{"sessions": n})
}

// memberEvent dispatches GUILD_MEMBER_ADD, _UPDATE or _REMOVE for a
// generated member.
func (c *control) memberEvent(w http.ResponseWriter, r *http.Request) {
	g, ok := c.guildIndex(w, r)
	if !ok {
		return
	}
	m, err := strconv.Atoi(r.PathValue("member"))
	if err != nil || m < 0 {
		reply(w, http.StatusBadRequest, errorBody("member %q: want a member index (0 is the bot)", r.PathValue("member")))
		return
	}
	var t string
	var d []byte
	switch r.PathValue("event") {
	case "add":
		t, d = "GUILD_MEMBER_ADD", c.s.GuildMemberAdd(g, m)
	case "update":
		t, d = "GUILD_MEMBER_UPDATE", c.s.GuildMemberUpdate(g, m)
	case "remove":
		t, d = "GUILD_MEMBER_REMOVE", c.s.GuildMemberRemove(g, m)
	default:
		reply(w, http.StatusNotFound, errorBody("member event %q: have add, update, remove", r.PathValue("event")))
		return
	}
	n, err := c.s.Dispatch(c.s.GuildID(g), t, d)
	if err != nil {
		reply(w, http.StatusInternalServerError, errorBody("%v", err))
		return
	}
	reply(w, http.StatusOK, map[string]int{"sessions": n})
}

// interaction dispatches an INTERACTION_CREATE for a slash command and
// answers with its id and token, for the callback and webhook routes.
func (c *control) interaction(w http.ResponseWriter, r *http.Request) {
	req := struct {
		Guild   int    `json:"guild"`
		Command string `json:"command"`
	}{Command: "ping"}
	if !decode(w, r, &req) {
		return
	}
	if req.Guild < 0 || req.Guild >= c.s.Guilds() {
		reply(w, http.StatusBadRequest, errorBody("guild %d: the server has guilds 0 to %d", req.Guild, c.s.Guilds()-1))
		return
	}
	payload, token := c.s.InteractionCreate(req.Guild, req.Command)
	var head struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(payload, &head)
	n, err := c.s.Dispatch(c.s.GuildID(req.Guild), "INTERACTION_CREATE", payload)
	if err != nil {
		reply(w, http.StatusInternalServerError, errorBody("%v", err))
		return
	}
	reply(w, http.StatusOK, map[string]any{"id": head.ID, "token": token, "sessions": n})
}

func (c *control) rolePermissions(w http.ResponseWriter, r *http.Request) {
	role, err := strconv.ParseUint(r.PathValue("role"), 10, 64)
	if err != nil {
		reply(w, http.StatusBadRequest, errorBody("role %q: want a role ID (a guild's ID for @everyone)", r.PathValue("role")))
		return
	}
	var req struct {
		Permissions snowflake `json:"permissions"`
	}
	if !decode(w, r, &req) {
		return
	}
	c.s.SetRolePermissions(role, uint64(req.Permissions))
	reply(w, http.StatusOK, struct{}{})
}

func (c *control) overwrites(w http.ResponseWriter, r *http.Request) {
	channel, err := strconv.ParseUint(r.PathValue("channel"), 10, 64)
	if err != nil {
		reply(w, http.StatusBadRequest, errorBody("channel %q: want a channel ID", r.PathValue("channel")))
		return
	}
	var req []struct {
		ID    snowflake `json:"id"`
		Type  int       `json:"type"` // 0 role, 1 member, as in Discord's overwrite object
		Allow snowflake `json:"allow"`
		Deny  snowflake `json:"deny"`
	}
	if !decode(w, r, &req) {
		return
	}
	ows := make([]discordtest.Overwrite, 0, len(req))
	for _, o := range req {
		ows = append(ows, discordtest.Overwrite{ID: uint64(o.ID), Member: o.Type == 1, Allow: uint64(o.Allow), Deny: uint64(o.Deny)})
	}
	c.s.SetChannelOverwrites(channel, ows...)
	reply(w, http.StatusOK, struct{}{})
}
