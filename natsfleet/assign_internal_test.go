package natsfleet

import (
	"maps"
	"testing"
)

func counts(a map[int]string) map[string]int {
	out := map[string]int{}
	for _, h := range a {
		out[h]++
	}
	return out
}

func moved(prev, next map[int]string) int {
	n := 0
	for c, h := range next {
		if p, ok := prev[c]; ok && p != h {
			n++
		}
	}
	return n
}

func TestAssignSpreadsByWeight(t *testing.T) {
	t.Parallel()
	got := assign(12, []hostInfo{{ID: "b", Weight: 2}, {ID: "a", Weight: 1}, {ID: "c", Weight: 1}}, nil)
	if len(got) != 12 {
		t.Fatalf("%d clusters assigned, want 12: %v", len(got), got)
	}
	if c := counts(got); c["a"] != 3 || c["b"] != 6 || c["c"] != 3 {
		t.Errorf("shares %v, want a:3 b:6 c:3 (weights 1, 2, 1)", c)
	}
	// Remainders go somewhere: 7 over three equal hosts.
	if c := counts(assign(7, []hostInfo{{ID: "a"}, {ID: "b"}, {ID: "c"}}, nil)); c["a"]+c["b"]+c["c"] != 7 || c["a"] < 2 || c["b"] < 2 || c["c"] < 2 {
		t.Errorf("7 clusters over 3 hosts: %v", c)
	}
}

func TestAssignMovesFewWhenHostsComeAndGo(t *testing.T) {
	t.Parallel()
	two := assign(8, []hostInfo{{ID: "a"}, {ID: "b"}}, nil)
	three := assign(8, []hostInfo{{ID: "a"}, {ID: "b"}, {ID: "c"}}, two)
	if c := counts(three); c["c"] < 2 || c["a"] > 3 || c["b"] > 3 {
		t.Errorf("after c joined: %v, want 3/3/2 in some order", c)
	}
	// Only the clusters c takes move.
	if m := moved(two, three); m != counts(three)["c"] {
		t.Errorf("%d clusters moved when c joined and took %d", m, counts(three)["c"])
	}
	// b leaves: only b's clusters move.
	after := assign(8, []hostInfo{{ID: "a"}, {ID: "c"}}, three)
	for cl, h := range three {
		if h != "b" && after[cl] != h {
			t.Errorf("cluster %d moved from %s to %s though %s stayed", cl, h, after[cl], h)
		}
	}
	if c := counts(after); c["a"] != 4 || c["c"] != 4 {
		t.Errorf("after b left: %v, want 4/4", c)
	}
	// Same hosts: nothing moves.
	if again := assign(8, []hostInfo{{ID: "a"}, {ID: "c"}}, after); !maps.Equal(again, after) {
		t.Errorf("same hosts, new assignment %v, was %v", again, after)
	}
}

func TestAssignStaticAndDraining(t *testing.T) {
	t.Parallel()
	got := assign(6, []hostInfo{{ID: "s", Static: []int{0, 5, 9}}, {ID: "t", Static: []int{5}}, {ID: "a"}, {ID: "d", Draining: true}}, map[int]string{1: "d"})
	if got[0] != "s" || got[5] != "s" {
		t.Errorf("static clusters 0 and 5 on %q and %q, want s (the lowest ID of those asking)", got[0], got[5])
	}
	for _, c := range []int{1, 2, 3, 4} {
		if got[c] != "a" {
			t.Errorf("cluster %d on %q, want a, the only balanced host (d drains)", c, got[c])
		}
	}
	if _, ok := got[9]; ok {
		t.Error("cluster 9 does not exist but was assigned")
	}
	if none := assign(3, []hostInfo{{ID: "d", Draining: true}}, nil); len(none) != 0 {
		t.Errorf("only a draining host: %v, want nothing assigned", none)
	}
}
