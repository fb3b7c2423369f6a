package shardgroup

import (
	"hash/maphash"
	"strconv"
)

// payloadSeed hashes event payloads the same way in every group of the
// process, so that two generations can compare what they received.
var payloadSeed = maphash.MakeSeed()

// field returns the raw value of a top-level field of a JSON object, or
// nil. It does not validate the object; a malformed one gives nil. It
// scans with envelope.go's skipSpace, skipString and skipValue.
func field(obj []byte, name string) []byte {
	i := skipSpace(obj, 0)
	if i >= len(obj) || obj[i] != '{' {
		return nil
	}
	i++
	for {
		i = skipSpace(obj, i)
		if i >= len(obj) || obj[i] != '"' {
			return nil
		}
		kEnd := skipString(obj, i)
		if kEnd < 0 {
			return nil
		}
		key := obj[i+1 : kEnd-1]
		i = skipSpace(obj, kEnd)
		if i >= len(obj) || obj[i] != ':' {
			return nil
		}
		i = skipSpace(obj, i+1)
		vEnd := skipValue(obj, i)
		if vEnd < 0 {
			return nil
		}
		if string(key) == name {
			return obj[i:vEnd]
		}
		i = skipSpace(obj, vEnd)
		if i >= len(obj) || obj[i] != ',' {
			return nil
		}
		i++
	}
}

// guildKey is the guild an event belongs to, by its payload: guild_id,
// or id for the GUILD_CREATE/UPDATE/DELETE events; 0 when it has none
// (DMs and other events Discord sends to shard 0).
func guildKey(t string, d []byte) uint64 {
	name := "guild_id"
	switch t {
	case "GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE":
		name = "id"
	}
	v := field(d, name)
	if len(v) < 2 || v[0] != '"' {
		return 0
	}
	id, err := strconv.ParseUint(string(v[1:len(v)-1]), 10, 64)
	if err != nil {
		return 0
	}
	return id
}
