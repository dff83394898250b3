// Discovery's live console. The whole view comes from /api/services; an
// EventSource per namespace (/api/watch) says at once when an available set
// changes, and a poll every few seconds catches what changes without an event
// (check times and latencies, unavailable and pending instances). When
// discovery cannot be reached the last view stays, marked stale, until it
// answers again.
//
// Charts: per namespace, available and total instances over the last 15
// minutes, and this replica's registrations and failed checks per second,
// from /api/trends (a sample every 5 s, kept by discovery) with the newest
// view as the last point. The cluster view polls /api/cluster every second:
// the replicas (down within a second of not answering, or once their etcd
// lease ends), etcd's members and who watches each replica. Maintenance is
// switched per instance with PUT or DELETE /api/maintenance, sending the
// token typed in the page (kept in the password field only) as
// Authorization: Bearer.
//
// Every value from the server is written as text (textContent, append of
// strings): namespaces and hosts are whatever someone registered.
"use strict";

const POLL_MS = 3000;
const TICK_MS = 1000;
const FETCH_TIMEOUT_MS = 2500;
// A browser keeps at most six HTTP/1.1 connections to one host: streams for
// more namespaces would starve the fetches, so the rest are polled only.
const MAX_STREAMS = 4;
const STATUSES = ["pending", "available", "unavailable"];
const TRENDS_MS = 5000;
const CLUSTER_MS = 1000;
const SPAN_S = 15 * 60;
// Namespaces with more instances than this start with their table folded.
const OPEN_UP_TO = 20;

const view = {
  services: null, // the last /api/services answer
  updatedAt: null, // Date.now() when it arrived
  updates: 0,
  live: false,
  problem: "",
  streams: new Map(), // namespace -> EventSource
  inFlight: null,
  again: false,
  trends: [], // /api/trends points, oldest first
  trendsSince: 0,
  skewMs: 0, // discovery's clock minus this browser's
  cluster: null, // the last /api/cluster answer
  clusterProblem: "",
  action: null, // the last maintenance change: {ok, text}
};

async function fetchTrends() {
  try {
    const answer = await fetchJson("/api/trends?since=" + view.trendsSince);
    if (!answer || !Array.isArray(answer.points)) return;
    const now = Number(answer.now_unix_ms);
    if (Number.isFinite(now)) view.skewMs = now - Date.now();
    for (const p of answer.points) {
      const at = Number(p && p.at_unix_ms);
      if (!Number.isFinite(at) || at <= view.trendsSince) continue;
      view.trends.push(p);
      view.trendsSince = at;
    }
    const oldest = Date.now() + view.skewMs - SPAN_S * 1000;
    while (view.trends.length && Number(view.trends[0].at_unix_ms) < oldest) view.trends.shift();
  } catch (e) {
    // refresh() says whether discovery is away; the charts keep what they have.
  }
}

async function fetchCluster() {
  try {
    const answer = await fetchJson("/api/cluster");
    if (!answer || !Array.isArray(answer.replicas)) throw new Error("/api/cluster answered without replicas");
    view.cluster = answer;
    view.clusterProblem = "";
  } catch (e) {
    view.clusterProblem = e && e.name === "AbortError" ? "no answer" : String((e && e.message) || e);
  }
  renderCluster();
}

// The token typed in the page, if any: read from the field when used, never stored.
function token() {
  const field = document.getElementById("token");
  return field ? field.value.trim() : "";
}

// PUT (on) or DELETE (off) /api/maintenance for one instance.
async function setMaintenance(namespace, inst, on, button) {
  button.disabled = true;
  const headers = { "content-type": "application/json" };
  const bearer = token();
  if (bearer) headers.authorization = "Bearer " + bearer;
  const what = namespace + " " + addressOf(inst);
  try {
    const res = await fetch("/api/maintenance", {
      method: on ? "PUT" : "DELETE",
      headers,
      cache: "no-store",
      body: JSON.stringify({ namespace, host: String(inst.host), port: Number(inst.port) }),
    });
    let message = "";
    if (!res.ok) {
      const answer = await res.json().catch(() => null);
      message = answer && answer.message ? String(answer.message) : "answered " + res.status;
    }
    view.action = res.ok
      ? { ok: true, text: what + (on ? ": in maintenance (out of rotation)." : ": out of maintenance.") }
      : { ok: false, text: what + ": not changed: " + message + (res.status === 401 ? " (type the registration token above)" : "") };
  } catch (e) {
    view.action = { ok: false, text: what + ": not changed: " + String((e && e.message) || e) };
  } finally {
    button.disabled = false;
  }
  showAction();
  refresh();
}

function showAction() {
  const line = document.getElementById("action");
  line.hidden = !view.action;
  if (!view.action) return;
  line.dataset.result = view.action.ok ? "ok" : "error";
  line.className = view.action.ok ? "muted" : "stale";
  line.textContent = view.action.text;
}

function addressOf(inst) {
  return String(inst.host).includes(":") ? "[" + inst.host + "]:" + inst.port : inst.host + ":" + inst.port;
}

function age(ms) {
  if (!Number.isFinite(ms)) return "-";
  let s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return s + "s";
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  s %= 60;
  if (d > 0) return d + "d " + h + "h";
  if (h > 0) return h + "h " + m + "m";
  return m + "m " + s + "s";
}

async function fetchJson(url) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
  try {
    const res = await fetch(url, { cache: "no-store", signal: abort.signal });
    if (!res.ok) throw new Error(url + " answered " + res.status);
    return await res.json();
  } finally {
    clearTimeout(timer);
  }
}

// One fetch at a time; a request for another while one runs makes one more after it.
function refresh() {
  if (view.inFlight) {
    view.again = true;
    return view.inFlight;
  }
  view.inFlight = (async () => {
    try {
      const services = await fetchJson("/api/services");
      if (services === null || typeof services !== "object" || Array.isArray(services)) {
        throw new Error("/api/services answered something else than an object");
      }
      view.services = services;
      // The registry's store (memory or etcd): when etcd is unreachable this
      // replica serves its last mirror, and the page says so.
      view.store = await fetchJson("/api/store").catch(() => null);
      view.updatedAt = Date.now();
      view.updates += 1;
      view.live = true;
      view.problem = "";
      watch(Object.keys(services));
    } catch (e) {
      view.live = false;
      view.problem = e && e.name === "AbortError" ? "no answer" : String((e && e.message) || e);
    } finally {
      view.inFlight = null;
    }
    render();
    if (view.again) {
      view.again = false;
      refresh();
    }
  })();
  return view.inFlight;
}

// Keeps one watch stream open per namespace shown (the first MAX_STREAMS by name).
function watch(namespaces) {
  const wanted = new Set(namespaces.slice().sort().slice(0, MAX_STREAMS));
  for (const [namespace, source] of view.streams) {
    if (!wanted.has(namespace)) {
      source.close();
      view.streams.delete(namespace);
    }
  }
  for (const namespace of wanted) {
    if (view.streams.has(namespace)) continue;
    const source = new EventSource("/api/watch?namespace=" + encodeURIComponent(namespace));
    source.addEventListener("instances", () => refresh());
    source.onerror = () => {
      // The browser retries by itself unless the stream was refused; a fetch
      // tells whether discovery is gone (stale) or back.
      if (source.readyState === EventSource.CLOSED && view.streams.get(namespace) === source) {
        view.streams.delete(namespace);
      }
      refresh();
    };
    view.streams.set(namespace, source);
  }
}

function cell(text, className) {
  return el("td", className || "", text);
}

function instanceRow(namespace, inst, now) {
  const status = STATUSES.includes(inst.status) ? inst.status : "unknown";
  const row = el("tr", inst.maintenance ? "maintenance" : "");
  const address = addressOf(inst);
  row.dataset.namespace = namespace;
  row.dataset.instance = address;
  row.dataset.status = String(inst.status);
  const checked = Number(inst.last_check_unix_ms);
  const latency = inst.last_check_latency_ms;
  row.append(
    cell(address),
    cell(String(inst.status), "status status-" + status),
    cell(inst.since_unix_ms ? age(now - Number(inst.since_unix_ms)) : "-", "num"),
    cell(checked ? age(now - checked) + " ago" : "never", "num"),
    cell(latency === null || latency === undefined ? "-" : Number(latency).toFixed(1) + " ms", "num"),
    cell(String(inst.consecutive_failures ?? "-"), "num"),
    cell(
      inst.maintenance
        ? "yes" + (inst.maintenance_since_unix_ms ? ", for " + age(now - Number(inst.maintenance_since_unix_ms)) : "")
        : "no",
    ),
    cell(inst.last_check_error ? String(inst.last_check_error) : "", "muted"),
    cell(String(inst.id ?? ""), "muted"),
  );
  const on = !inst.maintenance;
  const button = el("button", "maintenance-toggle", on ? "start maintenance" : "end maintenance");
  button.type = "button";
  button.dataset.action = on ? "start" : "end";
  button.addEventListener("click", () => setMaintenance(namespace, inst, on, button));
  row.append(el("td", "", button));
  return row;
}

// The charts' time span: the history there is, from 2 to 15 minutes.
function chartSpan() {
  const first = view.trends.length ? Number(view.trends[0].at_unix_ms) : NaN;
  const age = Number.isFinite(first) ? (Date.now() + view.skewMs - first) / 1000 : 0;
  return Math.min(SPAN_S, Math.max(120, age * 1.05));
}

// A namespace's chart: available and total over the last 15 minutes, the
// newest view as the last point.
function namespaceChart(namespace, list) {
  const now = Date.now() + view.skewMs;
  const available = [];
  const total = [];
  for (const p of view.trends) {
    const counts = p.namespaces && Array.isArray(p.namespaces[namespace]) ? p.namespaces[namespace] : null;
    const ago = (now - Number(p.at_unix_ms)) / 1000;
    available.push([ago, counts ? Number(counts[0]) : null]);
    total.push([ago, counts ? Number(counts[1]) : null]);
  }
  available.push([0, list.filter((i) => i && i.status === "available").length]);
  total.push([0, list.length]);
  return lineChart({
    name: "available",
    title: "available (green) of registered (grey)",
    series: [
      { key: "registered", color: "#999", points: total },
      { key: "available", color: "#070", points: available },
    ],
    span: chartSpan(),
    format: (v) => String(Math.round(v)),
    width: 360,
    height: 70,
  });
}

// This replica's registrations and failed checks per second.
function registryCharts() {
  const now = Date.now() + view.skewMs;
  const at = (p) => (now - Number(p.at_unix_ms)) / 1000;
  const num = (v) => (v === null || v === undefined ? null : Number(v));
  const charts = el("div", "charts");
  charts.append(
    lineChart({
      name: "registrations",
      title: "registrations/s (this replica)",
      series: [{ key: "registrations", color: "#1f77b4", points: view.trends.map((p) => [at(p), num(p.registrations_per_second)]) }],
      span: chartSpan(),
      format: (v) => v.toFixed(2),
      height: 60,
    }),
    lineChart({
      name: "check-failures",
      title: "failed health checks/s (this replica)",
      series: [{ key: "check failures", color: "#d62728", points: view.trends.map((p) => [at(p), num(p.check_failures_per_second)]) }],
      span: chartSpan(),
      format: (v) => v.toFixed(2),
      height: 60,
    }),
  );
  return charts;
}

function renderCluster() {
  const box = document.getElementById("cluster");
  const cluster = view.cluster;
  if (!cluster) {
    box.replaceChildren(el("p", "muted", view.clusterProblem ? "Cluster view unavailable: " + view.clusterProblem : "Loading /api/cluster…"));
    return;
  }
  const parts = [el("h2", "", "Cluster")];
  if (view.clusterProblem) parts.push(el("p", "stale", "Cluster view not current: " + view.clusterProblem));
  const etcd = cluster.etcd && typeof cluster.etcd === "object" ? cluster.etcd : null;
  if (etcd) {
    const members = Array.isArray(etcd.members) ? etcd.members : [];
    const answering = members.filter((m) => m && m.answers).length;
    const line = el("p", "");
    line.id = "etcd";
    line.dataset.connected = String(Boolean(etcd.connected));
    line.dataset.writable = String(Boolean(etcd.writable));
    line.append(
      "etcd: ",
      el("span", etcd.connected ? "state-up" : "state-down", etcd.connected ? "connected" : "not connected"),
      ", ",
      el("span", etcd.writable ? "state-up" : "state-down", etcd.writable ? "writable" : "not writable"),
      "; " + answering + " of " + members.length + " member(s) answer" + (etcd.watch_endpoint ? "; watching " + String(etcd.watch_endpoint) : "") +
        (etcd.write_error ? "; " + String(etcd.write_error) : ""),
    );
    parts.push(line);
    const head = el("tr", "", el("th", "", "etcd member"), el("th", "", "answers"), el("th", "", "latency"), el("th", "", "error"));
    const body = el("tbody", "");
    for (const m of members) {
      if (!m || typeof m !== "object") continue;
      const row = el("tr", "");
      row.dataset.member = String(m.endpoint);
      row.append(
        cell(String(m.endpoint)),
        cell(m.answers ? "yes" : "no", m.answers ? "state-up" : "state-down"),
        cell(Number.isFinite(Number(m.latency_ms)) && m.latency_ms !== null ? Number(m.latency_ms).toFixed(1) + " ms" : "-", "num"),
        cell(m.error ? String(m.error) : "", "muted"),
      );
      body.append(row);
    }
    parts.push(el("table", "compact", el("thead", "", head), body));
  } else {
    parts.push(el("p", "muted", "Registry in memory: this replica is the only one (no etcd)."));
  }
  const head = el("tr", "");
  for (const title of ["replica", "state", "URL", "watched by", "detail"]) head.append(el("th", "", title));
  const body = el("tbody", "");
  for (const r of cluster.replicas) {
    if (!r || typeof r !== "object") continue;
    const state = r.state === "up" ? "up" : "down";
    const row = el("tr", "");
    row.dataset.replica = String(r.replica_id ?? "");
    row.dataset.state = state;
    let watchedBy;
    if (r.watchers_known && Array.isArray(r.watchers)) {
      // Per gateway (or address): the namespaces it watches here.
      const by = new Map();
      for (const w of r.watchers) {
        if (!w || typeof w !== "object") continue;
        const who = w.gateway_id ? String(w.gateway_id) + " (" + String(w.remote ?? "?") + ")" : String(w.remote ?? "unknown address");
        if (!by.has(who)) by.set(who, []);
        by.get(who).push(String(w.namespace));
      }
      watchedBy = el("td", "watchers");
      watchedBy.dataset.watchers = String(r.watchers.length);
      if (!by.size) watchedBy.append("no watch stream");
      for (const [who, namespaces] of by) watchedBy.append(el("div", "", who + ": " + namespaces.join(", ")));
    } else {
      watchedBy = el("td", "muted", "unknown");
      watchedBy.dataset.watchers = "unknown";
    }
    row.append(
      cell(String(r.replica_id ?? "(this replica)") + (r.this ? " (this one)" : "")),
      cell(state === "up" ? "up" : "down", "state-" + state),
      cell(r.advertise_url ? String(r.advertise_url) : "-"),
      watchedBy,
      cell(r.detail ? String(r.detail) : "", "muted"),
    );
    body.append(row);
  }
  parts.push(el("table", "", el("thead", "", head), body));
  box.replaceChildren(...parts);
}

function namespaceSection(namespace, instances, now) {
  const list = Array.isArray(instances) ? instances : [];
  const up = list.filter((i) => i && i.status === "available").length;
  const section = el("section", "namespace");
  section.dataset.namespace = namespace;
  const how = view.streams.has(namespace) ? "watched live" : "polled";
  section.append(el("h2", "", namespace), el("p", "muted", up + " of " + list.length + " available, " + how));
  section.append(el("div", "charts", namespaceChart(namespace, list)));
  const head = el("tr", "");
  for (const title of ["address", "status", "in state for", "last check", "latency", "failures in a row", "maintenance", "last error", "id", ""]) {
    head.append(el("th", "", title));
  }
  const table = el("table", list.length > OPEN_UP_TO ? "compact" : "", el("thead", "", head));
  const body = el("tbody", "");
  for (const inst of list) {
    if (inst && typeof inst === "object") body.append(instanceRow(namespace, inst, now));
  }
  table.append(body);
  section.append(collapsible("namespace\n" + namespace, list.length + " instance(s)", list.length <= OPEN_UP_TO, table));
  return section;
}

function render() {
  const now = Date.now();
  showLiveness(view, view.services !== null, "Discovery", age);
  const store = document.getElementById("store");
  const storeDown = view.live && view.store && view.store.reachable === false;
  store.hidden = !storeDown;
  store.textContent = storeDown
    ? "The registry store (" + String(view.store.backend) + ") is unreachable" +
      (view.store.detail ? " (" + String(view.store.detail) + ")" : "") +
      ": serving the last mirror; registrations and status changes wait until it is back."
    : "";

  if (!view.services) return;
  const names = Object.keys(view.services).sort();
  let total = 0;
  let up = 0;
  const sections = names.map((namespace) => {
    const list = Array.isArray(view.services[namespace]) ? view.services[namespace] : [];
    total += list.length;
    up += list.filter((i) => i && i.status === "available").length;
    return namespaceSection(namespace, list, now);
  });
  document.getElementById("summary").textContent = names.length
    ? names.length + " namespace(s), " + up + " of " + total + " instance(s) available."
    : "No instance has registered yet.";
  document.getElementById("namespaces").replaceChildren(...sections);
  document.getElementById("registry-charts").replaceChildren(registryCharts());
}

fetchTrends().then(refresh);
fetchCluster();
setInterval(refresh, POLL_MS);
setInterval(() => fetchTrends().then(render), TRENDS_MS);
setInterval(fetchCluster, CLUSTER_MS);
setInterval(render, TICK_MS);
