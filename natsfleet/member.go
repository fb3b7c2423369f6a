package natsfleet

import (
	"context"

	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// asMember makes cfg serve the child's cluster as a member of the
// parent's fleet, resuming what resume returns, and checkpointing its
// sessions at the configured interval.
func asMember(cfg *runtime.Config, spec childSpec, resume func(context.Context, int) (map[int]shardgroup.Session, error)) error {
	if spec.Checkpoint > 0 {
		cfg.CheckpointInterval = spec.Checkpoint
	}
	cfg.Member = &runtime.Member{
		Clusters: []runtime.ClusterPlan{{ID: spec.Cluster, Shards: spec.Shards}},
		Resume:   resume,
	}
	return nil
}
