package runtime

import (
	"time"

	"github.com/gofleet/fleet/restproxy"
)

// Observer is told of the fleet's hot paths, for metrics (package metrics
// sets one): every gateway dispatch, every bus request and every REST
// request. What happens once in a while (an IDENTIFY, a resume, a close,
// a restart) is a lifecycle event instead: see Subscribe. Every field may
// be nil. The funcs run on the goroutine that did the work, GatewayEvent
// on a shard's read loop: they must be quick and must not block.
type Observer struct {
	GatewayEvent func(cluster, shard int, eventType string)
	// BusRequest is told of every request made on the runtime's own bus
	// (not a Config.Bus given by the user).
	BusRequest func(command string, d time.Duration, err error)
	// REST gets the shared REST limiter's hooks, when the runtime builds
	// the limiter (Config.RESTLimiter nil), besides
	// Config.RESTLimiterConfig.Hooks.
	REST restproxy.Hooks
}

// Observe makes o the runtime's observer, replacing the previous one
// (the zero Observer observes nothing). It is safe to call at any time, before
// Run or while the fleet runs: each hot path reads the observer on its
// next call.
func (r *Runtime) Observe(o Observer) {
	r.observer.Store(&o)
}

// observedREST returns hooks that call base's, then the observer's.
func (r *Runtime) observedREST(base restproxy.Hooks) restproxy.Hooks {
	return restproxy.Hooks{
		Response: func(route, method string, status int) {
			if f := base.Response; f != nil {
				f(route, method, status)
			}
			if o := r.observer.Load(); o != nil && o.REST.Response != nil {
				o.REST.Response(route, method, status)
			}
		},
		RateLimited: func(route, scope string) {
			if f := base.RateLimited; f != nil {
				f(route, scope)
			}
			if o := r.observer.Load(); o != nil && o.REST.RateLimited != nil {
				o.REST.RateLimited(route, scope)
			}
		},
		Queued: func(route string) {
			if f := base.Queued; f != nil {
				f(route)
			}
			if o := r.observer.Load(); o != nil && o.REST.Queued != nil {
				o.REST.Queued(route)
			}
		},
		Waited: func(route string, d time.Duration) {
			if f := base.Waited; f != nil {
				f(route, d)
			}
			if o := r.observer.Load(); o != nil && o.REST.Waited != nil {
				o.REST.Waited(route, d)
			}
		},
		InvalidRequests: func(n int) {
			if f := base.InvalidRequests; f != nil {
				f(n)
			}
			if o := r.observer.Load(); o != nil && o.REST.InvalidRequests != nil {
				o.REST.InvalidRequests(n)
			}
		},
	}
}
