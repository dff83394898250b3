// The gateway's admin console: polls /status every second and shows each
// route's ring, one row per instance, with request and error rates computed
// here from the counters of two successive polls, latency percentiles, idle
// pooled connections and the watch stream's state. When the gateway cannot be
// reached the last view stays, marked stale, until it answers again.
//
// Charts: the last 15 minutes per ring (requests/s, error rate, p99), one
// line per instance, from /status/history (the gateway keeps a point per
// instance every 5 s; fetched whole once, then only what is new) plus the
// newest figures of each /status poll as the line's last point.
//
// Every value from the server is written as text (textContent, append of
// strings): namespaces and upstream addresses come from registrations.
"use strict";

const POLL_MS = 1000;
const FETCH_TIMEOUT_MS = 900;
const HISTORY_MS = 5000;
const SPAN_S = 15 * 60;
// Rings with more instances than this start with their table folded.
const OPEN_UP_TO = 20;

const view = {
  status: null, // the last /status answer
  updatedAt: null, // Date.now() when it arrived
  updates: 0,
  live: false,
  problem: "",
  // "namespace\nupstream" -> {requests, errors, at} from the poll before, and the rates derived.
  previous: new Map(),
  rates: new Map(),
  busy: false,
  // "namespace\nupstream" -> [[at_unix_ms, requests/s, errors/s, p99_ms|null], ...], oldest first.
  history: new Map(),
  historySince: 0, // the newest point's time: the next fetch asks for what came after
  skewMs: 0, // the gateway's clock minus this browser's
  historyBusy: false,
  clients: null, // the previous poll's client counters, for byte rates
  clientRates: null,
};

async function fetchHistory() {
  if (view.historyBusy) return;
  view.historyBusy = true;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), 3000);
  try {
    const res = await fetch("/status/history?since=" + view.historySince, { cache: "no-store", signal: abort.signal });
    if (!res.ok) return;
    const answer = await res.json();
    if (!answer || !Array.isArray(answer.namespaces)) return;
    const now = Number(answer.now_unix_ms);
    if (Number.isFinite(now)) view.skewMs = now - Date.now();
    for (const ring of answer.namespaces) {
      for (const member of Array.isArray(ring && ring.members) ? ring.members : []) {
        const key = String(ring.namespace) + "\n" + String(member.upstream);
        const points = view.history.get(key) || [];
        for (const p of Array.isArray(member.points) ? member.points : []) {
          if (!Array.isArray(p) || !Number.isFinite(Number(p[0]))) continue;
          const at = Number(p[0]);
          if (points.length && at <= points[points.length - 1][0]) continue;
          points.push([at, Number(p[1]), Number(p[2]), p[3] === null ? null : Number(p[3])]);
          if (at > view.historySince) view.historySince = at;
        }
        view.history.set(key, points);
      }
    }
    // Keep a quarter hour: drop older points, and instances with none left.
    const oldest = Date.now() + view.skewMs - SPAN_S * 1000;
    for (const [key, points] of view.history) {
      while (points.length && points[0][0] < oldest) points.shift();
      if (!points.length) view.history.delete(key);
    }
  } catch (e) {
    // The /status poll says whether the gateway is away; charts keep what they have.
  } finally {
    clearTimeout(timer);
    view.historyBusy = false;
  }
}

function seconds(s) {
  if (!Number.isFinite(s)) return "-";
  return s < 10 ? s.toFixed(1) + "s" : Math.round(s) + "s";
}

// A member's figure, wherever /status puts it (flat, or under "stats").
function figure(member, ...names) {
  for (const name of names) {
    for (const source of [member, member && member.stats]) {
      if (source && typeof source === "object" && source[name] !== undefined && source[name] !== null) {
        const n = Number(source[name]);
        if (Number.isFinite(n)) return n;
      }
    }
  }
  return null;
}

function ms(value) {
  return value === null ? "-" : value.toFixed(1) + " ms";
}

async function poll() {
  if (view.busy) return;
  view.busy = true;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
  try {
    const res = await fetch("/status", { cache: "no-store", signal: abort.signal });
    if (!res.ok) throw new Error("/status answered " + res.status);
    const status = await res.json();
    if (!status || typeof status !== "object" || !Array.isArray(status.namespaces)) {
      throw new Error("/status answered without namespaces");
    }
    learnRates(status, performance.now());
    learnClients(status.clients, performance.now());
    view.status = status;
    view.updatedAt = Date.now();
    view.updates += 1;
    view.live = true;
    view.problem = "";
  } catch (e) {
    view.live = false;
    view.problem = e && e.name === "AbortError" ? "no answer" : String((e && e.message) || e);
  } finally {
    clearTimeout(timer);
    view.busy = false;
  }
  render();
}

// Rates per second from the counters' growth since the previous poll; a
// counter that went down (a restarted gateway) starts over.
function learnRates(status, at) {
  const seen = new Set();
  for (const ring of status.namespaces) {
    for (const member of Array.isArray(ring.members) ? ring.members : []) {
      const key = String(ring.namespace) + "\n" + String(member.upstream);
      seen.add(key);
      const requests = figure(member, "requests", "requests_total");
      const errors = figure(member, "errors", "errors_total");
      const before = view.previous.get(key);
      if (before && requests !== null && before.requests !== null && requests >= before.requests && at > before.at) {
        const span = (at - before.at) / 1000;
        const dr = requests - before.requests;
        const de = errors !== null && before.errors !== null && errors >= before.errors ? errors - before.errors : null;
        view.rates.set(key, { requests: dr / span, errors: de === null ? null : de / span, share: de === null || dr === 0 ? null : de / dr });
      } else {
        view.rates.delete(key);
      }
      view.previous.set(key, { requests, errors, at });
    }
  }
  for (const key of [...view.previous.keys()]) {
    if (!seen.has(key)) {
      view.previous.delete(key);
      view.rates.delete(key);
    }
  }
}

// Byte rates from the client counters of two successive polls.
function learnClients(clients, at) {
  if (!clients || typeof clients !== "object") {
    view.clients = null;
    view.clientRates = null;
    return;
  }
  const now = { received: Number(clients.bytes_received), sent: Number(clients.bytes_sent), at };
  const before = view.clients;
  if (before && now.received >= before.received && now.sent >= before.sent && at > before.at) {
    const span = (at - before.at) / 1000;
    view.clientRates = { received: (now.received - before.received) / span, sent: (now.sent - before.sent) / span };
  }
  view.clients = now;
}

function clientsLine(clients) {
  const line = document.getElementById("clients");
  if (!clients || typeof clients !== "object") {
    line.textContent = "";
    return;
  }
  const open = Number(clients.connections);
  const max = Number(clients.connections_max);
  line.dataset.connections = String(open);
  line.dataset.connectionsMax = String(max);
  line.dataset.bytesReceived = String(Number(clients.bytes_received));
  line.dataset.bytesSent = String(Number(clients.bytes_sent));
  const rates = view.clientRates;
  line.textContent =
    "Client connections: " + open + " open, " + max + " at most since start. Bytes in " + bytes(Number(clients.bytes_received)) +
    (rates ? " (" + bytes(rates.received) + "/s)" : "") + ", out " + bytes(Number(clients.bytes_sent)) +
    (rates ? " (" + bytes(rates.sent) + "/s)" : "") + ".";
}

// A member's chart points: its history, then the /status window as the newest point.
function memberSeries(namespace, member, pick) {
  const key = String(namespace) + "\n" + String(member.upstream);
  const now = Date.now() + view.skewMs;
  const points = (view.history.get(key) || []).map((p) => [(now - p[0]) / 1000, pick(p[1], p[2], p[3])]);
  const rps = figure(member, "requests_per_second");
  const eps = figure(member, "errors_per_second");
  if (rps !== null || eps !== null) points.push([0, pick(rps ?? 0, eps ?? 0, figure(member, "p99_ms"))]);
  return points;
}

// The charts' time span: the history there is, from 2 to 15 minutes.
function chartSpan() {
  const now = Date.now() + view.skewMs;
  let oldest = now;
  for (const points of view.history.values()) if (points.length && points[0][0] < oldest) oldest = points[0][0];
  return Math.min(SPAN_S, Math.max(120, ((now - oldest) / 1000) * 1.05));
}

// Error rate in percent: errors over answered tries (null without either).
function errorShare(rps, eps) {
  const all = Math.max(rps, eps);
  return all > 0 ? (100 * eps) / all : null;
}

function ringCharts(namespace, members, colors) {
  const charts = el("div", "charts");
  const kinds = [
    ["requests", "requests/s", (r) => r, (v) => v.toFixed(1)],
    ["errors", "error rate", (r, e) => errorShare(r, e), (v) => v.toFixed(1) + "%"],
    ["p99", "p99 latency", (r, e, p) => p, (v) => v.toFixed(1) + " ms"],
  ];
  for (const [name, title, pick, format] of kinds) {
    const series = members.map((m) => ({
      key: String(m.upstream),
      color: colors.get(String(m.upstream)),
      points: memberSeries(namespace, m, pick),
    }));
    charts.append(lineChart({ name, title: title, series, span: chartSpan(), format }));
  }
  return charts;
}

function memberRow(namespace, member, color) {
  const key = String(namespace) + "\n" + String(member.upstream);
  const rate = view.rates.get(key);
  const row = el("tr", "");
  row.dataset.namespace = String(namespace);
  row.dataset.upstream = String(member.upstream);
  row.dataset.rate = rate ? rate.requests.toFixed(2) : "";
  const state = [];
  if (member.cooling_down) state.push("cooling down");
  if (member.held_from_before_reconnect) state.push("held from before a reconnect");
  if (member.draining || member.maintenance) state.push("draining");
  // Passive health: the wrong answers it gave, by kind (stray bytes, malformed, cut short, wrong request id).
  const faults = member.faults && typeof member.faults === "object" ? Object.entries(member.faults) : [];
  const wrong = faults.filter(([, n]) => Number(n) > 0).map(([kind, n]) => String(kind).replace(/_/g, " ") + " " + Number(n));
  if (wrong.length) state.push("wrong answers: " + wrong.join(", "));
  const idle = figure(member, "pool_idle", "idle_connections", "idle");
  const requests = figure(member, "requests", "requests_total");
  row.append(
    el("td", "", swatch(color), String(member.upstream)),
    el("td", "num", rate ? rate.requests.toFixed(1) : "-"),
    el("td", "num", rate && rate.errors !== null ? rate.errors.toFixed(1) : "-"),
    el("td", "num", rate && rate.share !== null ? (rate.share * 100).toFixed(1) + "%" : "-"),
    el("td", "num", ms(figure(member, "p50_ms", "latency_p50_ms"))),
    el("td", "num", ms(figure(member, "p99_ms", "latency_p99_ms"))),
    el("td", "num", idle === null ? "-" : String(idle)),
    el("td", "num", requests === null ? "-" : String(requests)),
    el("td", member.cooling_down ? "cooling" : state.length ? "held" : "", state.length ? state.join("; ") : "in rotation"),
  );
  return row;
}

function ringSection(ring, routes) {
  const namespace = String(ring.namespace);
  const members = Array.isArray(ring.members) ? ring.members : [];
  const watch = ring.watch && typeof ring.watch === "object" ? ring.watch : {};
  const section = el("section", "ring");
  section.dataset.namespace = namespace;
  const prefixes = routes.filter((r) => r && String(r.namespace) === namespace).map((r) => String(r.prefix));
  section.append(el("h2", "", namespace));
  section.append(el("p", "muted", "Routes: " + (prefixes.length ? prefixes.join(", ") : "none") + ". Ring version " + String(ring.ring_version ?? "-") + ", " + members.length + " member(s)."));
  const watchState = String(watch.state ?? "unknown");
  const line = el("p", "");
  line.append("Watch: ", el("span", watchState === "connected" ? "watch-connected" : "watch-other", watchState));
  line.append(", confirmed " + seconds(Number(watch.confirmed_age_seconds)) + " ago (last change " + seconds(Number(watch.snapshot_age_seconds)) + " ago), " + String(watch.reconnects ?? 0) + " reconnect(s)");
  const grace = Number(watch.relearn_grace_remaining_seconds);
  if (Number.isFinite(grace) && grace > 0) line.append(", relearning for " + seconds(grace));
  line.dataset.watch = watchState;
  section.append(line);
  const source = ring.discovery && typeof ring.discovery === "object" ? ring.discovery : null;
  if (source) {
    const how = String(source.source ?? "-");
    const url = source.source === "lookup" ? source.lookup_url : source.watch_url;
    section.append(el("p", "muted", "Instances learnt by " + how + (url ? " from " + String(url) : "") + "."));
  }
  const head = el("tr", "");
  for (const title of ["upstream", "req/s", "errors/s", "error rate", "p50", "p99", "pool idle", "requests", "state"]) {
    head.append(el("th", "", title));
  }
  const listed = members.filter((m) => m && typeof m === "object");
  // Colours follow the upstreams' order, so an instance keeps its colour between polls.
  const colors = new Map(listed.map((m) => String(m.upstream)).sort().map((u, i) => [u, seriesColor(i)]));
  section.append(ringCharts(namespace, listed, colors));
  const body = el("tbody", "");
  for (const member of listed) body.append(memberRow(namespace, member, colors.get(String(member.upstream))));
  const table = el("table", listed.length > OPEN_UP_TO ? "compact" : "", el("thead", "", head), body);
  section.append(collapsible("ring\n" + namespace, listed.length + " instance(s)", listed.length <= OPEN_UP_TO, table));
  return section;
}

function render() {
  showLiveness(view, view.status !== null, "The gateway", (ms) => seconds(ms / 1000));
  if (!view.status) return;
  const status = view.status;
  const routes = Array.isArray(status.routes) ? status.routes : [];
  const rings = status.namespaces.filter((r) => r && typeof r === "object");
  const members = rings.reduce((n, r) => n + (Array.isArray(r.members) ? r.members.length : 0), 0);
  document.getElementById("summary").textContent =
    rings.length + " ring(s), " + members + " instance(s) in rotation; discovery at " + String(status.discovery_url ?? "-") + ".";
  clientsLine(status.clients);
  document.getElementById("rings").replaceChildren(...rings.map((r) => ringSection(r, routes)));
}

fetchHistory().then(poll);
setInterval(poll, POLL_MS);
setInterval(fetchHistory, HISTORY_MS);
