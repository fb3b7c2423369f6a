package restproxy_test

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/disgoorg/disgo/rest"

	"github.com/gofleet/fleet/restproxy"
)

// BenchmarkWaitUnlock is the limiter's cost per request when no limit is
// in the way: WaitBucket, then UnlockBucket with Discord's headers.
func BenchmarkWaitUnlock(b *testing.B) {
	l := newLimiter(b, restproxy.Config{GlobalLimit: 1 << 20})
	eps := make([]*rest.CompiledEndpoint, 64)
	for i := range eps {
		eps[i] = rest.CreateMessage.Compile(nil, 1_000_000+i)
	}
	h := http.Header{}
	h.Set("Via", "1.1 google")
	h.Set("X-RateLimit-Limit", "1000000000")
	h.Set("X-RateLimit-Remaining", "999999999")
	h.Set("X-RateLimit-Reset-After", "3600.000")
	h.Set("X-RateLimit-Reset", strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10))
	h.Set("X-RateLimit-Bucket", "bench")
	rs := &http.Response{StatusCode: http.StatusOK, Header: h}
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for i := 0; pb.Next(); i++ {
			ep := eps[i%len(eps)]
			if err := l.WaitBucket(ctx, ep); err != nil {
				b.Fatal(err)
			}
			_ = l.UnlockBucket(ep, rs)
		}
	})
}
