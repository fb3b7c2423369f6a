// Package services runs a fleet's services: actors that own a mailbox on
// the bus and no gateway connection, eris-fleet's ServiceWorkers. The
// central store is one of them, built in.
//
// # Services
//
// A [Service] is the user's code for one instance. Its Start registers
// command handlers on its endpoint and returns nil once it is ready:
//
//	counter := services.Spec{Name: "counter", New: func() services.Service {
//		var n int
//		return services.Func(func(ctx context.Context, sc *services.Context) error {
//			bus.Handle(sc.Endpoint(), "inc", func(ctx context.Context, by int) (int, error) {
//				n += by
//				return n, nil
//			})
//			return nil
//		})
//	}}
//
// Clusters and other services then call it through the bus:
//
//	n, err := bus.Request[int, int](ctx, b, bus.Service("counter"), "inc", 1)
//
// A service handles one command at a time unless [Spec.Concurrency] says
// otherwise, so its handlers share its state without locks. A [Stopper]
// also gets a shutdown hook. Handlers are reachable only once Start has
// returned nil; until then calls fail with bus.ErrUnknownCommand, and with
// bus.ErrUnknownAddress while a service is stopped or failed. A panic in a
// handler becomes an error for its caller (see [bus.Handle]); the service
// keeps serving.
//
// # The Manager
//
// [NewManager] checks the services' Specs; [Manager.Start] starts them,
// one after the other or all together ([ManagerConfig.StartTogether]),
// and returns once all are ready: a fleet starts its clusters only then.
// A Start that returns an error, panics or outlives StartTimeout is a
// starting error: the instance is dropped and a new one is started after
// a back-off that doubles each time, at most MaxRestarts times within
// RestartWindow; then the service is reported failed. [Manager.Close]
// stops them all, in parallel.
//
// At run time, [Manager.Create] adds a service, [Manager.Shutdown]
// removes one, [Manager.Restart] stops one and starts it again, and
// [Manager.Services] reports their states. Every lifecycle change is an
// [Event], given to [ManagerConfig.OnEvent] and logged.
//
// # Soft restart
//
// [Manager.SoftRestart] replaces an instance without losing a command: the
// new instance starts on a standby endpoint ([bus.Bus.Standby]) while the
// old one serves; once it is ready it takes over the address and its
// queued commands at once ([bus.Bus.Replace]), the old instance finishes
// the commands it was handling, and then its Stop hook runs. If the new
// instance fails to start, the old one keeps serving.
//
// # Central store
//
// [Store] is a key-value map served as the service "store". Run it with
// NewStore().Spec() among the Specs; then any cluster or service reads and
// writes it with [StoreSet], [StoreGet], [StoreHas], [StoreDelete],
// [StoreKeys] and [StoreClear]. Values travel as JSON, so they pass the
// bus's strict mode and will cross processes. The data is kept across
// restarts of the store service.
package services
