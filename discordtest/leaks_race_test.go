//go:build race

package discordtest

import "go.uber.org/goleak"

// disgoLeaks is empty under -race: no test then runs disgo's gateway.
var disgoLeaks []goleak.Option
