package admin

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// view is the public part of a runtime.Stats snapshot: what the page
// shows and status.json carries.
type view struct {
	Time            time.Time     `json:"time"`
	UptimeSeconds   int64         `json:"uptime_s"`
	Shards          int           `json:"shards"`       // run by this runtime
	TotalShards     int           `json:"total_shards"` // the fleet's, for the guild formula
	ShardsReady     int           `json:"shards_ready"`
	Guilds          int           `json:"guilds"`
	EventsPerSecond float64       `json:"events_per_second"`
	Clusters        []clusterView `json:"clusters"`
	Services        []serviceView `json:"services"`
}

type clusterView struct {
	ID              int         `json:"id"`
	State           string      `json:"state"` // a shardgroup.State, or "failed"
	UptimeSeconds   int64       `json:"uptime_s"`
	Restarts        int         `json:"restarts"`
	Guilds          int         `json:"guilds"`
	ShardsReady     int         `json:"shards_ready"`
	EventsPerSecond float64     `json:"events_per_second"`
	Shards          []shardView `json:"shards"`
}

type shardView struct {
	ID              int     `json:"id"`
	Cluster         int     `json:"cluster"`
	State           string  `json:"state"`      // a shardgroup.State
	LatencyMillis   float64 `json:"latency_ms"` // 0: not measured yet
	Guilds          int     `json:"guilds"`
	EventsPerSecond float64 `json:"events_per_second"`
}

type serviceView struct {
	Name          string `json:"name"`
	State         string `json:"state"` // a services.State
	UptimeSeconds int64  `json:"uptime_s"`
	Restarts      int    `json:"restarts"`
}

func newView(st runtime.Stats, rates map[int]float64) *view {
	v := &view{
		Time: st.Time.UTC(), UptimeSeconds: int64(st.Uptime / time.Second),
		Shards: st.Shards, TotalShards: st.TotalShards, ShardsReady: st.ShardsReady, Guilds: st.Guilds,
		Clusters: make([]clusterView, 0, len(st.Clusters)), Services: make([]serviceView, 0, len(st.Services)),
	}
	for _, c := range st.Clusters {
		cv := clusterView{ID: c.ID, State: c.State.String(), UptimeSeconds: int64(c.Uptime / time.Second),
			Restarts: c.Restarts, Guilds: c.Guilds, Shards: make([]shardView, 0, len(c.Shards))}
		if c.Failed {
			cv.State = "failed"
		}
		for _, s := range c.Shards {
			sv := shardView{ID: s.ID, Cluster: c.ID, State: s.State.String(), Guilds: s.Guilds,
				LatencyMillis: float64(s.Latency.Microseconds()) / 1000, EventsPerSecond: rates[s.ID]}
			if s.State == shardgroup.StateReady {
				cv.ShardsReady++
			}
			cv.EventsPerSecond += sv.EventsPerSecond
			cv.Shards = append(cv.Shards, sv)
		}
		v.EventsPerSecond += cv.EventsPerSecond
		v.Clusters = append(v.Clusters, cv)
	}
	for _, s := range st.Services {
		v.Services = append(v.Services, serviceView{Name: s.Name, State: s.State,
			UptimeSeconds: int64(s.Uptime / time.Second), Restarts: s.Restarts})
	}
	return v
}

// AllShards lists every shard, cluster by cluster.
func (v *view) AllShards() []shardView {
	var all []shardView
	for _, c := range v.Clusters {
		all = append(all, c.Shards...)
	}
	return all
}

// ServicesReady counts the services that serve.
func (v *view) ServicesReady() int { return len(v.Services) - v.servicesDown() }

func (v *view) servicesDown() int {
	n := 0
	for _, s := range v.Services {
		if s.State != "ready" {
			n++
		}
	}
	return n
}

// downList names up to max shards that are not ready.
func (v *view) downList(max int) string {
	var names []string
	n := 0
	for _, s := range v.AllShards() {
		if s.State == "ready" {
			continue
		}
		if n < max {
			names = append(names, fmt.Sprintf("shard %d %s", s.ID, s.State))
		}
		n++
	}
	if n > max {
		names = append(names, fmt.Sprintf("and %d more", n-max))
	}
	return strings.Join(names, ", ")
}

// lookup answers "which shard is my server on?".
type lookup struct {
	OK    bool
	Tone  string
	Text  string
	Shard int
}

// findGuild applies Discord's formula, shard = (id >> 22) % total_shards,
// to the input, and says what is wrong with input that is not an ID.
func findGuild(v *view, input string) lookup {
	input = strings.TrimSpace(input)
	// A snowflake: digits only, 64 bits, and a creation time after
	// Discord's epoch (id >> 22 > 0).
	id, err := strconv.ParseUint(input, 10, 64)
	if err != nil || strings.TrimLeft(input, "0123456789") != "" || id>>22 == 0 {
		return lookup{Tone: "bad", Text: fmt.Sprintf("%q is not a server ID. A server ID is a number of 17 to 20 digits: "+
			"in Discord, turn on Developer Mode (Settings, Advanced), then right-click the server and choose Copy Server ID.", input)}
	}
	if v.TotalShards == 0 {
		return lookup{Tone: "off", Text: "The fleet is not running, so no shard serves server " + input + " right now."}
	}
	shard := int((id >> 22) % uint64(v.TotalShards))
	for _, c := range v.Clusters {
		for _, s := range c.Shards {
			if s.ID == shard {
				return lookup{OK: true, Tone: tone(s.State), Shard: shard,
					Text: fmt.Sprintf("Server %s is on shard %d (cluster %d), which is %s.", input, shard, c.ID, s.State)}
			}
		}
	}
	return lookup{Tone: "off", Shard: shard,
		Text: fmt.Sprintf("Server %s is on shard %d of %d, which this status page does not run.", input, shard, v.TotalShards)}
}

// tone groups states for colour: ok, warn (on its way up), bad, off.
func tone(state string) string {
	switch state {
	case "ready":
		return "ok"
	case "connecting", "identifying", "resuming", "starting", "restarting":
		return "warn"
	case "disconnected", "failed":
		return "bad"
	}
	return "off"
}

// symbol is a tone's mark, shown next to the state's name so that the
// state does not rest on colour alone.
func symbol(tone string) string {
	switch tone {
	case "ok":
		return "✓"
	case "warn":
		return "↻"
	case "bad":
		return "✕"
	}
	return "–"
}

func formatDuration(secs int64) string {
	d := time.Duration(secs) * time.Second
	switch {
	case secs < 0:
		return "–"
	case d < time.Minute:
		return fmt.Sprintf("%ds", secs)
	case d < time.Hour:
		return fmt.Sprintf("%dm %ds", secs/60, secs%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh %dm", secs/3600, secs/60%60)
	}
	return fmt.Sprintf("%dd %dh", secs/86400, secs/3600%24)
}

func formatRate(r float64) string {
	if r < 10 {
		return strconv.FormatFloat(r, 'f', 1, 64)
	}
	return strconv.FormatFloat(r, 'f', 0, 64)
}

func formatLatency(ms float64) string {
	switch {
	case ms <= 0:
		return "–" // not measured yet
	case ms < 1:
		return "< 1 ms"
	}
	return strconv.FormatFloat(ms, 'f', 0, 64) + " ms"
}
