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
// # Owner and user code
//
// [New] returns a [Runner]: the group's lifecycle (Start, Stop, Done,
// and the reshard's Record, EndRecording and [CutOver]), for whoever
// built the group. The group's user code gets [Runner.Group], a [*Group]
// that reads only: the cluster's ID, its shards and their states, its
// disgo client, a bus client that can call but not close the bus, and
// its logger. Nothing on it starts, stops or waits for the group, so a
// listener cannot stop its own shard or wait for itself: the disgo
// client's ShardManager.Close, CloseShard, Gateway.Close and
// CloseWithCode (and so Client.Close) stop no shard; they log a warning.
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
// its stack and counted (Group.ListenerPanics); the shard goes on.
//
// # The event path
//
// Each shard reads its connection on one goroutine. With transport
// compression (Config.Compression: zstd-stream by default, zlib-stream or
// none) the connection is one compressed stream read through one
// decompression context, kept for the connection's life and reset for the
// next. The payload's envelope (op, s, t) is read in one pass and d is
// decoded once, by its type; gateway.Message.RawD is d's text, sharing the
// read buffer until the next frame. A MESSAGE_CREATE or MESSAGE_UPDATE of
// the usual shape (a user's message without components, embeds,
// attachments or references) is read into disgo's Message in that same
// pass; any other shape goes to the general decoder, with the same
// result.
//
// disgo's MESSAGE_CREATE handler makes three events of each message
// (MessageCreate, and GuildMessageCreate or DMMessageCreate); the group's
// own handler updates the caches the same way but builds only the events
// some listener may take: listeners made with bot.NewListenerFunc or
// bot.NewListenerChan take their type parameter's events, a
// ListenerAdapter those it has functions for, any other listener every
// event. A reshard's new generation builds them all, for the listeners
// there will be at the cut-over. A client built with other gateway
// handlers keeps them.
//
// disgo decodes JSON through github.com/disgoorg/json, whose Unmarshal is
// a variable: importing shardgroup sets it to github.com/goccy/go-json
// (pure Go, same results as encoding/json on the fleet's corpus of
// dispatches, a fraction of its CPU). The setting is process-wide and
// happens at init, before any goroutine; a program that wants
// encoding/json back sets it in main before starting anything.
//
// # Listeners
//
// The group gives its disgo client an event manager of its own. Each shard
// handles its events on its own goroutine, in order: disgo's handlers
// update the caches, then the listeners run, each under its own recover,
// so a panicking listener does not keep the ones after it from the event.
// No lock is shared between shards, so a listener that blocks on one shard
// delays no other shard. disgo's async events option is not used.
//
// # Reshard
//
// A group built with a Generation ahead of its Gate is a reshard's new
// generation: it fills its caches and holds back its events (at most
// MaxHeld per shard) while the old generation, on whose runners Record
// was called, goes on delivering. CutOver then hands each guild over so that every
// event reaches listeners once.
package shardgroup
