package errwrap

import (
	"errors"
	"testing"
)

func TestWrap(t *testing.T) {
	sentinel := errors.New("services: service failed")
	inner := errors.New("services: start \"db\": no database")
	err := Wrap(`services: "db" failed after 2 attempts`, "services", inner, sentinel)
	if got, want := err.Error(), `services: "db" failed after 2 attempts: start "db": no database`; got != want {
		t.Fatalf("message %q, want %q", got, want)
	}
	if !errors.Is(err, inner) || !errors.Is(err, sentinel) {
		t.Fatal("errors.Is does not see the wrapped errors")
	}
	if got := Trim("services", inner).Error(); got != `start "db": no database` {
		t.Fatalf("Trim: %q", got)
	}
	// Another package's prefix is context, and stays.
	err = Wrap("runtime: Services", "runtime", inner)
	if got, want := err.Error(), `runtime: Services: services: start "db": no database`; got != want {
		t.Fatalf("message %q, want %q", got, want)
	}
}
