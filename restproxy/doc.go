// Package restproxy is the fleet's central REST rate limiter: one Limiter
// shared by every cluster's disgo REST client, so that together they never
// exceed a Discord bucket or the global limit, and a Server that offers
// the same limiter over HTTP to other processes and hosts.
//
//	l, err := restproxy.New(restproxy.Config{}) // Discord's defaults
//	...
//	client := rest.New(rest.NewClient(token, l.ConfigOpt()))
//
// # Buckets
//
// Discord limits each route per major parameter (channel, guild, or
// webhook ID and token) and tells the limits in X-RateLimit-* headers.
// The limiter keys a request by its route with IDs replaced
// ("POST /channels/{channel.id}/messages") and its major parameter; once a
// response names the route's X-RateLimit-Bucket, routes that share a hash
// share a bucket. Before a bucket's first answer one request at a time
// goes, to learn the limit; after, up to Remaining requests go at once,
// and the rest wait, in arrival order, until X-RateLimit-Reset-After has
// passed. Reset times are measured from a response's arrival, so they are
// never earlier than Discord's; requests still in flight when a window
// ends are counted against the next one, where they may land.
//
// # Global limit
//
// Every request except those to interaction routes also takes a slot of
// the global limit: Config.GlobalLimit requests (50 by default) in any
// Config.GlobalWindow, lengthened by Config.GlobalMargin because Discord
// does not say when its window starts. Bots that Discord has raised set
// their own limit.
//
// # 429s and retries
//
// A 429 blocks its bucket (scope user or shared) or every request (scope
// global, or a Cloudflare ban: a 429 without Discord's Via header) for its
// retry_after. disgo's client then retries it, up to Config.Retries times,
// at the head of its bucket's queue. disgo does not retry 5xx answers; the
// client's transport (see Transport, installed by ConfigOpt) retries those
// of idempotent methods with a back-off. Waiting is bounded by the
// request's context (disgo's rest.WithCtx): a request whose context ends
// while it is queued returns at once, and is not sent.
//
// # Invalid requests
//
// Discord bans an IP for a while after 10,000 responses of 401, 403 or 429
// (429s of scope shared excepted) in 10 minutes. The limiter counts them
// in a sliding window, logs a warning at 80 % of Config.InvalidRequestLimit
// and, from Config.InvalidRequestStop on, fails new requests with an error
// wrapping ErrInvalidRequestLimit instead of sending them.
//
// # Proxy
//
// A Server (NewServer) is an http.Handler that forwards Discord REST calls
// through a Limiter, adding the bot's token (ServerConfig.Token), and
// passes Discord's answers back unchanged; the cmd/restproxy command runs
// one. Clients point their REST base URL at it and need no token and no
// limiter of their own:
//
//	rest.NewClient("", rest.WithURL("http://proxy:8080/api/v10"),
//		rest.WithRateLimiter(rest.NewNoopRateLimiter()))
//
// One Server serves one bot. A request may carry no Authorization or the
// bot's own token; another token or scheme gets 401 there, before
// Discord, and is not counted as an invalid request. Routes Discord serves
// without a bot token (interaction callbacks and follow-ups, webhooks
// called with their token, GET /gateway) go without it. Paths with dot
// segments, empty segments or encoded slashes get 400, and only
// /api/v{N}/... is forwarded. ServerConfig.Secret makes clients send a
// shared secret in the SecretHeader header (SecretTransport adds it).
// Bodies stream, bounded by ServerConfig.MaxBodyBytes and cut when they
// stall for ServerConfig.BodyTimeout; only requests the proxy can send
// again (no body, or one of at most 64 KiB) are retried. /healthz reports
// the limiter's state, and /metrics serves ServerConfig.Metrics.
//
// # Metrics
//
// Config.Hooks reports responses by route, method and status, 429s by
// scope, time spent waiting, and the invalid-request count; Limiter.Stats
// reads the queue and in-flight gauges. The package does not import
// Prometheus: the metrics package adapts the hooks.
//
// # Goroutines and locks
//
// The limiter starts no goroutine. One mutex guards its state; a waiting
// request holds only a timer, which it stops when it leaves. Tokens never
// appear in logs, hooks or errors: routes are templates, and the major
// parameter, which can hold a webhook token, stays inside the limiter.
// net/http runs a Server's handlers, and each handler writes its upstream
// request and reads the answer itself. In a process running Go on one
// thread (GOMAXPROCS 1, as cmd/restproxy does by default), each idle
// upstream connection has one goroutine that reads it, to learn without a
// system call whether Discord closed it; a request taking the connection
// ends that read, and Server.Close closes the idle connections and waits
// for their goroutines. With more threads, the Server starts no goroutine
// of its own.
package restproxy
