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
