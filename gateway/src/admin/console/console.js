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
// Idempotency keys: the store's figures, and per route that honours keys
// each event's count (executed, replayed, 409, 422, ...), from /status.
//
// Every value from the server is written as text (textContent, append of
// strings): namespaces and upstream addresses come from registrations,
// route prefixes and methods from the config.
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

// The Idempotency-Key panel (docs/idempotency.md), from /status "idempotency"
// and each route's rule in /status "routes". Columns: [event, title, whether a
// non-zero count is trouble an operator should look at].
const KEY_EVENTS = [
  ["keyed", "keyed", false],
  ["executed", "executed", false],
  ["replayed", "replayed", false],
  ["conflict", "409 in flight", false],
  ["mismatch", "422 mismatch", true],
  ["outcome_unknown", "outcome unknown", true],
  ["not_stored", "not stored", true],
  ["missing_key", "missing key", false],
  ["invalid_key", "invalid key", false],
  ["store_failed_open", "store failed open", true],
  ["store_failed_closed", "store failed closed", true],
];

// A count from /status as text: "-" when it is not a number.
function count(value) {
  const n = Number(value);
  return value === undefined || value === null || !Number.isFinite(n) ? "-" : String(n);
}

// "Store: memory, fail-closed ... 2 record(s), 1.2 kB, ...": the memory figures only
// for the memory store (etcd keeps its records, and drops them, itself).
function keyStoreLine(idem) {
  const kind = String(idem.store ?? "-");
  const open = idem.fail_open === true;
  const line = el("p", "");
  line.id = "idempotency-store";
  for (const [name, key] of [["entries", "entries"], ["stored_bytes", "storedBytes"], ["evictions", "evictions"], ["expirations", "expirations"], ["store_errors", "storeErrors"]]) {
    line.dataset[key] = count(idem[name]);
  }
  line.dataset.store = kind;
  line.dataset.failOpen = String(open);
  line.append("Store: " + kind + ", " + (open ? "fail-open (keyed requests are forwarded without the guarantee when it fails)" : "fail-closed (keyed requests are refused 503 when it fails)") + ". ");
  if (kind === "memory") {
    line.append(count(idem.entries) + " record(s), " + bytes(Number(idem.stored_bytes)) + ", " + count(idem.evictions) + " evicted before their ttl, " + count(idem.expirations) + " expired. ");
  }
  const errors = el("span", Number(idem.store_errors) > 0 ? "warn" : "", count(idem.store_errors) + " store error(s).");
  line.append(errors);
  return line;
}

// The routes to list, in config order: each one whose rule honours keys, then
// any prefix with counts but no such rule now (a reload turned it off or
// removed it; its counts stay). [prefix, rule text].
function keyRoutes(routes, counted) {
  const listed = new Map();
  for (const r of routes) {
    const rule = r && r.idempotency && typeof r.idempotency === "object" ? r.idempotency : null;
    const mode = rule ? String(rule.mode ?? "off") : "off";
    if (mode === "off" || listed.has(String(r.prefix))) continue;
    const methods = Array.isArray(rule.methods) ? rule.methods.map(String).join(", ") : "";
    listed.set(String(r.prefix), mode + (methods ? ": " + methods : ""));
  }
  for (const prefix of Object.keys(counted)) if (!listed.has(prefix)) listed.set(prefix, "off now");
  return [...listed];
}

function keyRow(prefix, rule, counts) {
  const row = el("tr", "");
  row.dataset.route = prefix;
  row.append(el("td", "", prefix), el("td", "nowrap", rule));
  for (const [event, , trouble] of KEY_EVENTS) {
    const cell = el("td", trouble && Number(counts[event]) > 0 ? "num warn" : "num", count(counts[event] ?? 0));
    cell.dataset.event = event;
    row.append(cell);
  }
  return row;
}

// Fills #idempotency; hidden when /status has no "idempotency" (an older gateway).
function keyPanel(status, routes) {
  const panel = document.getElementById("idempotency");
  const idem = status.idempotency && typeof status.idempotency === "object" ? status.idempotency : null;
  panel.hidden = !idem;
  if (!idem) return;
  const counted = idem.routes && typeof idem.routes === "object" ? idem.routes : {};
  const listed = keyRoutes(routes, counted);
  const title = el("h2", "", "Idempotency keys");
  if (!listed.length) {
    panel.replaceChildren(title, el("p", "muted", "No route honours Idempotency-Key."));
    return;
  }
  const head = el("tr", "", el("th", "", "route"), el("th", "", "rule"));
  for (const [, heading] of KEY_EVENTS) head.append(el("th", "", heading));
  const body = el("tbody", "");
  for (const [prefix, rule] of listed) {
    const counts = counted[prefix] && typeof counted[prefix] === "object" ? counted[prefix] : {};
    body.append(keyRow(prefix, rule, counts));
  }
  panel.replaceChildren(title, keyStoreLine(idem), el("table", "", el("thead", "", head), body));
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
  keyPanel(status, routes);
}

fetchHistory().then(poll);
setInterval(poll, POLL_MS);
setInterval(fetchHistory, HISTORY_MS);
