package natsfleet

import (
	"slices"
	"sort"
)

// hostInfo is what the assignment needs to know of a live host.
type hostInfo struct {
	ID       string
	Weight   int
	Static   []int // the clusters it asks for; empty: it takes a share of the rest
	Draining bool  // it gives its clusters away and takes none
}

// assign maps every cluster 0..clusters-1 to a host, or leaves it out when
// no host can take it. A cluster a live host asks for statically goes to
// it (to the lowest host ID when several ask); the others are spread over
// the hosts without static clusters in proportion to their weights. A
// cluster stays where prev put it as long as that host is live and within
// its share, so that hosts coming and going move as few clusters as
// possible. Draining hosts get nothing.
func assign(clusters int, hosts []hostInfo, prev map[int]string) map[int]string {
	hosts = slices.Clone(hosts)
	slices.SortFunc(hosts, func(a, b hostInfo) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	out := make(map[int]string, clusters)
	var balanced []hostInfo
	for _, h := range hosts {
		if h.Draining {
			continue
		}
		if len(h.Static) == 0 {
			balanced = append(balanced, h)
			continue
		}
		for _, c := range h.Static {
			if c >= 0 && c < clusters {
				if _, taken := out[c]; !taken {
					out[c] = h.ID
				}
			}
		}
	}
	var rest []int
	for c := range clusters {
		if _, ok := out[c]; !ok {
			rest = append(rest, c)
		}
	}
	if len(balanced) == 0 || len(rest) == 0 {
		return out
	}
	quota := shares(len(rest), balanced)
	// Keep what stays within its host's share.
	var moving []int
	for _, c := range rest {
		if h, ok := prev[c]; ok && quota[h] > 0 {
			out[c] = h
			quota[h]--
			continue
		}
		moving = append(moving, c)
	}
	for _, c := range moving {
		for _, h := range balanced {
			if quota[h.ID] > 0 {
				out[c] = h.ID
				quota[h.ID]--
				break
			}
		}
	}
	return out
}

// shares splits n clusters over hosts in proportion to their weights
// (largest remainders first, then host order).
func shares(n int, hosts []hostInfo) map[string]int {
	total := 0
	for _, h := range hosts {
		total += max(h.Weight, 1)
	}
	out := make(map[string]int, len(hosts))
	type rem struct {
		i int
		r int
	}
	rems := make([]rem, len(hosts))
	given := 0
	for i, h := range hosts {
		w := max(h.Weight, 1)
		out[h.ID] = n * w / total
		given += out[h.ID]
		rems[i] = rem{i, n * w % total}
	}
	sort.SliceStable(rems, func(a, b int) bool { return rems[a].r > rems[b].r })
	for k := 0; given < n; k++ {
		out[hosts[rems[k%len(rems)].i].ID]++
		given++
	}
	return out
}
