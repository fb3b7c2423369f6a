// Package runtime runs a Discord bot's shards as a supervised fleet of
// clusters inside one process: eris-fleet's Admiral, with goroutines for
// processes.
//
//	rt, err := runtime.New(runtime.Config{
//		Token: runtime.Token(os.Getenv("DISCORD_TOKEN")),
//		Bot:   func(cluster int) runtime.Bot { return myBot{} },
//	})
//	...
//	err = rt.Run(ctx) // until ctx ends, Shutdown, or a fatal close
//
// Run blocks; to go on once the fleet is ready, run it in the background
// and wait on Ready and Done:
//
//	go rt.Run(ctx)
//	select {
//	case <-rt.Ready(): // every shard has been ready
//	case <-rt.Done():
//		return rt.Err() // Run failed or was stopped first
//	}
//
// # Plan
//
// Run asks GET /gateway/bot for the recommended shard count (Config.Shards
// 0), max_concurrency and the session start limit, checks that enough
// starts remain, and splits the shards (or the slice
// FirstShardID..LastShardID of TotalShards) into Config.Clusters
// contiguous ranges (or ranges of about Config.ShardsPerCluster). Each
// cluster is a shardgroup group: one disgo client and its shards, which
// the runtime starts, stops and restarts. The user's Bot.Setup gets the
// cluster's *shardgroup.Group before its shards connect, so listeners see
// READY: its ID, shards, disgo client, a bus client for calls and its
// logger, and nothing that starts or stops it.
//
// # Start-up at Discord's limit
//
// One IdentifyQueue serves every cluster: IDENTIFYs go out by bucket
// (shard_id % max_concurrency), one per bucket per IdentifyInterval, every
// bucket at once. A bucket is released when its IDENTIFY's READY arrives,
// so no network delay can make two IDENTIFYs of a bucket reach Discord
// closer than the interval; the fleet is ready in about ceil(shards /
// max_concurrency) intervals. Shards do not all connect at once: one per
// bucket (Config.ConnectAhead) connects ahead of its turn, and the
// bucket's next dials when that one is granted, so that the first turns'
// IDENTIFYs do not wait behind every shard's handshake.
//
// # Supervision
//
// disgo-level faults are the shards' own: they resume after op 7, a
// resumable close, a dropped connection or a zombie connection, and
// identify anew after op 9 (d=false). A close that cannot be retried
// (4004, 4010–4014) makes Run return a *shardgroup.CloseError naming the
// cause, never a restart loop.
//
// User code follows one rule, at start-up and on every restart: a Bot
// factory or Setup that panics (a *PanicError with the stack), returns a
// nil Bot or an error, or a cluster not ready within ClusterTimeout (Setup
// included; on by default, derived from the cluster's place in the
// identify queue), is restarted after a back-off that doubles, with
// jitter, at most MaxRestarts times per RestartWindow, then reported
// failed while the other clusters serve. Only an error wrapping ErrFatal
// stops the whole fleet; when every cluster has failed, Run returns why.
// A failed soft restart leaves the old instance serving.
//
// # Operations
//
// The operations have one set of names, the Fleet interface: SoftRestart,
// Restart and ShutdownCluster for a cluster, SoftRestartAll and
// RestartAll for every cluster, Reshard, Shutdown, and SoftRestartService,
// RestartService and ShutdownService (and their All forms) for services.
// *Runtime performs them; *Client, made with NewClient on the runtime's
// bus, asks for them from a service or a cluster (and later from another
// process); package metrics serves them over HTTP under the same names.
//
// Cluster operations and Reshard run one at a time: each waits for the
// one under way only until its ctx ends, does nothing if its ctx has
// ended, and returns ErrNotRunning before Run. The long ones (a reshard,
// a rolling restart) also have a Start form that returns an Operation at
// once; it runs on the runtime's own context, to poll with Operation or
// wait for with WaitOperation. A reshard to the current counts changes
// nothing; one that cannot work returns ErrCannotReshard before anything
// starts.
//
// Everything that crosses the bus (Stats, Workers, Operation, the
// services' Info) survives the codec: Config.StrictBus round-trips every
// value through JSON, as a process boundary would, and a Client's errors
// match the runtime's and the services' sentinels with errors.Is.
//
// # Stopping
//
// Shutdown, or the end of Run's ctx, stops everything within
// ShutdownTimeout: Setups and operations under way are cancelled, Shutdown
// hooks run, shards close (with a resumable code and their sessions saved,
// with a SessionStore) and what did not stop in time (a hook or Setup
// ignoring its ctx, a shard whose connection hangs) is named in the error.
//
// # Stored sessions
//
// A stored session is resumed only if it is fresh, of this shard count,
// not saved in the future, and resumes on the gateway's own host: a RESUME
// carries the token. FileSessionStore refuses a file other users can
// write. What is refused is summed up in one warning per start.
//
// # REST
//
// Every cluster's REST client shares one restproxy.Limiter, so the fleet
// together respects each bucket and the global limit.
//
// # Process mode
//
// With Config.Processes set (natsfleet.Processes), each cluster runs in a
// child process of the same executable: the program's main is unchanged,
// Run in the parent plans the fleet, runs the services and the admiral,
// and supervises one child per cluster; Run in a child serves that
// cluster only, as a Member of the parent's fleet. A child that crashes,
// panics or is killed costs its cluster only: the parent starts a new
// child at once if the old one had been ready (the back-off spaces only
// failures before a ready; every restart counts against MaxRestarts),
// and its shards resume the checkpointed sessions. SoftRestart starts a
// new child (the executable on disk now), waits until it is set up, then
// the old child closes its shards resumably and hands their exact
// sessions over. Restart, ShutdownCluster and the rolling restarts act
// on the children. Reshard starts the new plan's children beside the old
// ones; they identify but deliver nothing until all are ready, then they
// deliver, the old children deliver what they had received and stop, and
// only the new shard count's sessions are kept. None is lost; the events
// both generations received at the switch are delivered twice, where in
// one process the cut-over delivers each once (see Processes). At Run,
// the parent may open the shards' sessions itself while the children
// start, and hand them over (natsfleet's warm start): the fleet is then
// ready one identify schedule after Run, the children's start hidden in
// it.
//
// # Snapshots
//
// Clusters and Stats describe the fleet at one moment, as values the
// caller owns: Clusters cheaply (states, latencies, cache sizes), Stats
// with counts that walk the caches. Workers lists clusters and services.
//
// # Events and logs
//
// Lifecycle events reach Subscribe callbacks as typed values, one type
// per kind (ShardReady, ClusterRestarted, StartupProgress...; the services
// package's for services), and Config.Logger as one record each with an
// event attribute and the event's fields (LogValue), filtered by
// Config.WhatToLog; warnings and errors are always logged. Each duration
// means one thing, named by its field: Took, Pause, Elapsed, Backoff.
//
// While the first generation starts, a StartupProgress event per identify
// window (at least every 10 s) tells shards ready of total, the identify
// window reached of those needed, the time elapsed, an ETA from the
// identify queue's rule (ceil(shards left / max_concurrency) windows) and
// the shards that are late; a last one comes at fleet-ready. The
// per-shard events (ShardIdentify, ShardReady) are logged at Debug.
// Runtime.Startup and Stats.Startup answer the same at any time.
//
// Observe sets the Observer, told of the hot paths (every dispatch, bus
// request and REST request) for metrics; package metrics does it in
// metrics.Register. The token is a Token, which never prints.
package runtime
