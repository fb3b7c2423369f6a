package natsfleet

import (
	"context"
	"errors"

	"github.com/gofleet/fleet/runtime"
	"github.com/gofleet/fleet/shardgroup"
)

// asMember makes cfg serve the child's cluster as a member of the
// parent's fleet, resuming what resume returns.
func asMember(cfg *runtime.Config, spec childSpec, resume func(context.Context, int) (map[int]shardgroup.Session, error)) error {
	_, _, _ = cfg, spec, resume
	return errors.New("natsfleet: process mode's children need runtime.Member, which this build of the runtime lacks")
}
