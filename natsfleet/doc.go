// Package natsfleet holds the fleet's NATS-backed implementations: what
// the clusters of a fleet share when they run in several processes or on
// several hosts. A single-process fleet does not link it.
//
// # Connections
//
// [StartServer] embeds a NATS server (loopback, JetStream, generated
// credentials) so that one binary needs no external service; [Connect]
// joins an external NATS with credentials. Everything else takes a
// *nats.Conn.
//
// # Bus
//
// [NewTransport] carries the bus across processes: a bus.Bus given it as
// its Transport reaches the endpoints of every Bus on the same fleet
// prefix.
package natsfleet
