// Package shardgroup runs a cluster: one disgo bot.Client and the gateway
// shards it serves.
//
// The group drives its shards itself rather than through disgo's
// ShardManager: each shard's connection, heartbeat and reconnect loops
// are goroutines the group owns and waits for, so Stop returns only when
// they have ended and nothing outlives the group. The disgo client sees
// the shards through its sharding.ShardManager and gateway.Gateway
// interfaces, so listeners, caches and REST work as in any disgo bot.
//
// # Sessions and hand-over
//
// A shard records its session (ID, last sequence delivered to user code,
// resume URL) as events are delivered. Stop with resumable closes every
// shard with a code that keeps its session and returns the sessions; a
// new group built with Config.Sessions resumes them, so Discord replays
// what arrived in between and no IDENTIFY is spent. The sequence is
// recorded only after an event is delivered and the read loop has ended
// before Stop reads it, so user code sees each event exactly once.
//
// # Faults
//
// op 7 and resumable closes resume; op 9 (d=false) identifies anew; a
// heartbeat that is not acknowledged before the next one is due closes
// the connection and resumes (a zombie connection). The close codes that
// cannot be retried (4004, 4010–4014) stop the shard and are reported
// through Hooks.Fatal as a *CloseError.
//
// A session the gateway has started is never left behind unread: op 7 or
// a stop for a hand-over that comes between an IDENTIFY and its READY
// waits (up to 5 s) for the READY, then resumes or hands over that
// session. A session whose RESUME keeps failing before any event arrives
// (5 attempts in a row, or 30 s: a resume URL that does not answer, a
// RESUME closed with 4002) is dropped, and the shard identifies through
// the queue. Failed dials are logged as warnings with their cause, at most
// once per 30 s per shard.
//
// A panic in event handling or in a listener is recovered, logged with
// its stack and counted (ListenerPanics); the shard goes on.
package shardgroup
