// The btembed gallery: plain DOM code over the JSON API (no build step, no outside requests).
"use strict";
const PAGE = 48;
const state = { offset: 0, total: 0 };
const $ = (id) => document.getElementById(id);

function status(text) { $("status").textContent = text || ""; }

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function thumbURL(path, size) {
  return "/api/thumb?size=" + (size || 256) + "&path=" + encodeURIComponent(path);
}

function card(path, lines, onClick) {
  const div = document.createElement("div");
  div.className = "card";
  div.dataset.path = path;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.alt = path;
  img.src = thumbURL(path);
  div.appendChild(img);
  for (const [cls, text] of lines) {
    const line = document.createElement("div");
    line.className = cls;
    line.textContent = text;
    div.appendChild(line);
  }
  div.title = path;
  if (onClick) div.addEventListener("click", () => onClick(path));
  return div;
}

async function showPage(offset) {
  const doc = await getJSON("/api/images?offset=" + offset + "&limit=" + PAGE);
  state.offset = offset;
  state.total = doc.total;
  const grid = $("gallery");
  grid.replaceChildren(...doc.items.map((item) => {
    const c = card(item.path, [["name", item.path]], searchPath);
    c.classList.add("thumb");
    return c;
  }));
  const pages = Math.max(1, Math.ceil(doc.total / PAGE));
  $("page").textContent = "page " + (Math.floor(offset / PAGE) + 1) + " of " + pages + " (" + doc.total + " images)";
  $("prev").disabled = offset === 0;
  $("next").disabled = offset + PAGE >= doc.total;
}

function showResults(doc) {
  $("query").textContent = doc.query;
  $("results").replaceChildren(...doc.results.map((hit) => {
    const c = card(hit.path, [["score", hit.score.toFixed(4)], ["name", hit.path]], searchPath);
    c.classList.add("result");
    c.dataset.score = hit.score;
    return c;
  }));
  $("neighbours").hidden = false;
  $("neighbours").scrollIntoView({ block: "start" });
}

async function searchPath(path) {
  status("");
  try { showResults(await getJSON("/api/search?k=12&path=" + encodeURIComponent(path))); }
  catch (e) { status(e.message); }
}

async function searchFile(file) {
  if (!file) return;
  status("searching with " + file.name + "…");
  const form = new FormData();
  form.append("image", file);
  form.append("k", "12");
  try { showResults(await getJSON("/api/search", { method: "POST", body: form })); status(""); }
  catch (e) { status(e.message); }
}

function dupQuery() {
  return "threshold=" + $("threshold").value + "&keep=" + $("keep").value;
}

async function showDuplicates() {
  $("threshold-value").textContent = Number($("threshold").value).toFixed(3);
  status("");
  let doc;
  try { doc = await getJSON("/api/duplicates?" + dupQuery()); }
  catch (e) { status(e.message); return; }
  const files = doc.groups.reduce((n, g) => n + g.members.length, 0);
  $("dup-summary").textContent = doc.groups.length + " groups, " + files + " images";
  $("blank").textContent = doc.blank.length ? "Blank (one flat colour), not grouped: " + doc.blank.join(", ") : "";
  $("duplicates").replaceChildren(...doc.groups.map((group, i) => {
    const box = document.createElement("div");
    box.className = "group";
    const title = document.createElement("h3");
    title.textContent = "Group " + (i + 1) + " · " + group.members.length + " images";
    const grid = document.createElement("div");
    grid.className = "grid";
    for (const m of group.members) {
      const lines = [["score", m.kept ? "kept" : m.score.toFixed(4)], ["name", m.path]];
      const c = card(m.path, lines, searchPath);
      if (m.kept) c.classList.add("kept");
      if (m.exact) { const b = document.createElement("span"); b.className = "badge exact"; b.textContent = "identical bytes"; c.appendChild(b); }
      grid.appendChild(c);
    }
    box.append(title, grid);
    return box;
  }));
}

async function downloadActions() {
  try {
    const doc = await getJSON("/api/actions?" + dupQuery());
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([JSON.stringify(doc, null, 2)], { type: "application/json" }));
    link.download = "actions.json";
    link.click();
    URL.revokeObjectURL(link.href);
  } catch (e) { status(e.message); }
}

function switchTo(view) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === view);
  $("view-gallery").hidden = view !== "gallery";
  $("view-duplicates").hidden = view !== "duplicates";
  if (view === "duplicates") showDuplicates();
}

async function start() {
  try {
    const info = await getJSON("/api/info");
    $("info").textContent = info.folder + " · " + info.images + " images · " + info.model + " · " + info.dim + "-d";
    $("threshold").value = info.duplicate_threshold;
    $("threshold").title = info.threshold_note;
    await showPage(0);
  } catch (e) { status(e.message); }
}

for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => switchTo(tab.dataset.view));
$("prev").addEventListener("click", () => showPage(Math.max(0, state.offset - PAGE)));
$("next").addEventListener("click", () => showPage(state.offset + PAGE));
$("upload-input").addEventListener("change", (e) => searchFile(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); searchFile(e.dataTransfer.files[0]); });
$("threshold").addEventListener("input", () => { $("threshold-value").textContent = Number($("threshold").value).toFixed(3); });
$("threshold").addEventListener("change", showDuplicates);
$("keep").addEventListener("change", showDuplicates);
$("download-actions").addEventListener("click", downloadActions);
start();
