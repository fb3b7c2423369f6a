package runtime

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/gofleet/fleet/services"
)

// Each event type says its kind, prints on one line with its own fields,
// and logs one record at its level under WhatToLog's filter.
func TestEventsPrintAndLogTheirFields(t *testing.T) {
	boom := errors.New("boom")
	for _, c := range []struct {
		e     Event
		kind  EventKind
		str   string
		level slog.Level
	}{
		{ShardIdentify{Cluster: 1, Shard: 5, Waited: time.Second}, EventShardIdentify, "shard_identify cluster=1 shard=5 waited=1s", slog.LevelDebug},
		{ShardReady{Cluster: 1, Shard: 5, Ready: 3, Of: 8, Elapsed: 2 * time.Second}, EventShardReady, "shard_ready cluster=1 shard=5 n=3 of=8 elapsed=2s", slog.LevelDebug},
		{ShardDisconnected{Cluster: 0, Shard: 2}, EventShardDisconnected, "shard_disconnected cluster=0 shard=2", slog.LevelWarn},
		{ShardClosed{Cluster: 0, Shard: 2, Code: 4000}, EventShardClosed, "shard_closed cluster=0 shard=2 code=4000", slog.LevelDebug},
		{ClusterReady{Cluster: 3, Took: 400 * time.Millisecond}, EventClusterReady, "cluster_ready cluster=3 took=400ms", slog.LevelInfo},
		{ClusterRestarted{Cluster: 3, Restarts: 1, MaxRestarts: 5, Backoff: time.Second, Err: boom}, EventClusterRestarted,
			`cluster_restarted cluster=3 n=1 of=5 backoff=1s err="boom"`, slog.LevelWarn},
		{ClusterRestarted{Cluster: 3, Hard: true}, EventClusterRestarted, "cluster_restarted cluster=3 hard=true", slog.LevelInfo},
		{ClusterFailed{Cluster: 3, Err: boom}, EventClusterFailed, `cluster_failed cluster=3 err="boom"`, slog.LevelError},
		{SoftRestartHandedOver{Cluster: 2, Sessions: 4, Shards: 4, Pause: 30 * time.Millisecond}, EventSoftRestartHandedOver,
			"soft_restart_handed_over cluster=2 n=4 of=4 pause=30ms", slog.LevelInfo},
		{ReshardCutOver{From: 8, To: 16, StartUp: 3 * time.Second}, EventReshardCutOver, "reshard_cut_over from=8 to=16 start_up=3s", slog.LevelInfo},
		{StartupProgress{Ready: 12, Shards: 64, Window: 3, Windows: 16, MaxConcurrency: 4, Elapsed: 15 * time.Second, ETA: 65 * time.Second, Late: []int{7}},
			EventStartupProgress, "startup_progress ready=12 shards=64 window=3 windows=16 elapsed=15s eta=1m5s late=[7]", slog.LevelInfo},
		{FleetShutdown{}, EventShutdown, "shutdown", slog.LevelInfo},
		{services.Restarted{Service: "store", Attempt: 2, Backoff: time.Second, Err: boom}, EventServiceRestarted,
			`service_restarted service="store" attempt=2 backoff=1s err="boom"`, slog.LevelWarn},
	} {
		if c.e.Kind() != c.kind || c.e.String() != c.str || level(c.e) != c.level {
			t.Errorf("%T: kind %s, %q at %s; want %s, %q at %s", c.e, c.e.Kind(), c.e.String(), level(c.e), c.kind, c.str, c.level)
		}
		var buf bytes.Buffer
		log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
		newEvents(log, WhatToLog{}).emit(c.e)
		if n := strings.Count(buf.String(), "\n"); n != 1 || !strings.Contains(buf.String(), "event="+string(c.kind)) {
			t.Errorf("%T logged %q, want one record with event=%s", c.e, buf.String(), c.kind)
		}
		buf.Reset()
		newEvents(log, WhatToLog{Deny: []EventKind{c.kind}}).emit(c.e)
		if logged := buf.Len() > 0; logged != (c.level >= slog.LevelWarn) {
			t.Errorf("%T denied: logged %v, want only warnings and errors", c.e, logged)
		}
	}
}
