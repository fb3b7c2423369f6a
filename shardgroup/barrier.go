package shardgroup

import "context"

// Barrier returns once every shard of the group has handed its
// listeners (or held, in standby) every event the gateway had sent it
// when the call began: it sends each shard a heartbeat and waits for the
// ACK, which the gateway sends after what it queued before. A stopped
// shard is done; a shard that is not connected is waited for until it is
// ready again or ctx ends.
func (r *Runner) Barrier(ctx context.Context) error {
	shards := make([]*shard, 0, len(r.g.shards))
	for _, s := range r.g.shards {
		shards = append(shards, s)
	}
	return barriers(ctx, nil, shards)
}
