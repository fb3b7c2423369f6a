// Package discordtest is a Discord gateway and REST API on a loopback port,
// for testing bots and sharding code without a token or a network, as
// net/http/httptest is for HTTP.
//
// It enforces the platform's rules and counts every break, so a test can
// assert "no identify-limit violation, no 429, no lost event":
//
//	s := discordtest.NewServer(discordtest.WithGuilds(100), discordtest.WithMaxConcurrency(16),
//		discordtest.WithIdentifyWindow(50*time.Millisecond))
//	defer s.Close()
//	// point disgo at s.GatewayURL() and s.RESTURL() with s.Token()
//
// # Gateway
//
// API v10 with JSON encoding. HELLO carries the heartbeat interval; each
// heartbeat is acknowledged; a connection that stops heartbeating for an
// interval plus a grace is closed with 4000 and its session stays
// resumable. IDENTIFY is checked for the token (4004), the shard (4010),
// the guilds per shard (4011), invalid (4013) and unapproved privileged
// intents (4014); a second IDENTIFY gets 4005, a payload before IDENTIFY
// 4003, an unknown opcode 4001, an undecodable or over-4096-byte payload
// 4002, and more than 120 commands a minute 4008.
//
// IDENTIFYs share max_concurrency buckets (shard_id % max_concurrency); an
// IDENTIFY that comes within the identify window of its bucket's previous
// one is answered with op 9 (d=false) and counted as an identify_concurrency
// violation. session_start_limit is spent per IDENTIFY; when it runs out,
// every session ends and the token is reset, as Discord does.
//
// READY lists the shard's guilds as unavailable, then one GUILD_CREATE per
// guild follows. Guild i has ID (2^30+i)<<22, so (id >> 22) % shards
// spreads guilds evenly; GuildID(i) returns it. Stats.ReadySessions counts
// the sessions whose READY and GUILD_CREATEs have all been written, the
// condition to wait for before a measurement.
//
// # Payloads and the world
//
// Every payload carries the fields Discord's API reference lists as
// always present, nullable ones as null (TestPayloadShapes holds them
// against the reference's field tables). Role 0 is @everyone, which may
// read, write and react; role 1 is the bot's, the highest, with
// moderation rights; the other members have the lowest role and member 1
// owns the guild. Permissions are computed from roles and channel
// overwrites as Discord does (Permissions), and SetRolePermissions and
// SetChannelOverwrites change them. Messages get snowflakes minted when
// they are sent, with a matching timestamp; a nonce is echoed as sent.
// SetGuildAvailable starts and ends a guild outage (GUILD_DELETE with
// unavailable, then GUILD_CREATE). GuildMemberAdd, GuildMemberUpdate,
// GuildMemberRemove, GuildDelete, MessageDelete and InteractionCreate
// build event payloads for Dispatch.
//
// Every session numbers its dispatches and keeps the last ones (see
// WithReplayBuffer) for RESUME, which replays what the client missed, in
// order, then sends RESUMED. A RESUME of an unknown, ended or expired
// session, or from an impossible sequence, gets op 9 (d=false). A client
// close with 1000 or 1001 ends the session; any other close or a dropped
// connection leaves it resumable for the resume window. Transport
// compression (?compress=zlib-stream or zstd-stream, one context per
// connection; any other value is refused with 4002, and WithCompressions
// narrows the list) and IDENTIFY's compress flag (frames over 1 KiB are
// zlib-compressed) are honoured.
//
// # Faults and load
//
// CloseShard, DropShard, Reconnect (op 7), InvalidateSession (op 9),
// StopAcks (a zombie connection), RequestHeartbeat (op 1), SetLatency and
// Restart act on one shard or on AllShards. Dispatch sends an event to the
// shard owning a guild, Broadcast to every session, and Load streams many
// pre-encoded events at a target rate.
//
// Dispatches are queued per session, never unboundedly: a producer waits
// while a connected client is a whole replay buffer behind.
//
// # REST
//
// /api/v10 (and v9) serves GET /gateway and /gateway/bot; /users/@me,
// /users/@me/guilds, DELETE /users/@me/guilds/{id}, /users/{id};
// /applications/@me and /oauth2/applications/@me (with owner), global
// and guild application commands; /guilds/{id}, its channels, roles and
// members, member edit, kick and role add and remove; /channels/{id},
// its messages (create, list, fetch, edit, delete, bulk delete),
// reactions and typing; interaction callbacks and the interaction
// webhook (follow-ups, @original). Each write dispatches the event
// Discord would to the shard owning the guild, and is refused with 403
// 50001 or 50013 when the bot lacks the permission; unknown objects get
// Discord's 404 codes (10003, 10004, 10007, 10008, 10013, 10062, ...).
// POST /channels/{id}/messages honours enforce_nonce: the same nonce
// from the same author in the same channel within 5 minutes returns the
// first message. The last 10,000 messages sent through REST are kept.
//
// Requests are limited per route and major parameter (channel, guild,
// webhook) with Discord's X-RateLimit-* headers, and by a global limit
// that interaction callbacks and webhooks are exempt from; 429s carry
// retry_after, Retry-After and a scope. 401, 403 and non-shared 429
// answers count as invalid requests; past the limit every request gets a
// Cloudflare-style ban (a 429 without Via). FailNextREST,
// SharedRateLimitNext and SetRESTLatency inject faults.
//
// # Counters
//
// Stats reports connections, IDENTIFYs, RESUMEs, violations by kind,
// events sent per shard and sessions ended by why (SessionsEnded), so a
// test can tell Discord's own losses (an op 9 d=false) from a client's;
// Identifies lists every IDENTIFY with its time and bucket.
//
// A second RESUME of a live session takes it over (the older connection
// is closed with 4000) and the session goes on; the close of a connection
// the session has left does not end it. A failed RESUME (op 9 d=false)
// ends the session it named.
//
// # Locks
//
// Server.mu is taken before a session's mu, never the other way round.
// The REST state's lock is never held together with Server.mu, and the
// world's lock (permissions, outages, messages) is never held with any
// other.
package discordtest
