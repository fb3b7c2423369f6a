// Package natsfleet holds the fleet's NATS-backed implementations: what
// the clusters of a fleet share when they run in several processes or on
// several hosts. A single-process fleet does not link it (the runtime
// package does not import it).
//
// # Connections
//
// [StartServer] embeds a NATS server (127.0.0.1, a free or given port,
// JetStream in a data directory, one generated user) so that one binary
// needs no external service; its [ConnectInfo] is what the fleet's other
// processes need to join (pass it privately: it holds the password).
// [Connect] joins an external NATS with a user and password, a token, an
// nkey or a creds file, over TLS if asked. It fails at once with an error
// naming the URL if no server answers, and saying so if the credentials
// are refused. Everything else takes a *nats.Conn.
//
// With ServerConfig.Cluster, Name, ClusterPort and Routes, embedded
// servers form a NATS cluster routed on loopback (or across hosts), its
// routes authenticated with the same user, and JetStream clustered over
// the nodes; [StartCluster] starts such a cluster in one process. On a
// clustered NATS the fleet's key-value buckets (leases, sessions, the
// identify queue, the store) are kept on three nodes, so the loss of one
// loses no key; a connection given every node's URL, or one that learns
// them from its server, moves to another node with its subscriptions.
//
// # Bus
//
// [NewTransport] carries the bus across processes: a bus.Bus given it as
// its Transport reaches the endpoints of every Bus on the same fleet
// prefix, with the in-memory bus's semantics (deadlines carried, handler
// errors and panics with the bus's sentinels, ErrUnknownAddress at once
// when no process serves an address, Send and Publish returning once the
// remote endpoint queued the message, a window of calls in flight per
// address for back-pressure). A call or reply alone goes out at once from
// the goroutine that makes it; under load, calls to one address, and
// replies to one process, are coalesced into one NATS message while the
// previous one is sent, and the answers to one message of calls go back
// together as the endpoint gives them. [Transport.TakeOver] moves an address from one
// process to another as Bus.Standby and Bus.Replace do within one. The
// bus/bustest conformance suite runs on it.
//
// # Latency
//
// On one machine a request's time is mostly hand-overs between
// goroutines and system calls. The process that embeds the server (in
// process mode, the parent) connects with [Server.ConnectInProcess],
// which skips the loopback socket on its side of the server. `go run
// ./bench -scenario bus-nats` measures this topology between two
// processes, beside bare nats.go on the same connections and on TCP
// ones, and eris-fleet's IPC when node is installed. A process that only
// serves the bus (a process-mode child) answers sooner with GOMAXPROCS 1:
// a request then wakes no second thread; the bench runs its service
// process so.
//
// With TransportConfig.Direct, two processes of one host skip the server
// for their calls: the serving process listens on a loopback TCP port it
// announces with its addresses, and a caller of the same host opens a
// link to it and sends its calls, and gets their answers, there. NATS
// stays the route to other hosts, the fallback while no link is open,
// and the route of discovery and take-overs; [Transport.Stats] counts
// the calls on each route.
//
// # Identify queue
//
// [NewIdentifyQueue] is a runtime.IdentifyQueue for every process of a
// fleet of hosts (process mode's parent serves its children a queue of
// its own: see Process mode): per bucket, a block of tickets, one per shard of the process
// waiting there, taken by one compare-and-set as soon as a shard asks,
// and a turn that comes an interval after the process saw the previous
// ticket's READY (its own, or announced by another process on a plain
// subject, one hop away, and recorded in the key-value bucket), so that one
// IDENTIFY per bucket per interval reaches the gateway fleet-wide, with
// every bucket busy at once and no process meeting the others at a
// window's boundary. It compares no clocks between hosts. A holder that
// goes silent delays its bucket by one interval plus its lease.
//
// # Store and sessions
//
// [NewKVStore] keeps the central store in a JetStream key-value bucket;
// services.NewStoreOn serves it on the bus so that services.StoreGet and
// the other helpers work unchanged, and [KVStore.Update] and
// [KVStore.Increment] change a key without losing a concurrent write.
// [NewKVSessionStore] is a runtime.SessionStore shared by the processes,
// each session written with its owner and time.
//
// # REST limits
//
// [RESTProxy] points every process's disgo REST client at the fleet's
// REST proxy (restproxy's HTTP form, served by one process), whose limiter
// is then the only one: one set of buckets and one global limit for the
// whole fleet.
//
// # Hosts
//
// [Host] runs a fleet over several machines (or processes) that share
// only a NATS cluster. Every host runs the same binary with the same
// fleet name and a [HostConfig]; together they:
//
//   - elect a leader through a lease in the key-value bucket
//     <fleet>_hosts; the first leader makes the fleet's plan once (shard
//     count from GET /gateway/bot or Runtime.Shards, contiguous clusters);
//   - register with a heartbeat; the leader assigns clusters to the live
//     hosts: the ones a host asks for (HostConfig.Clusters), the others
//     spread by weight, moving as few as possible when hosts come and go;
//   - own each cluster by a lease (key lease.<id>; lease.r<revision>.<id>
//     after a reshard) that its owner renews
//     by compare-and-set every RenewInterval. A lease is valid on its
//     owner's clock until LeaseTTL after it sent its last successful
//     renewal; another host takes it only once it has seen the same
//     revision for LeaseTTL + LeaseMargin on its own clock, and only by
//     compare-and-set on that revision. No clocks are compared between
//     hosts, and an owner's validity ends before anyone can take over;
//   - run each owned cluster as a runtime.Runtime with runtime.Member set,
//     on the host's bus (over [NewTransport]) and identify queue
//     ([NewIdentifyQueue], fleet-wide), with a session store that
//     checkpoints to the bucket <fleet>_sessions every
//     Runtime.CheckpointInterval and writes only while the lease is valid,
//     never over a session of a later lease epoch.
//
// Fencing: a host delivers no event of a cluster past its lease's local
// deadline (runtime.Member.Serving) and stops the cluster's shards
// then. A host that dies or is cut off therefore loses its clusters after
// the TTL, and the hosts they are reassigned to RESUME them from the last
// checkpoint: no IDENTIFY while Discord accepts the resume, nothing lost,
// and the events delivered since the checkpoint delivered again. Those
// are bounded by the checkpoint interval, not the TTL: a host whose
// checkpoints of a cluster have failed for an interval (or whose last
// written checkpoint was taken two intervals ago) holds the cluster's
// events, undelivered, until a checkpoint succeeds again while its lease
// is valid, or its lease ends and its shards stop (a held event is then
// never delivered there, and the next owner gets it replayed).
//
// Planned moves hand sessions over exactly: [Host.Drain], a host joining
// (the leader rebalances) or Run ending close the old owner's shards
// resumably, save their exact sessions, release the lease, and the new
// owner resumes them: nothing lost, nothing repeated, no IDENTIFY. When
// the lease lapsed on the way (renewals too slow) or the final write
// failed, the old owner reclaims its lease by compare-and-set on its own
// last revision, which fails only if another host took it meanwhile, and
// writes the sessions then; a hand-over that still cannot be made exact is
// logged as an error and returned by [Host.Drain].
//
// The central store: every host serves services.StoreName to its own
// clusters from the fleet's store bucket ([Host.Store]), so cluster code
// on any host reads and writes the same data with services.StoreGet,
// StoreSet and StoreIncrement on its bus, and increments from several
// hosts at once lose no update.
//
// [Host.SoftRestart] and [Host.Restart] act on any cluster of the fleet
// from any host (the owner carries them out, asked over the bus);
// [Host.Status] and [Host.Handler] (/status, /healthz) describe the whole
// fleet: hosts, their clusters, leases and the age of each cluster's last
// checkpoint. REST calls go through the fleet's REST proxy when one is
// given or published ([PublishRESTProxy]); [Host.Store] is the central
// store, which cluster code reaches through the bus on every host.
//
// # Resharding hosts
//
// [Host.Reshard] changes the fleet's shard count from any host; the
// leader carries it out through the key reshard of the hosts bucket, so
// that a leader that dies is replaced by one that goes on from where it
// was:
//
//   - the leader plans the new clusters as it planned the first ones (the
//     current max_concurrency and gateway; Runtime.Clusters or
//     ShardsPerCluster) under the next plan revision, and assigns them to
//     the live hosts as it assigns clusters (static, then by weight);
//   - each host takes the new clusters assigned to it under leases of the
//     new revision (lease.r<revision>.<id>) and runs them beside its old
//     ones: they IDENTIFY through the fleet's identify queue, deliver
//     nothing (runtime.Member.Delivering) and keep no session. A host that
//     dies meanwhile loses them after the lease TTL, and the hosts they
//     are reassigned to IDENTIFY them again;
//   - once every new cluster is READY on the host holding its lease, the
//     leader opens their delivery; old and new clusters now both deliver;
//   - once every host reports its new clusters delivering, and every old
//     cluster has a ready owner (one taken over from a dead host has
//     resumed, so Discord has replayed what it missed), the leader makes
//     the new plan current. Each host stops its old clusters (their
//     sessions are not resumed under the new count) and releases their
//     leases; the new ones checkpoint, under fencing, to the bucket
//     <fleet>_sessions_r<revision>.
//
// The fleet never has no plan delivering, and two only between the
// opening of the new clusters and the moment each host learns of the
// switch: the events of that window are delivered twice, none is lost.
// If Reshard's ctx ends before the switch (or, without a deadline, after
// [DefaultReshardTimeout]) the reshard is aborted: the new clusters stop
// and release their leases, the old plan goes on. A second Reshard while
// one runs, and [Host.Drain] during one, return an error wrapping
// [ErrReshardInProgress]. [Host.Status] shows the plan revision and the
// last reshard (its phase and, by new cluster, where it runs and whether
// it is ready and delivering); /healthz names both.
//
// # Process mode
//
// [Processes] is runtime.Config.Processes: the parent embeds the server
// (loopback, generated credentials), moves its bus onto it, and serves the
// fleet's REST limiter to the children as a proxy on loopback behind a
// generated secret. Each child is the program itself (os.Executable, run
// again with the same arguments), in a process group of its own, with
// [ChildEnv] in its environment carrying the server's address and
// credentials (never on the command line, which ps shows), GOMAXPROCS and
// GOMEMLIMIT if configured. It joins the fleet's bus, identify queue and
// session store, reports its lifecycle events to the parent, checkpoints
// its sessions every ProcessConfig.CheckpointInterval, and answers the
// parent's hand-over and stop requests. Its stdin is a pipe from the
// parent: when it closes (the parent has exited, however), the child
// closes its shards resumably, saves their sessions if the parent's store
// still answers, and exits within two seconds. [ProcessMode.Sessions]
// lists what is stored.
//
// The parent is the admiral, so it serves the fleet's identify queue
// itself: one runtime.LocalIdentifyQueue (the fleet's max_concurrency and
// IdentifyInterval, the interval counting from each READY), which the warm
// start's shards use directly and the children over NATS request/reply on
// <prefix>.proc.identify, where [NewIdentifyQueue]'s JetStream tickets
// would cost compare-and-sets on every turn (hosts keep those). A child
// asks for a shard's turn; the parent waits for it on the child's behalf
// and answers, or answers "not yet" after a bounded wait and the child asks
// again. The turn stays taken until the child says the READY came or it
// gave up (whether or not the grant reached it: a late grant is released
// too), until the child's process exits, or for
// ProcessConfig.IdentifyLease (10 s) at the latest, so a lost message or a
// child killed with SIGKILL holds a bucket no longer than that. A child
// whose connection to the parent is lost gets an error from the wait, and
// its shard retries.
//
// A reshard (runtime.Runtime.Reshard) starts one child per cluster of the
// new plan in standby: its shards identify at the new shard count
// through the fleet's identify queue while the old children deliver, but
// it delivers no event (its caches take them), leaves its cluster's bus
// address to the old child and saves no session (the old children's
// checkpoints, under the same shard IDs, stay theirs). Once every new
// shard is ready, the old children catch up with the gateway
// (runtime.Runtime.Sync, a heartbeat whose ACK follows what was queued
// before it), the new children deliver and take their addresses over,
// the old children deliver what the gateway sent them until then, nothing
// more, and stop, ending their sessions, and the sessions of the old
// shard count are removed from the store. Nothing is lost; an event that
// both generations received in that last moment is delivered twice. A new child that exits before the switch, or the
// reshard's ctx ending, stops the new children and leaves the old ones
// serving.
//
// # Warm start
//
// A child must exec, join the parent and run its Setup before any of its
// shards can identify, and every bucket's chain of IDENTIFYs would start
// only then. With the warm start (the default), at Run the parent opens the
// sessions itself while the children start: for each planned shard without a stored session worth
// resuming, a shard of a group that runs no user code and delivers
// nothing identifies through the fleet's identify queue and closes
// resumably as soon as its READY arrives (shardgroup.Config.StopAtReady).
// Each child asks the parent for its shards' sessions
// (runtime.Member.Await) and RESUMEs each as it opens; its client first
// gets the READY the parent read (self user, guilds), then Discord replays
// what came after it (the GUILD_CREATEs, every event since): a bot sees a
// READY, its guilds as GuildReady, then a RESUMED, and nothing is lost or
// delivered twice. A session is handed once, to the first child that asks
// for it, and saved to the fleet's session store as it is, so that a child
// that dies before its first checkpoint is replaced by one that resumes
// it; a shard the parent could not open in time (an identify schedule
// plus 30 s) is identified by its child. A Shutdown during the warm start
// closes the sessions not handed yet resumably and saves them with the
// others. The price is that the parent holds the shards' connections
// while they wait for their turns (one identify schedule for the last
// ones). ProcessConfig.ColdStart turns it off: each child then
// identifies its own shards once it has started (measured on 2 cores
// shared with other work, 256 shards in 4 children, alternately: 0.9-0.98
// of the physical identify limit with the warm start, 0.7-0.84 with
// ColdStart; both lower on a busier machine).
// Restarts after the start (a crash, a soft restart) are unchanged.
//
// # Observing the children
//
// The parent is the one place to look. A child's slog records go to the
// parent's Config.Logger with "cluster" and "pid" attributes ([LogHandler]
// in the child, sending without ever blocking a shard, and [ReceiveLogs]
// in the parent). metrics.Register on the parent registers
// [ProcessMode.Collector], a [ProcessCollector] that gathers over NATS, at
// each scrape, what only a child counts (its gateway events by shard, its
// bus requests, its Go runtime and process figures; [ServeMetrics] in the
// child) with "cluster" and "pid" labels: the children are gathered, not
// scraped, so no port per child and nothing to discover. Shard states,
// latencies, caches, IDENTIFYs and resumes reach the parent's own
// collectors through the children's events and reports: each child
// reports its cluster every ProcessConfig.StatsInterval and whenever a
// shard changes state, and the parent's Stats and Clusters show it with
// runtime.ProcessStats (pid, RSS from /proc/<pid>/status, [ReadRSS]).
// A child whose RSS stays above ProcessConfig.MaxRSS for MaxRSSFor
// ([MemoryGuard]) is killed and restarted like a crash, with a
// [*MemoryLimitError] in the ClusterRestarted event.
//
// # Faults
//
// A message larger than the server's max payload fails with a
// [*PayloadError] naming the limit. When the connection drops, every call
// in flight fails with [ErrConnectionLost] (it may or may not have been
// handled); the connection rejoins by itself with its subscriptions.
package natsfleet
