// The gateway's admin console: polls /status every second and shows each
// route's ring, one row per instance, with request and error rates computed
// here from the counters of two successive polls, latency percentiles, idle
// pooled connections and the watch stream's state. When the gateway cannot be
// reached the last view stays, marked stale, until it answers again.
//
// Every value from the server is written as text (textContent, append of
// strings): namespaces and upstream addresses come from registrations.
"use strict";

const POLL_MS = 1000;
const FETCH_TIMEOUT_MS = 900;

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
};

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

function memberRow(namespace, member) {
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
    el("td", "", String(member.upstream)),
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
  const body = el("tbody", "");
  for (const member of members) {
    if (member && typeof member === "object") body.append(memberRow(namespace, member));
  }
  section.append(el("table", "", el("thead", "", head), body));
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
  document.getElementById("rings").replaceChildren(...rings.map((r) => ringSection(r, routes)));
}

poll();
setInterval(poll, POLL_MS);
