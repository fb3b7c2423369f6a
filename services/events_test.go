package services_test

import (
	"errors"
	"testing"
	"time"

	"github.com/gofleet/fleet/services"
)

func TestEventsPrintTheirFields(t *testing.T) {
	boom := errors.New("boom")
	for _, c := range []struct {
		e    services.Event
		kind services.EventKind
		want string
	}{
		{services.Ready{Service: "store", Attempt: 1}, services.EventReady, `service_ready service="store" attempt=1`},
		{services.StartingError{Service: "a", Attempt: 2, Err: boom}, services.EventStartingError, `service_starting_error service="a" attempt=2 err="boom"`},
		{services.Restarted{Service: "a", Attempt: 3}, services.EventRestarted, `service_restarted service="a" attempt=3`},
		{services.Restarted{Service: "a", Attempt: 3, Backoff: 2 * time.Second, Err: boom}, services.EventRestarted,
			`service_restarted service="a" attempt=3 backoff=2s err="boom"`},
		{services.Failed{Service: "a", Attempt: 4, Err: boom}, services.EventFailed, `service_failed service="a" attempt=4 err="boom"`},
		{services.Stopped{Service: "a"}, services.EventShutdown, `service_shutdown service="a"`},
		{services.Stopped{Service: "a", Err: &services.PanicError{Value: "x", Stack: []byte("stack")}}, services.EventShutdown,
			`service_shutdown service="a" err="services: panic: x"`},
	} {
		if c.e.Kind() != c.kind || c.e.String() != c.want {
			t.Errorf("%T: %s %q, want %s %q", c.e, c.e.Kind(), c.e.String(), c.kind, c.want)
		}
	}
}
