package bus

import (
	"encoding/json"
	"fmt"
	"reflect"
)

// Codec encodes the values that cross the bus when they must leave the
// process, and in strict mode ([Options.Strict]) on every call.
type Codec interface {
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// JSON is the default Codec: encoding/json.
type JSON struct{}

// Marshal returns the JSON encoding of v.
func (JSON) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Unmarshal decodes data into v, which must be a non-nil pointer.
func (JSON) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

// roundTrip returns a copy of v made by encoding and decoding it with c, as
// a process boundary would. what names the value in errors ("payload", "reply").
func roundTrip[T any](c Codec, v T, what string) (T, error) {
	var out T
	data, err := c.Marshal(v)
	if err != nil {
		return out, fmt.Errorf("%w: cannot encode %s of type %T: %w", ErrStrict, what, v, err)
	}
	if err := c.Unmarshal(data, &out); err != nil {
		return out, fmt.Errorf("%w: cannot decode %s of type %T: %w", ErrStrict, what, v, err)
	}
	return out, nil
}

// roundTripAny is roundTrip for a value whose type is only known at run
// time (an event payload): the copy has v's dynamic type. nil stays nil.
func roundTripAny(c Codec, v any, what string) (any, error) {
	if v == nil {
		return nil, nil
	}
	data, err := c.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot encode %s of type %T: %w", ErrStrict, what, v, err)
	}
	p := reflect.New(reflect.TypeOf(v))
	if err := c.Unmarshal(data, p.Interface()); err != nil {
		return nil, fmt.Errorf("%w: cannot decode %s of type %T: %w", ErrStrict, what, v, err)
	}
	return p.Elem().Interface(), nil
}

// decode decodes an encoded payload ([]byte) into a new T. It is a
// function of its own so that only this path moves a T to the heap.
func decode[T any](c Codec, payload any) (T, error) {
	var v T
	data, ok := payload.([]byte)
	if !ok {
		return v, fmt.Errorf("encoded payload is %T, not []byte", payload)
	}
	err := c.Unmarshal(data, &v)
	return v, err
}
