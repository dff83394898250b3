// What both live consoles (discovery's / and the gateway's admin /) share:
// building elements from text only, the clock, and showing whether the view
// is live or the last one kept while the service is unreachable. Loaded
// before each console's own script; its functions are globals of the page.
"use strict";

// An element whose children are nodes or strings (appended as text, never markup).
function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const child of children) node.append(child);
  return node;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString();
}

// Marks the page live, stale (the last view kept) or loading, and says so in
// #banner and #updated. `who` names the service ("Discovery"); `ago` formats
// milliseconds since the last update.
function showLiveness(view, hasView, who, ago) {
  document.body.dataset.state = view.live ? "live" : hasView ? "stale" : "loading";
  document.body.dataset.updates = String(view.updates);
  document.body.classList.toggle("stale", !view.live && hasView);
  const banner = document.getElementById("banner");
  if (view.live) {
    banner.hidden = true;
    banner.className = "";
  } else if (view.problem) {
    banner.hidden = false;
    banner.className = "stale";
    banner.textContent = view.updatedAt
      ? who + " is unreachable (" + view.problem + "): showing the last view, from " + clock(view.updatedAt) +
        " (" + ago(Date.now() - view.updatedAt) + " ago). Retrying."
      : who + " is unreachable (" + view.problem + "): nothing to show yet. Retrying.";
  }
  document.getElementById("updated").textContent = view.updatedAt
    ? "Last update " + clock(view.updatedAt) + "."
    : "No view yet.";
}

// Charts: inline SVG built with createElementNS and attributes, never markup.
const SVG_NS = "http://www.w3.org/2000/svg";

// An SVG element with `attrs` set as attributes; children are nodes or strings (text).
function svgEl(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  for (const child of children) node.append(child);
  return node;
}

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"];

// The i-th series' colour: ten distinct ones, then hues spread by the golden angle.
function seriesColor(i) {
  return i < PALETTE.length ? PALETTE[i] : "hsl(" + Math.round((i * 137.508) % 360) + ",55%,45%)";
}

// A small swatch of `color`, to tie a table row to its line in a chart.
function swatch(color) {
  return svgEl("svg", { width: 10, height: 10, class: "swatch", "aria-hidden": "true" }, svgEl("rect", { width: 10, height: 10, fill: color }));
}

// The `d` of a line through `points` ([secondsAgo, value|null], oldest
// first) over the last `span` seconds in a width x height box whose top is
// `top`; a null value breaks the line. Also how many points it drew.
function linePath(points, span, width, height, top) {
  let d = "";
  let count = 0;
  let pen = false;
  for (const [ago, value] of points) {
    if (value === null || value === undefined || !Number.isFinite(value) || !Number.isFinite(ago) || ago > span) {
      pen = false;
      continue;
    }
    const x = Math.max(0, Math.min(width, width * (1 - ago / span)));
    const y = height - 2 - (Math.max(0, value) / top) * (height - 4);
    d += (pen ? " L" : (d ? " M" : "M")) + x.toFixed(1) + " " + y.toFixed(1);
    pen = true;
    count += 1;
  }
  return { d, count };
}

// A line chart: `series` is [{key, color, points: [[secondsAgo, value|null], ...]}]
// over the last `span` seconds; `format` writes a value. The figure and each
// line carry data-* attributes (chart, key, points) a test or a user can read.
function lineChart({ name, title, series, span, format, width = 300, height = 80 }) {
  let max = 0;
  for (const s of series) {
    for (const [, v] of s.points) if (Number.isFinite(v) && v > max) max = v;
  }
  const top = max > 0 ? max * 1.1 : 1;
  const svg = svgEl("svg", { viewBox: "0 0 " + width + " " + height, width, height, class: "chart-svg", role: "img", "aria-label": title });
  svg.append(
    svgEl("rect", { x: 0, y: 0, width, height, class: "chart-frame" }),
    svgEl("line", { x1: 0, y1: height / 2, x2: width, y2: height / 2, class: "chart-grid" }),
  );
  let drawn = 0;
  for (const s of series) {
    const line = linePath(s.points, span, width, height, top);
    drawn += line.count;
    const path = svgEl("path", { d: line.d || "M0 " + (height - 2), stroke: s.color, fill: "none", "stroke-width": 1.5, class: "chart-line" });
    path.dataset.key = s.key;
    path.dataset.points = String(line.count);
    path.append(svgEl("title", {}, s.key));
    svg.append(path);
  }
  const figure = el("figure", "chart");
  figure.dataset.chart = name;
  figure.dataset.points = String(drawn);
  const axis = el("div", "chart-axis muted", el("span", "", Math.round(span / 60) + " min ago"), el("span", "", "now"));
  figure.append(el("figcaption", "", title + " · max " + format(max)), svg, axis);
  return figure;
}

// Bytes as text: 1.2 kB, 3.4 MB.
function bytes(n) {
  if (!Number.isFinite(n)) return "-";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i += 1;
  }
  return (i === 0 ? String(Math.round(n)) : n.toFixed(1)) + " " + units[i];
}

// Remembers which <details> are open across re-renders, by key.
const openState = new Map();

// A <details> that keeps its open state under `key` (`openByDefault` the first time).
function collapsible(key, summary, openByDefault, ...children) {
  const details = el("details", "collapsible", el("summary", "", summary), ...children);
  details.open = openState.has(key) ? openState.get(key) : openByDefault;
  details.addEventListener("toggle", () => openState.set(key, details.open));
  return details;
}
