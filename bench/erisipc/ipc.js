// Cross-process IPC as eris-fleet 1.0.2 does it, measured the way the
// bus-nats scenario measures the NATS transport: a cluster worker calls a
// service worker with serviceCommand(service, msg, receptive = true) and
// waits for the return.
//
// eris-fleet's IPC is Node's cluster module with its default (JSON)
// serialization, and every call crosses the master: worker -> master ->
// service worker -> master -> worker. This file reproduces that path with
// eris-fleet's own message shapes and bookkeeping rather than importing
// the package, whose Admiral needs a Discord token and gateway to start
// (so the benchmark needs neither npm nor the network):
//
//   - the caller (IPC.serviceCommand): a "serviceCommand" + 16 random
//     bytes in hex UUID, a once(UUID) listener on an EventEmitter, a
//     setTimeout for the return timeout, and
//     process.send({op: "serviceCommand", command: {service, msg, UUID, receptive}});
//   - the master (Admiral, cluster.on("message")): looks the service up,
//     then cluster.workers[workerID].send({op: "command", command, UUID: worker.id});
//   - the service (Service, process.on("message")): awaits
//     handleCommand(msg), then
//     process.send({op: "return", value: {id, value, serviceName}, UUID});
//   - the master (Admiral.ipcReturn): the fetches lookup by
//     JSON.stringify({id, UUID}), then
//     cluster.workers[UUID].send({op: "return", id, value});
//   - the caller (Cluster, process.on("message")): ipc.emit(id, value),
//     which clears the timeout and resolves the promise.
//
// Run: node ipc.js [sequential (0: none)] [per-requester] [requesters] [payload-bytes]
// It prints one JSON line:
// {"seq_p50_us":…,"seq_p99_us":…,"concurrent_rps":…,"concurrent_requesters":…}
"use strict";

const cluster = require("cluster");
const crypto = require("crypto");
const { EventEmitter } = require("events");

const arg = (i, def) => (process.argv.length > i + 2 ? Number(process.argv[i + 2]) : def);
const SEQ = arg(0, 20000); // 0: measure only the concurrent throughput
const PER = arg(1, 2000);
const REQUESTERS = arg(2, 64);
const PAYLOAD = "x".repeat(arg(3, 100));
const WARMUP = 5000;
const FETCH_TIMEOUT = 10000;

if (cluster.isPrimary) {
	// The Admiral: routes commands to services and returns to callers.
	const services = new Map(); // serviceName -> {workerID}
	const fetches = new Map();
	let caller;
	cluster.setupPrimary({ silent: false, args: process.argv.slice(2) });
	cluster.on("message", (worker, message) => {
		if (!message.op) return;
		switch (message.op) {
			case "serviceCommand": {
				const service = services.get(message.command.service);
				const serviceWorker = service && cluster.workers[service.workerID];
				if (serviceWorker) {
					serviceWorker.send({ op: "command", command: message.command, UUID: worker.id });
				} else {
					worker.send({ op: "return", id: message.command.UUID, value: { value: { err: `Service ${message.command.service} is unavailable.` } } });
				}
				break;
			}
			case "return": {
				const UUID = JSON.stringify({ id: message.value.id, UUID: message.UUID });
				fetches.get(UUID);
				fetches.delete(UUID);
				const requestingWorker = cluster.workers[message.UUID];
				if (requestingWorker) {
					requestingWorker.send({ op: "return", id: message.value.id, value: message.value });
				}
				break;
			}
			case "serviceReady":
				services.set(message.serviceName, { workerID: worker.id });
				caller = cluster.fork({ ERIS_IPC_ROLE: "cluster" });
				break;
			case "result":
				console.log(JSON.stringify(message.result));
				for (const id in cluster.workers) cluster.workers[id].kill();
				break;
			case "error":
				console.error("eris ipc bench:", message.error);
				process.exitCode = 1;
				for (const id in cluster.workers) cluster.workers[id].kill();
				break;
		}
	});
	cluster.fork({ ERIS_IPC_ROLE: "service" });
	void caller;
} else if (process.env.ERIS_IPC_ROLE === "service") {
	// A ServiceWorker whose handleCommand echoes its message.
	const serviceName = "bench";
	const app = { handleCommand: async (msg) => msg };
	process.on("message", async (message) => {
		if (message.op !== "command") return;
		const res = await app.handleCommand(message.command.msg);
		if (message.command.receptive) {
			process.send({ op: "return", value: { id: message.command.UUID, value: res, serviceName }, UUID: message.UUID });
		}
	});
	process.send({ op: "serviceReady", serviceName });
} else {
	// A cluster worker calling the service through its IPC.
	const ipc = new EventEmitter();
	ipc.setMaxListeners(0);
	// IPC's own listener (user ipc events by op), then Cluster's.
	const ipcEventListeners = new Map();
	process.on("message", (msg) => {
		const event = ipcEventListeners.get(msg.op);
		if (event) event.forEach((fn) => fn(msg));
	});
	process.on("message", (message) => {
		if (message.op === "return") ipc.emit(message.id, message.value);
	});
	const serviceCommand = (service, message, receptive) => {
		const UUID = "serviceCommand" + crypto.randomBytes(16).toString("hex");
		const sendCommand = () => process.send({ op: "serviceCommand", command: { service, msg: message, UUID, receptive } });
		return new Promise((resolve, reject) => {
			let timeout;
			const listener = (r) => {
				if (timeout) clearTimeout(timeout);
				if (r.value === undefined || r.value === null || r.value.constructor !== ({}).constructor) {
					resolve(r.value);
				} else if (r.value.err) {
					reject(r.value.err);
				} else {
					resolve(r.value);
				}
			};
			timeout = setTimeout(() => {
				reject("Timeout");
				ipc.removeListener(UUID, listener);
			}, FETCH_TIMEOUT);
			ipc.once(UUID, listener);
			sendCommand();
		});
	};
	const call = async () => {
		const v = await serviceCommand("bench", PAYLOAD, true);
		if (v !== PAYLOAD) throw new Error("wrong echo");
	};
	(async () => {
		for (let i = 0; i < WARMUP; i++) await call();
		const lat = new Array(SEQ);
		for (let i = 0; i < SEQ; i++) {
			const start = process.hrtime.bigint();
			await call();
			lat[i] = Number(process.hrtime.bigint() - start) / 1e3;
		}
		lat.sort((a, b) => a - b);
		const start = process.hrtime.bigint();
		await Promise.all(Array.from({ length: REQUESTERS }, async () => {
			for (let i = 0; i < PER; i++) await call();
		}));
		const seconds = Number(process.hrtime.bigint() - start) / 1e9;
		process.send({ op: "result", result: {
			seq_p50_us: SEQ > 0 ? lat[Math.floor(SEQ / 2)] : null,
			seq_p99_us: SEQ > 0 ? lat[Math.floor(SEQ * 99 / 100)] : null,
			concurrent_rps: REQUESTERS * PER / seconds,
			concurrent_requesters: REQUESTERS,
		} });
	})().catch((err) => process.send({ op: "error", error: String(err && err.stack || err) }));
}
