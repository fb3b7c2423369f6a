package discordtest

import (
	"encoding/json"
	"testing"
)

// FuzzDecodePayload feeds the gateway's payload decoder real frames and
// their mutations: it must never panic, and whatever it accepts is a JSON
// object whose op and d survive a round trip.
func FuzzDecodePayload(f *testing.F) {
	for _, seed := range []string{
		`{"op":1,"d":null}`,
		`{"op":1,"d":251}`,
		`{"op":2,"d":{"token":"x","intents":513,"shard":[0,1],"properties":{"os":"linux","browser":"disgo","device":"disgo"}}}`,
		`{"op":6,"d":{"token":"x","session_id":"abc","seq":42}}`,
		`{"op":3,"d":{"since":null,"activities":[],"status":"online","afk":false}}`,
		`{"op":8,"d":{"guild_id":"1","query":"","limit":0}}`,
		`{"d":{}}`, `{"op":"1"}`, `[]`, `null`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		op, d, err := decodePayload(data)
		if err != nil {
			return
		}
		if len(d) > 0 && !json.Valid(d) {
			t.Fatalf("accepted invalid d %q", d)
		}
		again, err := json.Marshal(map[string]any{"op": op, "d": d})
		if len(d) == 0 {
			again, err = json.Marshal(map[string]any{"op": op})
		}
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		op2, _, err := decodePayload(again)
		if err != nil || op2 != op {
			t.Fatalf("round trip: op %d -> %d, err %v", op, op2, err)
		}
	})
}
