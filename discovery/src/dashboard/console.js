// Discovery's live console. The whole view comes from /api/services; an
// EventSource per namespace (/api/watch) says at once when an available set
// changes, and a poll every few seconds catches what changes without an event
// (check times and latencies, unavailable and pending instances). When
// discovery cannot be reached the last view stays, marked stale, until it
// answers again.
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

const view = {
  services: null, // the last /api/services answer
  updatedAt: null, // Date.now() when it arrived
  updates: 0,
  live: false,
  problem: "",
  streams: new Map(), // namespace -> EventSource
  inFlight: null,
  again: false,
};

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
  const address = String(inst.host).includes(":") ? "[" + inst.host + "]:" + inst.port : inst.host + ":" + inst.port;
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
  return row;
}

function namespaceSection(namespace, instances, now) {
  const list = Array.isArray(instances) ? instances : [];
  const up = list.filter((i) => i && i.status === "available").length;
  const section = el("section", "namespace");
  section.dataset.namespace = namespace;
  const how = view.streams.has(namespace) ? "watched live" : "polled";
  section.append(el("h2", "", namespace), el("p", "muted", up + " of " + list.length + " available, " + how));
  const head = el("tr", "");
  for (const title of ["address", "status", "in state for", "last check", "latency", "failures in a row", "maintenance", "last error", "id"]) {
    head.append(el("th", "", title));
  }
  const table = el("table", "", el("thead", "", head));
  const body = el("tbody", "");
  for (const inst of list) {
    if (inst && typeof inst === "object") body.append(instanceRow(namespace, inst, now));
  }
  table.append(body);
  section.append(table);
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
}

refresh();
setInterval(refresh, POLL_MS);
setInterval(render, TICK_MS);
