// Package multihost runs a fleet's hosts as separate processes against
// discordtest and a NATS cluster, and counts what their user code saw:
// the failover bench scenario, the multihost example and natsfleet's
// fault tests share it.
//
// The pieces:
//   - [Nodes]: the NATS cluster, its nodes in one process of their own.
//   - [Proc]: a host process (the caller's own binary run again), its
//     stdout read line by line, commands sent on its stdin, stopped by
//     closing stdin or killed with SIGKILL; [Children] lists this
//     process's live children, so a test can check none is left behind.
//   - [Sender]: MESSAGE_CREATEs at a given rate, each with its own message
//     ID, remembered so that a phase's events can be counted.
//   - [Reporter] (in a host) publishes each message its listeners saw
//     over NATS; [Tally] (in the parent) counts them: lost, seen twice,
//     and delivered by a host that no longer held the lease of the
//     shard's cluster (watched in the fleet's hosts bucket), with the
//     simulator's own view of two live sessions for one shard.
package multihost
