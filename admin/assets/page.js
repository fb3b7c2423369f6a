// The status page's script: polls status.json once a second and updates
// the page in place, answers the server lookup, and (on the private mount)
// runs the operator controls. The admin token lives in one variable of
// this closure: never in a URL, a cookie, the DOM or the browser's storage.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const REFRESH_MS = 1000;
  const SYMBOLS = { ok: "✓", warn: "↻", bad: "✕", off: "–" };
  const opsBase = document.body.dataset.operations || "";

  let view = null;       // the last status.json
  let selected = null;   // the shard whose details are shown
  let token = "";        // the admin token; "" until the operator enters it
  let lastOK = 0;        // when status.json last answered

  // ---- formatting, as the server does it ----
  function tone(state) {
    switch (state) {
      case "ready": return "ok";
      case "connecting": case "identifying": case "resuming": case "starting": case "restarting": return "warn";
      case "disconnected": case "failed": return "bad";
    }
    return "off";
  }
  function duration(secs) {
    if (secs < 0) return "–";
    if (secs < 60) return secs + "s";
    if (secs < 3600) return Math.floor(secs / 60) + "m " + (secs % 60) + "s";
    if (secs < 48 * 3600) return Math.floor(secs / 3600) + "h " + (Math.floor(secs / 60) % 60) + "m";
    return Math.floor(secs / 86400) + "d " + (Math.floor(secs / 3600) % 24) + "h";
  }
  function rate(r) { return r < 10 ? r.toFixed(1) : r.toFixed(0); }
  function latency(ms) { return ms <= 0 ? "–" : ms < 1 ? "< 1 ms" : ms.toFixed(0) + " ms"; }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }
  function chip(state) {
    const t = tone(state);
    return el("span", { class: "chip tone-" + t }, el("span", { "aria-hidden": "true", text: SYMBOLS[t] }), " " + state);
  }
  function setTone(e, t, base) { e.className = base + " tone-" + t; }

  // ---- shards ----
  function tileTitle(s) {
    return `Shard ${s.id}: ${s.state}, latency ${latency(s.latency_ms)}, ${s.guilds} servers, ${rate(s.events_per_second)} events/s`;
  }
  function tile(s) {
    const b = el("button", { type: "button", "data-shard": s.id, "aria-pressed": String(s.id === selected) },
      el("span", { class: "num", text: String(s.id) }),
      el("span", { class: "lbl" }, el("span", { "aria-hidden": "true" }), ""));
    updateTile(b, s);
    return b;
  }
  function updateTile(b, s) {
    const t = tone(s.state);
    setTone(b, t, "tile");
    b.dataset.state = s.state;
    b.title = tileTitle(s);
    b.setAttribute("aria-label", `Shard ${s.id}: ${s.state}`);
    const lbl = b.querySelector(".lbl");
    lbl.firstChild.textContent = SYMBOLS[t];
    lbl.lastChild.textContent = " " + s.state;
  }
  function clusterControls(c) {
    if (!opsBase) return [];
    return [el("div", { class: "cluster-ctl" },
      el("button", { type: "button", "data-op": "soft-restart", "data-cluster": c.id, text: "Soft restart" }),
      el("button", { type: "button", "data-op": "restart", "data-cluster": c.id, class: "danger", text: "Restart" }))];
  }
  function clusterSection(c) {
    const h = el("h3", { id: `cluster-${c.id}-h` }, `Cluster ${c.id} `, chip(c.state));
    const meta = el("p", { class: "cmeta" });
    const grid = el("ul", { class: "grid", "aria-label": `Shards of cluster ${c.id}` },
      ...c.shards.map((s) => el("li", {}, tile(s))));
    return el("section", { class: "cluster", id: `cluster-${c.id}`, "data-cluster": c.id, "aria-labelledby": `cluster-${c.id}-h` },
      el("div", { class: "cluster-head" }, h, meta), ...clusterControls(c), grid);
  }
  function clusterMeta(c) {
    return `${c.shards_ready} of ${c.shards.length} shards ready · up ${duration(c.uptime_s)} · ${c.restarts} restarts · ${c.guilds} servers`;
  }
  // shape names the clusters and their shards: the grid is rebuilt when it
  // changes (a reshard) and updated in place otherwise, so focus stays.
  function shape(v) { return v.clusters.map((c) => c.id + ":" + c.shards.map((s) => s.id).join(",")).join(";"); }

  let builtShape = null;
  function renderShards(v) {
    const box = $("clusters");
    const sh = shape(v);
    if (sh !== builtShape) {
      const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.shard : undefined;
      box.replaceChildren(...(v.clusters.length ? v.clusters.map(clusterSection) : [el("p", { text: "No clusters are running." })]));
      builtShape = sh;
      if (focused !== undefined) {
        const again = box.querySelector(`[data-shard="${focused}"]`);
        if (again) again.focus();
      }
    }
    for (const c of v.clusters) {
      const sec = $(`cluster-${c.id}`);
      sec.querySelector("h3 .chip").replaceWith(chip(c.state));
      sec.querySelector(".cmeta").textContent = clusterMeta(c);
      for (const s of c.shards) updateTile(sec.querySelector(`[data-shard="${s.id}"]`), s);
    }
    const rows = [];
    for (const c of v.clusters) for (const s of c.shards) {
      rows.push(el("tr", {}, el("td", { text: String(s.id) }), el("td", { text: String(c.id) }), el("td", {}, chip(s.state)),
        el("td", { text: latency(s.latency_ms) }), el("td", { text: String(s.guilds) }), el("td", { text: rate(s.events_per_second) })));
    }
    $("shard-table").tBodies[0].replaceChildren(...rows);
    renderDetails(v);
  }

  function findShard(v, id) {
    for (const c of v.clusters) for (const s of c.shards) if (s.id === id) return s;
    return null;
  }
  function renderDetails(v) {
    const box = $("details");
    const s = selected === null ? null : findShard(v, selected);
    for (const b of document.querySelectorAll(".tile")) b.setAttribute("aria-pressed", String(Number(b.dataset.shard) === selected && s !== null));
    if (!s) { box.hidden = true; return; }
    const rows = [["State", chip(s.state)], ["Cluster", String(s.cluster)], ["Latency", latency(s.latency_ms)],
      ["Servers", String(s.guilds)], ["Events per second", rate(s.events_per_second)]];
    const dl = el("dl", {});
    for (const [k, val] of rows) dl.append(el("dt", { text: k }), el("dd", {}, val));
    box.replaceChildren(el("h3", { text: `Shard ${s.id}` }), dl);
    box.hidden = false;
  }

  // ---- clusters, services, totals ----
  function opButtons(kind, key) {
    const attr = kind === "cluster" ? "data-cluster" : "data-service";
    return el("td", {},
      el("button", { type: "button", "data-op": "soft-restart", [attr]: key, text: "Soft restart" }),
      el("button", { type: "button", "data-op": "restart", [attr]: key, class: "danger", text: "Restart" }));
  }
  function renderTables(v) {
    $("cluster-table").tBodies[0].replaceChildren(...v.clusters.map((c) => {
      const tr = el("tr", { "data-cluster": c.id }, el("td", { text: String(c.id) }), el("td", {}, chip(c.state)),
        el("td", { text: `${c.shards_ready} of ${c.shards.length}` }), el("td", { text: duration(c.uptime_s) }),
        el("td", { text: String(c.restarts) }), el("td", { text: String(c.guilds) }));
      if (opsBase) tr.append(opButtons("cluster", c.id));
      return tr;
    }));
    const svc = v.services.map((s) => {
      const tr = el("tr", { "data-service": s.name }, el("td", { text: s.name }), el("td", {}, chip(s.state)),
        el("td", { text: duration(s.uptime_s) }), el("td", { text: String(s.restarts) }));
      if (opsBase) tr.append(opButtons("service", s.name));
      return tr;
    });
    $("service-table").tBodies[0].replaceChildren(...(svc.length ? svc : [el("tr", {}, el("td", { colspan: "5", text: "No services." }))]));
  }
  function renderTotals(v) {
    const servicesReady = v.services.filter((s) => s.state === "ready").length;
    $("t-shards").textContent = `${v.shards_ready} of ${v.shards}`;
    $("t-clusters").textContent = String(v.clusters.length);
    $("t-guilds").textContent = String(v.guilds);
    $("t-eps").textContent = rate(v.events_per_second);
    $("t-uptime").textContent = duration(v.uptime_s);
    $("t-services").textContent = `${servicesReady} of ${v.services.length}`;
    let t, text;
    const down = [];
    for (const c of v.clusters) for (const s of c.shards) if (s.state !== "ready") down.push(`shard ${s.id} ${s.state}`);
    if (v.shards === 0) { t = "off"; text = "The fleet is not running."; }
    else if (down.length === 0 && servicesReady === v.services.length) { t = "ok"; text = `All systems operational: ${v.shards_ready} of ${v.shards} shards ready.`; }
    else if (down.length === 0) { t = "warn"; text = `${v.shards_ready} of ${v.shards} shards ready; ${v.services.length - servicesReady} services not ready.`; }
    else if (v.shards_ready === 0) { t = "bad"; text = `Outage: none of ${v.shards} shards ready.`; }
    else {
      t = "warn";
      const named = down.slice(0, 5);
      if (down.length > 5) named.push(`and ${down.length - 5} more`);
      text = `Partial outage: ${down.length} of ${v.shards} shards not ready (${named.join(", ")}).`;
    }
    if ($("summary-text").textContent !== text) { // a live region: announce changes only
      setTone($("summary"), t, "banner");
      $("summary").querySelector(".sym").textContent = SYMBOLS[t];
      $("summary-text").textContent = text;
    }
  }

  function render(v) {
    view = v;
    renderTotals(v);
    renderShards(v);
    renderTables(v);
    const r = $("find-result");
    if (r.dataset.guild) showLookup(r.dataset.guild);
  }

  // ---- polling ----
  function clock(d) { return d.toISOString().slice(11, 19) + " UTC"; }
  function showLive() {
    if (!view) return;
    const age = Math.max(0, Math.round((Date.now() - lastOK) / 1000));
    $("updated").textContent = `Figures of ${clock(new Date(view.time))}.`;
    $("live").textContent = age <= 3 ? "Live: updated every second." : `Live updates paused: no answer for ${age} s; retrying.`;
  }
  async function poll() {
    try {
      const res = await fetch("status.json", { cache: "no-store" });
      if (!res.ok) throw new Error("status " + res.status);
      render(await res.json());
      lastOK = Date.now();
    } catch (e) {
      // The next poll retries; the page says how stale it is.
    }
    showLive();
    setTimeout(schedule, REFRESH_MS);
  }
  function schedule() {
    if (document.hidden) { document.addEventListener("visibilitychange", schedule, { once: true }); return; }
    poll();
  }

  // ---- guild lookup: shard = (id >> 22) % total_shards ----
  function lookup(input) {
    const s = input.trim();
    // A snowflake: digits only, 64 bits, created after Discord's epoch.
    if (!/^[0-9]{1,20}$/.test(s) || BigInt(s) > 0xffffffffffffffffn || BigInt(s) >> 22n === 0n) {
      return { tone: "bad", text: `"${s}" is not a server ID. A server ID is a number of 17 to 20 digits: in Discord, turn on Developer Mode (Settings, Advanced), then right-click the server and choose Copy Server ID.` };
    }
    if (!view || view.total_shards === 0) return { tone: "off", text: `The fleet is not running, so no shard serves server ${s} right now.` };
    const shard = Number((BigInt(s) >> 22n) % BigInt(view.total_shards));
    const sh = findShard(view, shard);
    if (!sh) return { tone: "off", text: `Server ${s} is on shard ${shard} of ${view.total_shards}, which this status page does not run.` };
    return { tone: tone(sh.state), shard, text: `Server ${s} is on shard ${shard} (cluster ${sh.cluster}), which is ${sh.state}.` };
  }
  function showLookup(input) {
    const r = $("find-result");
    const l = lookup(input);
    r.dataset.guild = input;
    if (r.textContent === SYMBOLS[l.tone] + " " + l.text) return; // a live region: announce changes only
    setTone(r, l.tone, "result");
    r.replaceChildren(el("span", { class: "sym", "aria-hidden": "true", text: SYMBOLS[l.tone] }), " " + l.text);
    if (l.shard !== undefined && findShard(view, l.shard)) {
      r.dataset.shard = l.shard;
    } else delete r.dataset.shard;
  }

  // ---- operator controls ----
  function tokenState(msg) {
    $("token-state").textContent = msg || (token
      ? "Token entered: kept in this page's memory only, until you reload or forget it."
      : "No token entered. The page keeps it in memory only, until you reload or forget it.");
  }
  function opItem(label) {
    const ol = $("ops");
    const none = ol.querySelector(".none");
    if (none) none.remove();
    const li = el("li", { class: "op-running" }, el("time", { text: clock(new Date()) }), " ", el("strong", { text: label }), ": ",
      el("span", { class: "op-state", text: "running…" }));
    ol.prepend(li);
    const started = Date.now();
    const set = (cls, text) => { li.className = cls; li.querySelector(".op-state").textContent = text; };
    // The list changes every second while an operation runs; screen
    // readers hear only its start and its end.
    const announce = (text) => { $("op-announce").textContent = `${label}: ${text}`; };
    announce("started");
    const secs = () => ((Date.now() - started) / 1000).toFixed(1) + " s";
    const timer = setInterval(() => { if (li.className === "op-running") set("op-running", `running for ${secs()}…${li.dataset.progress ? " " + li.dataset.progress : ""}`); }, 1000);
    return {
      progress(p) { li.dataset.progress = p; set("op-running", `running for ${secs()}… ${p}`); },
      done(msg) { clearInterval(timer); set("op-done", `done after ${secs()}${msg ? " (" + msg + ")" : ""}.`); announce(li.querySelector(".op-state").textContent); },
      fail(msg) { clearInterval(timer); set("op-failed", `failed: ${msg}`); announce(`failed: ${msg}`); },
      refuse(msg) { clearInterval(timer); set("op-failed", `refused: ${msg}`); announce(`refused: ${msg}`); },
    };
  }
  async function readJSON(res) {
    try { return await res.json(); } catch (e) { return {}; }
  }
  function describe(res, data) {
    return `${res.status} ${data.error || res.statusText || ""}`.trim();
  }
  function authHeaders() { return { Authorization: "Bearer " + token }; }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // operationURL finds where a 202 says to follow the operation.
  function operationURL(res, data, requestURL) {
    const loc = res.headers.get("Location") || data.operation || data.url || data.href || data.location;
    if (loc) return new URL(loc, requestURL);
    if (data.id !== undefined) return new URL("operations/" + encodeURIComponent(data.id), new URL(opsBase, location.href));
    return null;
  }
  const RUNNING = new Set(["pending", "queued", "accepted", "running", "started", "in_progress"]);
  const DONE = new Set(["done", "succeeded", "success", "completed", "ok"]);
  async function follow(item, url) {
    let misses = 0;
    for (;;) {
      await sleep(REFRESH_MS);
      let res;
      try {
        res = await fetch(url, { headers: authHeaders(), cache: "no-store" });
      } catch (e) {
        if (++misses >= 10) { item.fail("lost track of the operation: the server does not answer. Check the fleet's logs."); return; }
        continue;
      }
      misses = 0;
      const data = await readJSON(res);
      if (res.status === 401) { forget("The server refused the token: enter it again."); item.refuse("the admin token was refused (401): enter it again."); return; }
      if (!res.ok && res.status !== 202) { item.fail(describe(res, data)); return; }
      const state = String(data.state || data.status || "").toLowerCase();
      if (data.error || state === "failed" || state === "error" || state === "cancelled" || state === "canceled") { item.fail(data.error || state); return; }
      if (DONE.has(state) || data.done === true || (!state && res.status === 200 && data.done !== false)) { item.done(data.result && data.result !== "done" ? String(data.result) : ""); return; }
      item.progress(data.progress !== undefined ? String(data.progress) : (data.message || state));
    }
  }
  async function operate(label, path, body) {
    const item = opItem(label);
    if (!token) {
      item.refuse("enter the admin token first (Operator, Admin token).");
      $("token").focus();
      return;
    }
    const url = new URL(path, new URL(opsBase, location.href));
    let res;
    try {
      res = await fetch(url, {
        method: "POST", headers: { ...authHeaders(), "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store", redirect: "error",
      });
    } catch (e) {
      item.fail("the server did not answer; the operation may still run. Watch the page, then retry if needed.");
      return;
    }
    const data = await readJSON(res);
    if (res.status === 401) {
      forget("The server refused the token: enter it again.");
      item.refuse("the admin token was refused (401): enter it again.");
      return;
    }
    if (res.status === 202) {
      const next = operationURL(res, data, url);
      if (!next) { item.done("accepted; the server gave no operation URL to follow."); return; }
      item.progress(data.progress !== undefined ? String(data.progress) : "accepted");
      await follow(item, next);
      return;
    }
    if (!res.ok) { item.fail(describe(res, data)); return; }
    if (data.result && data.result !== "done") { item.done(String(data.result)); return; }
    item.done(data.duration ? `the server took ${data.duration}` : "");
  }
  function forget(msg) { token = ""; tokenState(msg); }

  function confirmThen(title, text, okLabel, action) {
    const d = $("confirm");
    $("confirm-h").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = okLabel;
    const back = document.activeElement;
    let go = false;
    // Escape closes the dialog too: the same path, without the action.
    d.onclose = () => {
      $("confirm-ok").onclick = null;
      $("confirm-cancel").onclick = null;
      d.onclose = null;
      if (back && back.focus) back.focus();
      if (go) action();
    };
    $("confirm-ok").onclick = () => { go = true; d.close(); };
    $("confirm-cancel").onclick = () => d.close();
    d.showModal();
    $("confirm-cancel").focus();
  }
  const EXPLAIN = {
    "soft-restart": "starts a new instance and hands every shard's session over to it: no events are lost and no IDENTIFY is spent.",
    "restart": "stops the instance and starts a new one: its shards go offline until they identify again.",
  };
  function onControl(e) {
    const b = e.target.closest("button[data-op]");
    if (!b) return;
    const op = b.dataset.op;
    const verb = op === "restart" ? "Restart" : "Soft restart";
    if (b.dataset.cluster !== undefined) {
      const id = b.dataset.cluster;
      confirmThen(`${verb} cluster ${id}?`, `A ${verb.toLowerCase()} of cluster ${id} ${EXPLAIN[op]}`, `${verb} cluster ${id}`,
        () => operate(`${verb} of cluster ${id}`, `clusters/${encodeURIComponent(id)}/${op}`));
    } else if (b.dataset.service !== undefined) {
      const name = b.dataset.service;
      confirmThen(`${verb} service ${name}?`, `A ${verb.toLowerCase()} of service ${name} replaces its instance; requests wait meanwhile.`,
        `${verb} service ${name}`, () => operate(`${verb} of service ${name}`, `services/${encodeURIComponent(name)}/${op}`));
    }
  }

  function setupOperator() {
    if (!opsBase) return;
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const input = $("token");
      token = input.value.trim();
      input.value = "";
      tokenState(token ? "" : "The token was empty: type the admin token, then Use token.");
    });
    $("forget").addEventListener("click", () => forget());
    $("reshard-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const shards = Number($("rs-shards").value || 0), clusters = Number($("rs-clusters").value || 0);
      if (!Number.isInteger(shards) || !Number.isInteger(clusters) || shards < 0 || clusters < 0) {
        const item = opItem("Reshard");
        item.refuse("shards and clusters must be whole numbers, 0 or more.");
        return;
      }
      const what = `${shards || "Discord's recommended number of"} shards in ${clusters || "the current number of"} clusters`;
      confirmThen("Reshard the fleet?", `A new generation identifies with ${what} while the current one serves, then takes over. It can take minutes.`,
        "Reshard", () => operate(`Reshard to ${what}`, "reshard", { shards, clusters }));
    });
    document.addEventListener("click", onControl);
    for (const th of document.querySelectorAll(".ctl-col")) th.hidden = false;
    $("operator").hidden = false;
  }

  function setup() {
    $("clusters").addEventListener("click", (e) => {
      const b = e.target.closest(".tile");
      if (!b) return;
      const id = Number(b.dataset.shard);
      selected = selected === id ? null : id;
      if (view) renderDetails(view);
    });
    $("find").addEventListener("submit", (e) => {
      if (!view) return; // no figures yet: the server answers
      e.preventDefault();
      showLookup($("guild").value);
    });
    $("select-hint").hidden = false;
    setupOperator();
    schedule();
  }
  setup();
})();
