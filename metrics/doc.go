// Package metrics exports a fleet's figures to Prometheus and serves an
// admin HTTP handler: /metrics, /healthz, /status and opt-in operations.
//
// # Wiring
//
// The collectors go on a registry the caller owns (never the global
// default, unless that is what the caller passes). Register wires
// everything in one call, before or after Run: the collectors, the
// runtime's Observer (dispatches, bus requests, and REST requests through
// the limiter the runtime built), a subscription to its events (which
// also tells the handler when shards disconnect), and the scrape-time
// collector that reads its state:
//
//	rt, err := runtime.New(cfg)
//	...
//	m, err := metrics.Register(rt, prometheus.NewRegistry())
//	...
//	mux.Handle("/", m.Handler(metrics.HandlerOptions{}))
//
// The handler binds nothing itself: mount it on a server of your own,
// on a loopback or private address.
//
// # Metrics
//
// Counters, updated as things happen:
//
//	fleet_gateway_events_total{shard,event}         dispatches received
//	fleet_identifies_total{shard}                   IDENTIFYs sent
//	fleet_identify_queue_wait_seconds               time in the identify queue (histogram)
//	fleet_resumes_total{shard}                      sessions resumed
//	fleet_shard_reconnects_total{code}              connections lost, by close code ("zombie": no heartbeat ACK)
//	fleet_cluster_restarts_total{cluster}           supervised and hard restarts
//	fleet_listener_panics_total{cluster}            panics recovered from listeners
//	fleet_service_restarts_total{service}           service restarts
//	fleet_bus_requests_total{command,outcome}       bus requests (ObserveBusRequest)
//	fleet_bus_request_duration_seconds{command}     their latency (histogram)
//	fleet_rest_requests_total{route,method,status}  REST responses; status 0: none
//	fleet_rest_rate_limited_total{scope}            429s: user, global, shared, cloudflare
//	fleet_rest_queued_requests_total                requests that had to wait in the limiter
//	fleet_rest_limiter_wait_seconds                 time spent waiting there (histogram)
//
// Gauges, read at scrape time from the attached runtime:
//
//	fleet_shards{state}                             shards by state
//	fleet_shard_heartbeat_latency_seconds{shard}    last heartbeat round trip
//	fleet_heartbeat_latency_seconds                 heartbeat round trips (histogram, one sample per new measurement seen)
//	fleet_guilds{cluster}                           guilds in a cluster's cache
//	fleet_cache_entries{cluster,cache}              entries of a cluster's disgo caches
//	fleet_rest_invalid_requests                     401, 403 and non-shared 429s in Discord's 10-minute window
//	fleet_rest_limiter_buckets, fleet_rest_limiter_queued_requests, fleet_rest_limiter_in_flight_requests
//	fleet_startup_shards_ready, fleet_startup_shards  the start-up's progress (runtime.Runtime.Startup)
//	fleet_startup_identify_window, fleet_startup_identify_windows  identify windows reached, needed
//	fleet_startup_eta_seconds                       the identify queue's limit for the shards not ready; 0 once all are
//	fleet_startup_late_shards                       shards that identified two windows ago and are not ready
//
// plus the Go and process collectors.
//
// # Cardinality
//
// Labels never carry guild, channel or user IDs. Shards and clusters are
// bounded by the fleet's size; event names outside the known gateway
// dispatches count as event="other"; REST routes are templates; close
// codes outside Discord's and the WebSocket ones count as code="other";
// bus commands, service names and REST routes are capped at
// MaxLabelValues distinct values each, the rest counting as "other".
//
// # Cost
//
// The Observer's GatewayEvent runs on a shard's read loop for every event. Its
// counters are resolved once per shard and event name and kept in a
// table; in steady state an event costs a map lookup and an atomic add,
// and allocates nothing.
//
// # Admin handler
//
// Handler serves:
//
//	GET  /metrics                            the registry, in Prometheus' formats
//	GET  /healthz                            200 while every shard is ready or resuming, 503 otherwise
//	GET  /status                             runtime.Stats as JSON, the start-up's progress included
//	GET  /page/                              the status page (admin.StatusPage), with operator controls when the operations are on
//
// and the operations, each named as the runtime.Fleet method it calls:
//
//	POST /admin/clusters/{id}/soft-restart    SoftRestart
//	POST /admin/clusters/{id}/restart         Restart: answered once every shard of the new instance is ready
//	POST /admin/clusters/{id}/shutdown        ShutdownCluster
//	POST /admin/clusters/soft-restart         SoftRestartAll (an operation: 202)
//	POST /admin/clusters/restart              RestartAll (an operation: 202)
//	POST /admin/reshard                       Reshard (an operation: 202); body {"shards": n, "clusters": m}
//	POST /admin/shutdown                      Shutdown (the whole fleet)
//	POST /admin/services/{name}/soft-restart  SoftRestartService
//	POST /admin/services/{name}/restart       RestartService
//	POST /admin/services/{name}/shutdown      ShutdownService
//	POST /admin/services/soft-restart         SoftRestartAllServices
//	POST /admin/services/restart              RestartAllServices
//	GET  /admin/operations/{id}               Operation: a long operation's state, progress, result and error
//
// The operator is the runtime, or any runtime.Fleet given as
// HandlerOptions.Operator: a runtime.Client serves a runtime reached over
// its bus. A reshard and a rolling restart run on the runtime's own
// context: the request is answered at once with 202, the
// runtime.Operation and its URL (also in Location), which GET
// /admin/operations/{id} answers until it has ended; a client that goes
// away cuts nothing short. A reshard body of 0 means Discord's
// recommended shard count and the current cluster count; an empty or
// malformed body answers 400. A reshard that cannot work (a shard count
// that is not a multiple of max_concurrency, more clusters than shards,
// more session starts than remain) answers 400 with what to change, and
// one to the current counts answers 200 with the operation, done, its
// result saying nothing changed.
//
// Errors answer as JSON {"error": message}: 400 for bad input, 404 for an
// unknown cluster, service or operation, 409 while a reshard runs or for
// a soft restart of a service that is not ready, 503 when the fleet is
// not running, 504 when OperationTimeout ends the wait, 501 for an
// operation the Operator does not support (errors.ErrUnsupported).
//
// The operations answer 404 unless HandlerOptions.AdminToken is set, and
// then need "Authorization: Bearer <token>" (401 otherwise, saying so
// when a bot token was sent instead), compared in constant time. GET /
// lists them only to a caller with the token.
package metrics
