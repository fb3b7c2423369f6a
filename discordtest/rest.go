package discordtest

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// RESTStats are the REST counters.
type RESTStats struct {
	Requests    map[string]int // by route, "GET /gateway/bot"
	RateLimited map[string]int // 429s by scope: user, global, shared
	Invalid     int            // 401, 403 and non-shared 429 responses in the current window
}

// restState holds the REST API's state.
type restState struct {
	mu       sync.Mutex // guards requests
	requests map[string]int
}

func newRESTState(*config) *restState { return &restState{requests: map[string]int{}} }

func (r *restState) close() {}

func (r *restState) reset() {
	r.mu.Lock()
	r.requests = map[string]int{}
	r.mu.Unlock()
}

func (r *restState) stats() RESTStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := RESTStats{Requests: map[string]int{}, RateLimited: map[string]int{}}
	for k, v := range r.requests {
		st.Requests[k] = v
	}
	return st
}

func (s *Server) serveREST(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, "/api/v10")
	w.Header().Set("Via", "1.1 google")
	w.Header().Set("Content-Type", "application/json")
	if !s.checkToken(r.Header.Get("Authorization")) {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"message": "401: Unauthorized", "code": 0}`))
		return
	}
	switch {
	case r.Method == http.MethodGet && path == "/gateway/bot":
		s.rest.count("GET /gateway/bot")
		_, _ = w.Write(s.gatewayBot())
	case r.Method == http.MethodGet && path == "/users/@me":
		s.rest.count("GET /users/@me")
		_, _ = w.Write(s.appendUser(nil, s.cfg.applicationID))
	default:
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"message": "404: Not Found", "code": 0}`))
	}
}

func (r *restState) count(route string) {
	r.mu.Lock()
	r.requests[route]++
	r.mu.Unlock()
}

// gatewayBot encodes the GET /gateway/bot answer.
func (s *Server) gatewayBot() []byte {
	s.mu.Lock()
	remaining := s.remainingStartsLocked(time.Now())
	resetAfter := s.cfg.sessionReset - time.Now().Sub(s.startsAt)
	s.mu.Unlock()
	b := []byte(`{"url":"` + s.wsURL + `","shards":` + strconv.Itoa(s.RecommendedShards()) + `,"session_start_limit":{"total":`)
	b = strconv.AppendInt(b, int64(s.cfg.sessionStarts), 10)
	b = append(b, `,"remaining":`...)
	b = strconv.AppendInt(b, int64(max(remaining, 0)), 10)
	b = append(b, `,"reset_after":`...)
	b = strconv.AppendInt(b, resetAfter.Milliseconds(), 10)
	b = append(b, `,"max_concurrency":`...)
	b = strconv.AppendInt(b, int64(s.cfg.maxConcurrency), 10)
	return append(b, "}}"...)
}
