package multihost

import (
	"bufio"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestOwnedNear(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	grace := 100 * time.Millisecond
	// a owns from 0 ms, b from 1000 ms, nobody from 2000 ms.
	history := []leaseState{{"a", at(0)}, {"b", at(1000)}, {"", at(2000)}}
	for _, tc := range []struct {
		host string
		ms   int
		want bool
	}{
		{"a", 500, true},
		{"a", 1050, true},  // within grace of the change: a report in flight
		{"a", 1200, false}, // a delivers after b took the lease
		{"b", 950, true},   // b's first delivery, seen before the watch saw the change
		{"b", 800, false},
		{"b", 1999, true},
		{"b", 2500, false}, // after b released it
		{"c", -500, true},  // before the watch knew anything
	} {
		if got := ownedNear(history, tc.host, at(tc.ms), grace); got != tc.want {
			t.Errorf("ownedNear(%s at %d ms) = %v, want %v", tc.host, tc.ms, got, tc.want)
		}
	}
	if !ownedNear(nil, "a", t0, grace) {
		t.Error("with no history, a delivery is not judged")
	}
}

func TestMessageID(t *testing.T) {
	for in, want := range map[string]uint64{`{"id":"123","x":1}`: 123, `{"id":456}`: 456} {
		if got, err := messageID([]byte(in)); err != nil || got != want {
			t.Errorf("messageID(%s) = %d, %v; want %d", in, got, err, want)
		}
	}
	if _, err := messageID([]byte(`{"id":"x"}`)); err == nil {
		t.Error("a non-numeric ID was accepted")
	}
}

// TestCutter: traffic passes, a cut drops the connection and refuses new
// ones, a restore lets new ones in.
func TestCutter(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() { // an echo server
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := c.Write([]byte(sc.Text() + "\n")); err != nil {
						return
					}
				}
			}()
		}
	}()
	c, err := NewCutter(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { c.Close(); ln.Close(); <-done }()
	echo := func() error {
		conn, err := net.Dial("tcp", c.Addr())
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Write([]byte("hi\n")); err != nil {
			return err
		}
		_, err = bufio.NewReader(conn).ReadString('\n')
		return err
	}
	if err := echo(); err != nil {
		t.Fatalf("through the proxy: %v", err)
	}
	held, err := net.Dial("tcp", c.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if _, err := held.Write([]byte("x\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := bufio.NewReader(held).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	c.Cut()
	_ = held.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := held.Read(make([]byte, 1)); err == nil {
		t.Error("a connection survived the cut")
	}
	if err := echo(); err == nil {
		t.Error("a new connection passed during the cut")
	}
	c.Restore()
	if err := echo(); err != nil {
		t.Errorf("after the restore: %v", err)
	}
}
