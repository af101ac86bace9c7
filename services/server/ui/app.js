// The vidx web UI: search, a grid of hits with thumbnails and score bars, and a player that
// plays the hit's clip from its start. No framework and no build step: served as is.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("vidx-token") || "", objectUrls: [] };

function headers(extra) {
  const result = Object.assign({}, extra || {});
  if (state.token) result.Authorization = "Bearer " + state.token;
  return result;
}

function say(text) { $("status").textContent = text; }

// Live streams are timed in wall-clock milliseconds; files in media time from their start.
const WALL_CLOCK_MS = 1e12;
function formatTime(ms) {
  if (ms >= WALL_CLOCK_MS) return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  const total = Math.floor(ms / 1000);
  const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return (h ? h + ":" + pad(m) : m) + ":" + pad(s) + "." + String(ms % 1000).padStart(3, "0").slice(0, 1);
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({}, options, { headers: headers((options || {}).headers) }));
  if (response.status === 401) {
    $("auth").hidden = false;
    throw new Error("this server needs an access token");
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    // A HEAD answer has no body: say what its status means here.
    if (response.status === 410) message = "its live footage is no longer kept (media.retention)";
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

// A URL the page can show: the path itself without auth; with a token, the bytes fetched
// with it (an <img> or <video> cannot send headers).
async function mediaUrl(path) {
  if (!state.token) return path;
  const blob = await (await api(path)).blob();
  const url = URL.createObjectURL(blob);
  state.objectUrls.push(url);
  return url;
}

// "site=north, group=lobby" → {site: "north", group: "lobby"}; the server checks them.
function labels(text) {
  const map = {};
  for (const pair of text.split(",")) {
    const at = pair.indexOf("=");
    if (at > 0) map[pair.slice(0, at).trim()] = pair.slice(at + 1).trim();
  }
  return map;
}

function request() {
  const body = { query: $("query").value, mode: $("mode").value, top_k: Number($("top_k").value) || 12 };
  const streams = $("stream").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (streams.length) body.stream_ids = streams;
  if ($("labels").value.trim()) body.labels = labels($("labels").value);
  if ($("from").value) body.from = new Date($("from").value).toISOString();
  if ($("to").value) body.to = new Date($("to").value).toISOString();
  return body;
}

function bars(scores) {
  const rows = document.createElement("div");
  rows.className = "bars";
  for (const channel of ["caption", "visual", "region", "lexical"]) {
    const value = scores && scores[channel];
    if (value === undefined || value === null) continue;
    const label = document.createElement("span");
    label.textContent = channel;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = Math.max(0, Math.min(1, value)) * 100 + "%";
    bar.appendChild(fill);
    const number = document.createElement("span");
    number.textContent = value.toFixed(2);
    rows.append(label, bar, number);
  }
  return rows;
}

function card(hit, rank) {
  const item = document.createElement("li");
  item.className = "hit";
  item.tabIndex = 0;
  item.dataset.id = hit.id;
  item.dataset.rank = String(rank);
  item.dataset.startMs = String(hit.start_ms);
  item.dataset.endMs = String(hit.end_ms);
  const frame = document.createElement("div");
  frame.className = "frame";
  const image = document.createElement("img");
  image.alt = hit.caption || hit.kind;
  frame.appendChild(image);
  if (hit.thumbnail_url) {
    mediaUrl(hit.thumbnail_url).then((url) => { image.src = url; }).catch(() => { image.alt = "no thumbnail"; });
  }
  if (hit.box) {
    // Drawn over the thumbnail once its shape is known (the frame keeps it, letterboxed).
    image.addEventListener("load", () => {
      const [x0, y0, x1, y1] = hit.box;
      const frameRatio = frame.clientWidth / frame.clientHeight;
      const imageRatio = image.naturalWidth / image.naturalHeight;
      let [left, top, width, height] = [0, 0, 1, 1];
      if (imageRatio > frameRatio) { height = frameRatio / imageRatio; top = (1 - height) / 2; }
      else { width = imageRatio / frameRatio; left = (1 - width) / 2; }
      const box = document.createElement("div");
      box.className = "box";
      box.style.left = (left + x0 * width) * 100 + "%";
      box.style.top = (top + y0 * height) * 100 + "%";
      box.style.width = (x1 - x0) * width * 100 + "%";
      box.style.height = (y1 - y0) * height * 100 + "%";
      frame.appendChild(box);
    });
  }
  const meta = document.createElement("div");
  meta.className = "meta";
  const caption = document.createElement("div");
  caption.className = "caption";
  caption.textContent = hit.caption || "[" + hit.kind + "]";
  const where = document.createElement("div");
  where.className = "where";
  where.textContent = formatTime(hit.start_ms) + " – " + formatTime(hit.end_ms) + " · " + hit.stream_id;
  const tags = Object.entries(hit.labels || {}).map(([key, value]) => key + "=" + value).join(", ");
  where.title = [hit.stream_id, tags, hit.model_rev].filter(Boolean).join(" · ");
  meta.append(caption, where, bars(hit.scores));
  if (hit.kind !== "subtitle" && hit.kind !== "caption") {
    const similar = document.createElement("button");
    similar.type = "button";
    similar.className = "similar";
    similar.textContent = "More like this";
    similar.addEventListener("click", (event) => {
      event.stopPropagation();
      search(null, { like_id: hit.id });
    });
    meta.appendChild(similar);
  }
  item.append(frame, meta);
  const open = () => play(hit);
  item.addEventListener("click", open);
  item.addEventListener("keydown", (event) => { if (event.key === "Enter") open(); });
  return item;
}

async function play(hit) {
  const player = $("player");
  const path = "/v1/clips/" + hit.id + ".mp4";
  say("Cutting the clip…");
  try {
    // HEAD cuts (or finds) the clip and says where the hit starts inside it.
    const head = await api(path, { method: "HEAD" });
    const offset = Number(head.headers.get("x-vidx-hit-offset-ms") || 0) / 1000;
    player.dataset.hitId = hit.id;
    player.dataset.clipStartMs = head.headers.get("x-vidx-clip-start-ms") || "0";
    player.dataset.hitStartMs = String(hit.start_ms);
    player.src = await mediaUrl(path);
    $("player-caption").textContent = (hit.caption || hit.kind) + " — " + formatTime(hit.start_ms) + " · " + hit.stream_id;
    $("player-panel").hidden = false;
    player.addEventListener("loadedmetadata", () => {
      player.currentTime = offset;
      player.play().catch(() => { /* autoplay may be refused: the controls remain */ });
    }, { once: true });
    say("");
    $("player-panel").scrollIntoView({ behavior: "smooth" });
  } catch (error) {
    say("Cannot play this moment: " + error.message);
  }
}

async function search(event, example) {
  if (event) event.preventDefault();
  for (const url of state.objectUrls.splice(0)) URL.revokeObjectURL(url);
  const list = $("hits");
  const body = request();
  if (example) {
    // Search by example: pictures and regions that look like it (a visual model is needed).
    Object.assign(body, example, { query: "" });
    if (!body.mode) body.mode = "visual";
  }
  say(example ? "Searching by example…" : "Searching…");
  try {
    const response = await api("/v1/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await response.json();
    list.replaceChildren(...answer.hits.map((hit, index) => card(hit, index + 1)));
    say(answer.hits.length ? answer.hits.length + " moments in " + answer.took_ms + " ms" : "No moment matches.");
    document.body.dataset.searched = String(Date.now());
  } catch (error) {
    list.replaceChildren();
    say("Search failed: " + error.message);
  }
}

$("search").addEventListener("submit", (event) => search(event));

// Drop a picture anywhere on the page to find the moments that look like it.
document.addEventListener("dragover", (event) => {
  event.preventDefault();
  document.body.classList.add("dropping");
});
document.addEventListener("dragleave", () => document.body.classList.remove("dropping"));
document.addEventListener("drop", (event) => {
  event.preventDefault();
  document.body.classList.remove("dropping");
  const file = [...(event.dataTransfer ? event.dataTransfer.files : [])].find((f) => f.type.startsWith("image/"));
  if (!file) { say("Drop a picture (JPEG, PNG) to search by example."); return; }
  const reader = new FileReader();
  reader.onload = () => search(null, { image: reader.result });
  reader.readAsDataURL(file);
});
$("save-token").addEventListener("click", () => {
  state.token = $("token").value.trim();
  sessionStorage.setItem("vidx-token", state.token);
  $("auth").hidden = true;
  search();
});

// Pages: #search (the default), #jobs and #streams; the last two refresh while shown.
const pages = ["search", "jobs", "streams"];
let refreshTimer = null;

function showPage() {
  const page = pages.includes(location.hash.slice(1)) ? location.hash.slice(1) : "search";
  document.body.dataset.page = page;
  for (const name of pages) {
    $("page-" + name).hidden = name !== page;
    $("nav-" + name).classList.toggle("current", name === page);
  }
  clearInterval(refreshTimer);
  refreshTimer = null;
  say("");
  if (page === "jobs" || page === "streams") {
    const refresh = page === "jobs" ? () => { loadJobs(); loadReindex(); } : loadStreams;
    refresh();
    refreshTimer = setInterval(refresh, 1500);
  }
}

// The index's reindex (operator only: the panel stays hidden for other tenants and on
// nodes that cannot reindex).
function showReindex(status) {
  $("reindex-panel").hidden = false;
  const running = status.state === "building";
  $("reindex-start").disabled = running;
  const bar = $("reindex-progress");
  bar.max = Math.max(status.sources, 1);
  bar.value = status.sources_done + status.sources_skipped;
  if (status.state === "idle") {
    $("reindex-status").textContent = "";
    return;
  }
  let text = status.state + ": generation " + status.from_generation + " → " + status.generation
    + ", " + status.sources_done + " / " + status.sources + " sources, " + status.segments + " segments";
  if (status.sources_skipped) text += ", " + status.sources_skipped + " skipped (" + status.skipped.join("; ") + ")";
  if (status.error) text += ": " + status.error;
  $("reindex-status").textContent = text;
  $("reindex-panel").dataset.state = status.state;
}

async function loadReindex() {
  const response = await fetch("/v1/index/reindex", { headers: headers() });
  if (!response.ok) {
    $("reindex-panel").hidden = true;
    return;
  }
  showReindex(await response.json());
}

$("reindex-start").addEventListener("click", async () => {
  try {
    showReindex(await (await api("/v1/index/reindex", { method: "POST" })).json());
  } catch (error) {
    say("Reindex: " + error.message);
  }
});

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  if (text instanceof Node) td.appendChild(text); else td.textContent = text;
  return td;
}

function badge(stateName) {
  const span = document.createElement("span");
  span.className = "state " + stateName;
  span.textContent = stateName;
  return span;
}

async function loadJobs() {
  try {
    const answer = await (await api("/v1/jobs")).json();
    const rows = answer.jobs.slice().reverse().map((job) => {
      const tr = document.createElement("tr");
      tr.dataset.jobId = job.job_id;
      tr.dataset.state = job.state;
      const bar = document.createElement("progress");
      bar.max = 1;
      bar.value = job.progress;
      const segments = job.stream
        ? job.stream.segments + " (live)"
        : job.segments_done + " / " + job.segments_total + (job.segments_failed ? ", " + job.segments_failed + " failed" : "");
      const source = cell(job.source, "source");
      source.title = job.source;
      tr.append(source, cell(badge(job.stream ? job.stream.state : job.state)), cell(bar), cell(segments), cell(job.error, "error"));
      return tr;
    });
    $("jobs").querySelector("tbody").replaceChildren(...rows);
    $("jobs-empty").hidden = rows.length > 0;
  } catch (error) {
    say("Jobs: " + error.message);
  }
}

async function loadStreams() {
  try {
    const answer = await (await api("/v1/streams")).json();
    const rows = answer.streams.map((stream) => {
      const tr = document.createElement("tr");
      tr.dataset.jobId = stream.job_id;
      tr.dataset.state = stream.state;
      const state = badge(stream.state);
      if (stream.reason) state.title = stream.reason;
      const stop = document.createElement("button");
      stop.className = "stop";
      stop.textContent = "Stop";
      stop.disabled = stream.state === "stopped";
      stop.addEventListener("click", async () => {
        try {
          await api("/v1/streams/" + encodeURIComponent(stream.job_id) + "/stop", { method: "POST" });
          loadStreams();
        } catch (error) {
          say("Stop: " + error.message);
        }
      });
      tr.append(
        cell(stream.stream_id),
        cell(stream.source, "source"),
        cell(state),
        cell(String(stream.reconnects)),
        cell(String(stream.segments)),
        cell(stream.last_end_ms ? formatTime(stream.last_end_ms) : "—"),
        cell(stop),
      );
      return tr;
    });
    $("streams").querySelector("tbody").replaceChildren(...rows);
    $("streams-empty").hidden = rows.length > 0;
  } catch (error) {
    say("Streams: " + error.message);
  }
}

$("submit-job").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { source: $("job-source").value.trim() };
  const stream = $("job-stream").value.trim();
  if (stream) body.stream_id = stream;
  if ($("job-labels").value.trim()) body.labels = labels($("job-labels").value);
  try {
    const answer = await (await api("/v1/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    })).json();
    say("Job " + answer.job_id + " accepted.");
    $("job-source").value = "";
    $("job-stream").value = "";
    $("job-labels").value = "";
    loadJobs();
  } catch (error) {
    say("Not accepted: " + error.message);
  }
});

window.addEventListener("hashchange", showPage);
showPage();
