// Package admin serves a fleet's status page: every shard at a glance,
// grouped by cluster, the clusters' and services' state, the fleet's
// totals, and a box that tells a user which shard serves their server.
//
// # Mounting
//
// StatusPage is a handler of its own, so it can be published without the
// admin operations:
//
//	public := http.NewServeMux()
//	public.Handle("/", admin.StatusPage(rt, admin.PageOptions{Title: "MyBot status"}))
//
// metrics.Handler mounts the same page at /page/ on the private admin
// address, with the operator controls (soft restart, restart, reshard)
// when an admin token is set. A page mounted under a prefix needs the
// prefix stripped (http.StripPrefix) and a URL that ends in a slash: every
// URL of the page is relative to it.
//
// # What it serves
//
//	GET  /              the page; ?guild=<server ID> answers the lookup without JavaScript
//	GET  /status.json   the snapshot the page shows, refreshed at most every PageOptions.MaxAge
//	GET  /assets/...    its stylesheet, script and icon, embedded in the binary
//
// The page works without JavaScript: the server renders the shards, the
// clusters, the services and a table of every shard. With JavaScript it
// polls status.json once a second and updates in place.
//
// status.json carries no memory, REST or bus figures and no IDs but the
// fleet's own shard and cluster numbers: it is meant to be public. Reads
// share one snapshot (runtime.Stats) for PageOptions.MaxAge, so a crowd of
// readers costs the fleet at most one snapshot per MaxAge.
//
// # Operator controls
//
// With PageOptions.Operations set, the page shows buttons that POST to the
// admin operations (see metrics.Handler) with the admin token, which the
// operator types once: the page keeps it in a variable of the script, never
// in a URL, a cookie or the browser's storage, and forgets it on reload, on
// "Forget token", or when the server refuses it. Every operation asks for a
// confirmation first. An operation answered with 200 is shown done when the
// answer comes; one answered with 202 Accepted names an operation URL (the
// Location header, or an "operation" or "url" field in the body, or an "id"
// under operations/) that the page polls once a second with the token until
// its "state" is done or failed, showing its "progress" meanwhile.
//
// # Guild lookup
//
// A server (guild) is on shard (id >> 22) % total_shards, Discord's
// formula. The page accepts a snowflake (digits that fit in 64 bits, with
// a creation time after Discord's epoch) and explains how to copy one
// otherwise.
package admin
