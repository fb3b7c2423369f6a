package bus

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"
)

// Address names a place on the bus: the admiral, one cluster, one service,
// or a group of them. Concrete addresses are built with [Cluster] and
// [Service], or are [Admiral]; groups are [AllClusters], [AllServices] and
// [Everyone].
type Address string

// The fixed addresses.
const (
	// Admiral is the fleet's controller (eris-fleet's "master").
	Admiral Address = "admiral"
	// AllClusters is the group of every registered cluster address.
	AllClusters Address = "cluster/*"
	// AllServices is the group of every registered service address.
	AllServices Address = "service/*"
	// Everyone is the group of every registered address.
	Everyone Address = "*"
)

const (
	clusterPrefix = "cluster/"
	servicePrefix = "service/"
)

// Cluster returns the address of cluster id: "cluster/<id>". It does not
// allocate for ids below 256.
func Cluster(id int) Address {
	if id >= 0 && id < len(clusterAddrs) {
		return clusterAddrs[id]
	}
	return Address(clusterPrefix + strconv.Itoa(id))
}

var clusterAddrs = func() (a [256]Address) {
	for i := range a {
		a[i] = Address(clusterPrefix + strconv.Itoa(i))
	}
	return a
}()

// Service returns the address of the service called name: "service/<name>".
func Service(name string) Address {
	return Address(servicePrefix + name)
}

// String returns the address as a string.
func (a Address) String() string { return string(a) }

// IsGroup reports whether a is one of the groups [AllClusters],
// [AllServices] or [Everyone].
func (a Address) IsGroup() bool {
	return a == Everyone || a == AllClusters || a == AllServices
}

// ClusterID returns the id of a cluster address, and false for any other address.
func (a Address) ClusterID() (int, bool) {
	s, ok := strings.CutPrefix(string(a), clusterPrefix)
	if !ok {
		return 0, false
	}
	id, err := strconv.Atoi(s)
	if err != nil || id < 0 || strconv.Itoa(id) != s {
		return 0, false
	}
	return id, true
}

// ServiceName returns the name of a service address, and false for any other address.
func (a Address) ServiceName() (string, bool) {
	s, ok := strings.CutPrefix(string(a), servicePrefix)
	if !ok || s == "" || strings.Contains(s, "*") {
		return "", false
	}
	return s, true
}

// Contains reports whether the concrete address x is in a: for a group,
// whether x is one of its members; for a concrete address, whether x is a.
func (a Address) Contains(x Address) bool {
	if x.IsGroup() {
		return false
	}
	switch a {
	case Everyone:
		return x.valid() == nil
	case AllClusters:
		_, ok := x.ClusterID()
		return ok
	case AllServices:
		_, ok := x.ServiceName()
		return ok
	default:
		return a == x
	}
}

// valid reports why a cannot be registered, or nil.
func (a Address) valid() error {
	if a == Admiral {
		return nil
	}
	if _, ok := a.ClusterID(); ok {
		return nil
	}
	if _, ok := a.ServiceName(); ok {
		return nil
	}
	if a.IsGroup() {
		return fmt.Errorf("bus: %q is a group: register a concrete address (Admiral, Cluster(id) or Service(name))", string(a))
	}
	return fmt.Errorf("bus: %q is not an address: use Admiral, Cluster(id) with id >= 0, or Service(name) with a non-empty name", string(a))
}

// compareAddress orders addresses: the admiral, then clusters by id, then services by name.
func compareAddress(a, b Address) int {
	ka, kb := addressKind(a), addressKind(b)
	if ka != kb {
		return cmp.Compare(ka, kb)
	}
	if ka == 1 {
		ia, _ := a.ClusterID()
		ib, _ := b.ClusterID()
		return cmp.Compare(ia, ib)
	}
	return strings.Compare(string(a), string(b))
}

func addressKind(a Address) int {
	switch {
	case a == Admiral:
		return 0
	case strings.HasPrefix(string(a), clusterPrefix):
		return 1
	case strings.HasPrefix(string(a), servicePrefix):
		return 2
	default:
		return 3
	}
}
