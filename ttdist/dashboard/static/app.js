// The live cluster page: polls /api/status and redraws in place (no reloads).
"use strict";

const history = [];
const replicaCards = new Map();
let historySeconds = 600;
let pollMs = 1000;
let lastPointTime = null;

const COLORS = ["#4a78c2", "#e08a2c", "#2e9d5b", "#9b59b6", "#d0363b", "#16a2b8", "#7f8c8d", "#c0a000"];

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children || []) node.appendChild(child);
  return node;
}

function setText(id, text) { document.getElementById(id).textContent = text; }

function fmtNum(v, digits) {
  if (v === null || v === undefined) return "-";
  return Number(v).toLocaleString("en-US", {maximumFractionDigits: digits, minimumFractionDigits: digits});
}
function fmtInt(v) { return fmtNum(v, 0); }
function fmtAxis(v) { return fmtNum(v, Number.isInteger(v) || v >= 100 ? 0 : 1); }
function fmtSeconds(v) {
  if (v === null || v === undefined) return "-";
  if (v < 1) return `${fmtNum(v * 1000, v < 0.01 ? 1 : 0)} ms`;
  return `${fmtNum(v, 2)} s`;
}
function fmtPerc(v) { return v === null || v === undefined ? "-" : `${fmtNum(v * 100, 1)}%`; }
function fmtGiB(bytes) { return `${fmtNum(bytes / 2 ** 30, 2)} GiB`; }
function fmtTime(unix) { return new Date(unix * 1000).toLocaleTimeString("en-GB", {hour12: false}); }

function renderSummary(data) {
  const s = data.summary;
  setText("model", (data.models || []).length ? data.models.map(m => m.name).join(", ") : data.model);
  setText("policy", data.policy);
  setText("sum-replicas", `${s.replicas_ready} / ${s.replicas_total}`);
  setText("sum-replicas-sub", s.replicas_failed ? `${s.replicas_failed} failed` : "");
  setText("sum-running", fmtInt(s.requests_running));
  setText("sum-waiting", fmtInt(s.requests_waiting));
  setText("sum-tps", fmtNum(s.tokens_per_second, 1));
  const latency = (id, summary, unit) => {
    const none = summary.count === 0;
    setText(id, none ? "-" : fmtSeconds(summary.p50));
    setText(`${id}-sub`, none ? `no ${unit} yet` : `p99 ${fmtSeconds(summary.p99)} · ${fmtInt(summary.count)} ${unit}`);
  };
  latency("sum-ttft", s.ttft_seconds, "requests");
  latency("sum-itl", s.inter_token_seconds, "tokens");
  setText("sum-kv", fmtPerc(s.kv_cache_usage_perc));
  setText("sum-kv-sub", `${fmtInt(s.kv_pages_used)} of ${fmtInt(s.kv_pages_total)} pages`);
  setText("sum-gen", fmtInt(s.generation_tokens_total));
  setText("sum-prompt", `${fmtInt(s.prompt_tokens_total)} prompt tokens`);
}

// A cluster of several models: one row per model, its pool added up as the summary is.
function renderModels(models) {
  document.getElementById("models-section").hidden = models.length < 2;
  document.getElementById("models-body").replaceChildren(...models.map(m => el("tr", {"data-model": m.name}, [
    el("td", {class: "kind", text: m.name}), el("td", {text: m.policy}),
    el("td", {text: `${m.summary.replicas_ready} / ${m.summary.replicas_total}`}),
    el("td", {text: fmtInt(m.summary.requests_running)}), el("td", {text: fmtInt(m.summary.requests_waiting)}),
    el("td", {text: fmtNum(m.summary.tokens_per_second, 1)}),
    el("td", {text: m.summary.ttft_seconds.count ? fmtSeconds(m.summary.ttft_seconds.p50) : "-"}),
    el("td", {text: fmtPerc(m.summary.kv_cache_usage_perc)}),
    el("td", {class: "autoscale", text: fmtAutoscale(m.autoscale)}),
  ])));
}

// A model's autoscaled pool: its size, bounds, signal target and decisions so far ("fixed": no autoscaling).
function fmtAutoscale(a) {
  if (!a) return "fixed";
  return `${a.replicas} in ${a.min_replicas}..${a.max_replicas}, ${a.signal} ${a.target} · ${a.scale_ups_total} up, ${a.scale_downs_total} down`;
}

function buildReplicaCard(replica) {
  const rows = Math.max(1, ...replica.chips.map(c => c.row + 1));
  const cols = Math.max(1, ...replica.chips.map(c => c.col + 1));
  const stat = (name, key) => [el("dt", {text: name}), el("dd", {"data-stat": key})];
  const mesh = el("div", {class: "mesh", style: `grid-template-columns: repeat(${cols}, 46px)`});
  const chips = new Map();
  for (const chip of replica.chips) {
    const cell = el("div", {class: "chip", "data-row": chip.row, "data-col": chip.col,
                            style: `grid-row: ${chip.row + 1}; grid-column: ${chip.col + 1}`}, [
      el("div", {class: "w"}), el("div", {class: "kv"}),
      el("span", {class: "pos", text: `${chip.row},${chip.col}`}), el("span", {class: "pct"}),
    ]);
    chips.set(`${chip.row},${chip.col}`, cell);
    mesh.appendChild(cell);
  }
  const card = el("article", {class: "replica", "data-replica-id": replica.replica_id}, [
    el("header", {}, [el("h3", {text: replica.replica_id}), el("span", {class: "badge"})]),
    el("div", {class: "where"}),
    el("dl", {class: "stats"}, [
      ...stat("running", "running"), ...stat("waiting", "waiting"), ...stat("tokens / s", "tps"),
      ...stat("KV pages", "kv"), ...stat("TTFT p50", "ttft"), ...stat("restarts", "restarts"),
      ...stat("heartbeat", "heartbeat"),
    ]),
    el("div", {class: "bar", title: "KV pages in use"}, [el("div", {class: "kv-fill"})]),
    mesh,
    el("div", {class: "legend"}, [
      el("span", {}, [el("i", {style: "background: var(--weights)"}), document.createTextNode("weights")]),
      el("span", {}, [el("i", {style: "background: var(--kv)"}), document.createTextNode("KV")]),
      el("span", {text: `${rows}x${cols} chips`}),
    ]),
    (() => { const s = document.createElementNS(SVG_NS, "svg"); s.setAttribute("class", "spark"); return s; })(),
  ]);
  return {card, chips, shape: replica.chips.map(c => `${c.row},${c.col}`).join(";")};
}

function updateReplicaCard(entry, replica) {
  const {card, chips} = entry;
  card.setAttribute("data-state", replica.state);
  const badge = card.querySelector(".badge");
  badge.textContent = replica.crash_loop ? `${replica.state} (crash loop)` : replica.state;
  badge.setAttribute("data-state", replica.state);
  badge.title = replica.state_reason || "";
  card.querySelector(".where").textContent =
    `${replica.model ? replica.model + " · " : ""}${replica.mesh} ${replica.backend} · node ${replica.node_id.slice(0, 12)} · pid ${replica.pid} · ${replica.address}`;
  const put = (key, text) => { card.querySelector(`[data-stat="${key}"]`).textContent = text; };
  const used = replica.kv_pages_total - replica.kv_pages_free;
  put("running", fmtInt(replica.running));
  put("waiting", fmtInt(replica.waiting));
  put("tps", fmtNum(replica.tokens_per_second, 1));
  put("kv", `${fmtInt(used)} / ${fmtInt(replica.kv_pages_total)} (${fmtPerc(replica.kv_cache_usage_perc)})` +
    (replica.kv_pages_budget ? ` · budget ${fmtInt(replica.kv_pages_budget)}${replica.kv_pages_capped_by_host ? " (capped by host RAM)" : ""}` : "") +
    ((replica.kv_user_groups || 1) > 1 ? ` · ${replica.kv_user_groups} user groups, free ${(replica.kv_pages_free_per_group || []).map(fmtInt).join(" / ")}` : ""));
  put("ttft", replica.ttft_seconds.count ? fmtSeconds(replica.ttft_seconds.p50) : "-");
  put("restarts", fmtInt(replica.restarts));
  put("heartbeat", `${fmtNum(replica.last_heartbeat_age_s, 1)} s ago`);
  card.querySelector(".kv-fill").style.width = `${(replica.kv_cache_usage_perc * 100).toFixed(1)}%`;
  for (const chip of replica.chips) {
    const cell = chips.get(`${chip.row},${chip.col}`);
    const total = chip.dram_total_bytes || 1;
    const w = 100 * chip.dram_weights_bytes / total;
    const kv = 100 * chip.dram_kv_bytes / total;
    cell.setAttribute("data-state", chip.display_state);
    cell.querySelector(".w").style.height = `${w.toFixed(1)}%`;
    const kvBar = cell.querySelector(".kv");
    kvBar.style.bottom = `${w.toFixed(1)}%`;
    kvBar.style.height = `${kv.toFixed(1)}%`;
    const usedPct = w + kv;
    cell.querySelector(".pct").textContent = usedPct > 0 && usedPct < 1 ? "<1%" : `${Math.round(usedPct)}%`;
    cell.title = `chip ${chip.row},${chip.col} (${chip.display_state}): weights ${fmtGiB(chip.dram_weights_bytes)}` +
      ` + KV ${fmtGiB(chip.dram_kv_bytes)} + other ${fmtGiB(chip.dram_other_bytes || 0)} of ${fmtGiB(chip.dram_total_bytes)}`;
  }
  const end = history.length ? history[history.length - 1].time : 0;
  drawLineChart(card.querySelector(".spark"), [{name: "tokens/s", color: "#4a78c2",
    points: history.map(p => [p.time, p.replicas[replica.replica_id] ? p.replicas[replica.replica_id].tokens_per_second : null])}],
    {span: chartSpan(history, historySeconds), end, format: v => fmtNum(v, 0), axes: false});
}

function renderReplicas(replicas) {
  const container = document.getElementById("replicas");
  const seen = new Set();
  for (const replica of replicas) {
    seen.add(replica.replica_id);
    const shape = replica.chips.map(c => `${c.row},${c.col}`).join(";");
    let entry = replicaCards.get(replica.replica_id);
    if (!entry || entry.shape !== shape) {
      const fresh = buildReplicaCard(replica);
      if (entry) container.replaceChild(fresh.card, entry.card); else container.appendChild(fresh.card);
      entry = fresh;
      replicaCards.set(replica.replica_id, entry);
    }
    updateReplicaCard(entry, replica);
  }
  for (const [id, entry] of replicaCards) {
    if (!seen.has(id)) { entry.card.remove(); replicaCards.delete(id); }
  }
}

function renderEvents(events) {
  const body = document.getElementById("events-body");
  body.replaceChildren(...events.map(e => el("tr", {"data-kind": e.kind}, [
    el("td", {text: fmtTime(e.time)}), el("td", {class: "kind", text: e.kind}),
    el("td", {text: e.replica_id || e.model || ""}), el("td", {text: e.message}),
  ])));
  if (!events.length) body.appendChild(el("tr", {}, [el("td", {colspan: 4, class: "meta", text: "no events yet"})]));
}

function renderCharts() {
  const end = history.length ? history[history.length - 1].time : Date.now() / 1000;
  const span = chartSpan(history, historySeconds);
  const col = key => history.map(p => [p.time, p[key]]);
  drawLineChart(document.getElementById("chart-tps"), [{name: "cluster", color: COLORS[0], points: col("tokens_per_second")}],
    {span, end, format: fmtAxis});
  drawLineChart(document.getElementById("chart-requests"), [
    {name: "running", color: COLORS[2], points: col("requests_running")},
    {name: "waiting", color: COLORS[1], points: col("requests_waiting")}], {span, end, format: fmtAxis});
  const ids = [...new Set(history.flatMap(p => Object.keys(p.replicas)))];
  drawLineChart(document.getElementById("chart-kv"), ids.map((id, i) => ({name: id, color: COLORS[i % COLORS.length],
    points: history.map(p => [p.time, p.replicas[id] ? p.replicas[id].kv_cache_usage_perc : null])})),
    {span, end, max: 1, format: v => `${Math.round(v * 100)}%`});
  drawLineChart(document.getElementById("chart-ttft"), [
    {name: "p50", color: COLORS[0], points: col("ttft_p50")},
    {name: "p99", color: COLORS[4], points: col("ttft_p99")}], {span, end, format: fmtSeconds});
  drawLineChart(document.getElementById("chart-itl"), [
    {name: "p50", color: COLORS[0], points: col("inter_token_p50")},
    {name: "p99", color: COLORS[4], points: col("inter_token_p99")}], {span, end, format: fmtSeconds});
}

function render(data) {
  historySeconds = data.dashboard.history_seconds;
  pollMs = Math.max(200, data.dashboard.sample_interval_s * 1000);
  for (const span of document.querySelectorAll(".window")) span.textContent = `${data.dashboard.latency_window_s} s`;
  for (const point of data.history) history.push(point);
  if (history.length) lastPointTime = history[history.length - 1].time;
  while (history.length && history[0].time < lastPointTime - historySeconds) history.shift();
  const conn = document.getElementById("conn");
  if (data.summary === undefined) {
    conn.dataset.state = "error";
    conn.textContent = data.dashboard.last_error ? `no data: ${data.dashboard.last_error}` : "no data yet";
    return;
  }
  conn.dataset.state = data.dashboard.last_error ? "stale" : "live";
  conn.textContent = data.dashboard.last_error ? `stale: ${data.dashboard.last_error}` : "live";
  setText("updated", `updated ${fmtTime(data.dashboard.sampled_at)}`);
  renderSummary(data);
  renderModels(data.models || []);
  renderReplicas(data.replicas);
  renderEvents(data.events);
  renderCharts();
}

async function poll() {
  try {
    const url = lastPointTime === null ? "/api/status" : `/api/status?since=${lastPointTime}`;
    const response = await fetch(url, {cache: "no-store"});
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
  } catch (err) {
    const conn = document.getElementById("conn");
    conn.dataset.state = "error";
    conn.textContent = `dashboard unreachable (${err.message})`;
  }
  setTimeout(poll, pollMs);
}

poll();
