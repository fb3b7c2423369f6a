package natsfleet

import "testing"

// A plan revision's lease keys read back to the revision and cluster that
// made them; the first plan keeps the keys it had before any reshard.
func TestPlanLeaseKeysRoundTrip(t *testing.T) {
	cases := []struct {
		rev, cluster int
		key          string
		readRev      int
	}{
		{0, 3, "lease.3", 1},
		{1, 3, "lease.3", 1},
		{2, 0, "lease.r2.0", 2},
		{17, 12, "lease.r17.12", 17},
	}
	for _, tc := range cases {
		if got := planLeaseKey(tc.rev, tc.cluster); got != tc.key {
			t.Errorf("planLeaseKey(%d, %d) = %q, want %q", tc.rev, tc.cluster, got, tc.key)
		}
		rev, c, ok := parseLeaseKey(tc.key)
		if !ok || rev != tc.readRev || c != tc.cluster {
			t.Errorf("parseLeaseKey(%q) = %d, %d, %v; want %d, %d, true", tc.key, rev, c, ok, tc.readRev, tc.cluster)
		}
	}
	for _, bad := range []string{"leader", "lease.", "lease.x2.0", "lease.r2.", "lease.rx.1", "host.a"} {
		if _, _, ok := parseLeaseKey(bad); ok {
			t.Errorf("parseLeaseKey(%q) accepted", bad)
		}
	}
}
