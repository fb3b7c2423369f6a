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
// # Plan
//
// Run asks GET /gateway/bot for the recommended shard count (Config.Shards
// 0), max_concurrency and the session start limit, checks that enough
// starts remain, and splits the shards (or the slice
// FirstShardID..LastShardID of TotalShards) into Config.Clusters
// contiguous ranges. Each cluster is a shardgroup.Group: one disgo client
// and its shards. The user's Bot.Setup runs on the group before its shards
// connect, so listeners see READY.
//
// # Start-up at Discord's limit
//
// One IdentifyQueue serves every cluster: IDENTIFYs go out by bucket
// (shard_id % max_concurrency), one per bucket per IdentifyInterval, every
// bucket at once. A bucket is released when its IDENTIFY's READY arrives,
// so no network delay can make two IDENTIFYs of a bucket reach Discord
// closer than the interval; the fleet is ready in about ceil(shards /
// max_concurrency) intervals.
//
// # Supervision
//
// disgo-level faults are the shards' own: they resume after op 7, a
// resumable close, a dropped connection or a zombie connection, and
// identify anew after op 9 (d=false). A close that cannot be retried
// (4004, 4010–4014) makes Run return a *shardgroup.CloseError naming the
// cause, never a restart loop. A cluster that is not ready within
// ClusterTimeout is restarted with exponential back-off, at most
// MaxRestarts times per RestartWindow, then reported failed while the
// other clusters serve.
//
// # REST
//
// Every cluster's REST client shares one restproxy.Limiter, so the fleet
// together respects each bucket and the global limit.
//
// # Events and logs
//
// Lifecycle events (EventKind) reach Subscribe callbacks as typed values
// and Config.Logger as records with event, cluster and shard attributes,
// filtered by Config.WhatToLog; warnings and errors are always logged. The
// token is a Token, which never prints.
package runtime
