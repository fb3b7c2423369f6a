package discordtest

import (
	"fmt"
	"log/slog"
	"time"
)

// An Option configures a Server. Options that get a value out of range
// make NewServer panic with a message that names the option, as httptest
// does for setup errors.
type Option func(*config) error

// config holds every knob of the simulator. Zero values are replaced by
// defaults in newConfig.
type config struct {
	guilds            int
	membersPerGuild   int
	channelsPerGuild  int
	rolesPerGuild     int
	recommendedShards int
	maxConcurrency    int
	identifyWindow    time.Duration
	heartbeat         time.Duration
	heartbeatGrace    time.Duration
	resumeWindow      time.Duration
	replayBuffer      int
	sessionStarts     int
	sessionReset      time.Duration
	guildsPerShard    int
	shardMultiple     int
	privileged        uint64
	commandLimit      int
	commandWindow     time.Duration
	applicationID     uint64
	token             string
	logger            *slog.Logger
	compressions      []string // nil: every one the simulator speaks

	// REST
	globalLimit   int
	globalWindow  time.Duration
	routeLimit    int
	routeWindow   time.Duration
	invalidWindow time.Duration
	invalidLimit  int
}

const (
	intentGuildMembers   = 1 << 1
	intentGuildPresences = 1 << 8
	intentMessageContent = 1 << 15
	privilegedIntents    = intentGuildMembers | intentGuildPresences | intentMessageContent
	// validIntents is every intent bit Discord defines for API v10.
	validIntents = 1<<26 - 1
)

func newConfig(opts []Option) (*config, error) {
	c := &config{
		guilds:           100,
		membersPerGuild:  5,
		channelsPerGuild: 3,
		rolesPerGuild:    2,
		maxConcurrency:   1,
		identifyWindow:   5 * time.Second,
		heartbeat:        41250 * time.Millisecond,
		resumeWindow:     2 * time.Minute,
		replayBuffer:     4096,
		sessionStarts:    1000,
		sessionReset:     24 * time.Hour,
		guildsPerShard:   2500,
		privileged:       privilegedIntents,
		commandLimit:     120,
		commandWindow:    60 * time.Second,
		applicationID:    1_100_000_000_000_000_000,
		globalLimit:      50,
		globalWindow:     time.Second,
		routeLimit:       5,
		routeWindow:      5 * time.Second,
		invalidWindow:    10 * time.Minute,
		invalidLimit:     10_000,
		logger:           slog.New(slog.DiscardHandler),
	}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	if c.heartbeatGrace == 0 {
		c.heartbeatGrace = c.heartbeat / 2
	}
	if c.token == "" {
		c.token = makeToken(c.applicationID)
	}
	return c, nil
}

func positive(name string, v int) error {
	if v <= 0 {
		return fmt.Errorf("discordtest: %s must be > 0, got %d", name, v)
	}
	return nil
}

func positiveDur(name string, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("discordtest: %s must be > 0, got %s", name, d)
	}
	return nil
}

// WithGuilds sets how many guilds the bot is in (default 100). Guild IDs are
// spread so that every shard count divides them evenly.
func WithGuilds(n int) Option {
	return func(c *config) error {
		if n < 0 {
			return fmt.Errorf("discordtest: WithGuilds must be >= 0, got %d", n)
		}
		c.guilds = n
		return nil
	}
}

// WithGuildShape sets the generated members, channels and roles per guild
// (defaults 5, 3, 2). A guild is "large" when its members exceed the
// large_threshold its shard identified with.
func WithGuildShape(members, channels, roles int) Option {
	return func(c *config) error {
		if members < 1 || channels < 1 || roles < 0 {
			return fmt.Errorf("discordtest: WithGuildShape needs members >= 1, channels >= 1, roles >= 0; got %d, %d, %d", members, channels, roles)
		}
		c.membersPerGuild, c.channelsPerGuild, c.rolesPerGuild = members, channels, roles
		return nil
	}
}

// WithRecommendedShards sets the shard count GET /gateway/bot returns. By
// default it is computed as Discord does: one shard per 1,000 guilds,
// rounded up to a multiple of the large-bot multiple when one is set.
func WithRecommendedShards(n int) Option {
	return func(c *config) error { c.recommendedShards = n; return positive("WithRecommendedShards", n) }
}

// WithMaxConcurrency sets session_start_limit.max_concurrency: the number of
// identify buckets (default 1).
func WithMaxConcurrency(n int) Option {
	return func(c *config) error { c.maxConcurrency = n; return positive("WithMaxConcurrency", n) }
}

// WithIdentifyWindow sets how long a bucket stays taken after an IDENTIFY
// (Discord: 5 s). Tests use tens of milliseconds.
func WithIdentifyWindow(d time.Duration) Option {
	return func(c *config) error { c.identifyWindow = d; return positiveDur("WithIdentifyWindow", d) }
}

// WithHeartbeatInterval sets the heartbeat_interval sent in HELLO (Discord:
// 41.25 s).
func WithHeartbeatInterval(d time.Duration) Option {
	return func(c *config) error { c.heartbeat = d; return positiveDur("WithHeartbeatInterval", d) }
}

// WithHeartbeatGrace sets how long past heartbeat_interval the server waits
// for a heartbeat before it closes the connection (default half an
// interval). The session stays resumable, as on Discord.
func WithHeartbeatGrace(d time.Duration) Option {
	return func(c *config) error { c.heartbeatGrace = d; return positiveDur("WithHeartbeatGrace", d) }
}

// WithResumeWindow sets how long a disconnected session can be resumed
// (default 2 minutes; Discord says "a few minutes").
func WithResumeWindow(d time.Duration) Option {
	return func(c *config) error { c.resumeWindow = d; return positiveDur("WithResumeWindow", d) }
}

// WithReplayBuffer sets how many dispatches a session keeps for replay on
// RESUME (default 4096). A RESUME from further back is refused with op 9.
func WithReplayBuffer(n int) Option {
	return func(c *config) error { c.replayBuffer = n; return positive("WithReplayBuffer", n) }
}

// WithSessionStartLimit sets session_start_limit.total and the time until it
// resets (defaults 1000 and 24 h). When the remaining starts reach zero,
// the next IDENTIFY terminates every session and the token is reset, as
// Discord does.
func WithSessionStartLimit(total int, resetAfter time.Duration) Option {
	return func(c *config) error {
		c.sessionStarts, c.sessionReset = total, resetAfter
		if err := positive("WithSessionStartLimit total", total); err != nil {
			return err
		}
		return positiveDur("WithSessionStartLimit resetAfter", resetAfter)
	}
}

// WithMaxGuildsPerShard sets the guilds one shard may hold before IDENTIFY
// is refused with 4011 (Discord: 2500).
func WithMaxGuildsPerShard(n int) Option {
	return func(c *config) error { c.guildsPerShard = n; return positive("WithMaxGuildsPerShard", n) }
}

// WithLargeBotSharding makes the server require shard counts that are a
// multiple of n (close 4010 otherwise), as Discord does for bots in over
// 150,000 guilds (n is 16 there).
func WithLargeBotSharding(n int) Option {
	return func(c *config) error { c.shardMultiple = n; return positive("WithLargeBotSharding", n) }
}

// WithPrivilegedIntents sets which privileged intents the application is
// approved for (a mask of GUILD_MEMBERS, GUILD_PRESENCES and
// MESSAGE_CONTENT; default all three). IDENTIFY with any other privileged
// intent is closed with 4014.
func WithPrivilegedIntents(mask uint64) Option {
	return func(c *config) error {
		if mask&^privilegedIntents != 0 {
			return fmt.Errorf("discordtest: WithPrivilegedIntents: %#x has non-privileged bits", mask)
		}
		c.privileged = mask
		return nil
	}
}

// WithCommandLimit sets how many gateway commands one connection may send
// per window before it is closed with 4008 (Discord: 120 per 60 s).
func WithCommandLimit(n int, window time.Duration) Option {
	return func(c *config) error {
		c.commandLimit, c.commandWindow = n, window
		if err := positive("WithCommandLimit", n); err != nil {
			return err
		}
		return positiveDur("WithCommandLimit window", window)
	}
}

// WithToken sets the bot token the server accepts. By default a token in
// Discord's format is generated for the application ID.
func WithToken(token string) Option {
	return func(c *config) error {
		if token == "" {
			return fmt.Errorf("discordtest: WithToken needs a non-empty token")
		}
		c.token = token
		return nil
	}
}

// WithLogger makes the server log every connection, IDENTIFY, RESUME
// (accepted or refused) and close at Info, and rule violations at Warn.
// The token is never logged. By default it is silent.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l != nil {
			c.logger = l
		}
		return nil
	}
}

// WithGlobalRateLimit sets the REST global limit: n requests per window
// (Discord: 50 per second).
func WithGlobalRateLimit(n int, window time.Duration) Option {
	return func(c *config) error {
		c.globalLimit, c.globalWindow = n, window
		if err := positive("WithGlobalRateLimit", n); err != nil {
			return err
		}
		return positiveDur("WithGlobalRateLimit window", window)
	}
}

// WithRouteRateLimit sets the per-route bucket: n requests per window for
// each route and major parameter (default 5 per 5 s, Discord's limit for
// creating messages in a channel).
func WithRouteRateLimit(n int, window time.Duration) Option {
	return func(c *config) error {
		c.routeLimit, c.routeWindow = n, window
		if err := positive("WithRouteRateLimit", n); err != nil {
			return err
		}
		return positiveDur("WithRouteRateLimit window", window)
	}
}

// WithInvalidRequestLimit sets how many 401, 403 and 429 responses (429s of
// shared scope excepted) are allowed per window before every further
// request is answered with a ban (Discord: 10,000 per 10 minutes).
func WithInvalidRequestLimit(n int, window time.Duration) Option {
	return func(c *config) error {
		c.invalidLimit, c.invalidWindow = n, window
		if err := positive("WithInvalidRequestLimit", n); err != nil {
			return err
		}
		return positiveDur("WithInvalidRequestLimit window", window)
	}
}
