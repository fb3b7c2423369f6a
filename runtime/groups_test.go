package runtime

import "github.com/gofleet/fleet/shardgroup"

// groups returns the clusters' current groups, in cluster order, for
// tests that look at a group itself.
func (r *Runtime) groups() []*shardgroup.Group {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*shardgroup.Group, 0, len(r.clusters))
	for _, c := range r.clusters {
		c.mu.Lock()
		if c.group != nil {
			out = append(out, c.group)
		}
		c.mu.Unlock()
	}
	return out
}
