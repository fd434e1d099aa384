// cachenet operator dashboard: polls the controller's JSON routes and draws plain DOM + SVG.
"use strict";

const REFRESH_MS = 3000;
const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

let latestRunKey = null;
let simulationFor = undefined;

// -- small helpers ------------------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmtBytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

function fmtRate(bps) {
  if (bps >= 1e9) return `${(bps / 1e9).toFixed(bps % 1e9 ? 1 : 0)} Gbit/s`;
  if (bps >= 1e6) return `${(bps / 1e6).toFixed(0)} Mbit/s`;
  return `${(bps / 1e3).toFixed(0)} kbit/s`;
}

function fmtTime(ts) {
  return new Date(ts * 1000).toLocaleString(undefined, { hour12: false });
}

function fmtRatio(x) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(3);
}

async function getJSON(url, options) {
  const resp = await fetch(url, { cache: "no-store", ...(options || {}) });
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    const msg = body && body.message ? body.message : `HTTP ${resp.status}`;
    const err = new Error(msg);
    err.status = resp.status;
    throw err;
  }
  return body;
}

function replace(target, ...children) {
  target.replaceChildren(...children.filter((c) => c !== null && c !== undefined));
}

// -- topology -----------------------------------------------------------------------------

function renderTopology(topology, nodes) {
  const box = $("topology");
  const W = 480, H = 300, PAD = 48, TOP = 78, BOTTOM = 46;
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const placed = [...topology.servers.map((s) => s.position), ...topology.users.map((u) => u.position)];
  const xs = placed.map((p) => p[0]), ys = placed.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (x) => PAD + ((x - x0) / ((x1 - x0) || 1)) * (W - 2 * PAD);
  const sy = (y) => H - BOTTOM - ((y - y0) / ((y1 - y0) || 1)) * (H - BOTTOM - TOP);
  const pos = new Map();
  for (const s of topology.servers) pos.set(s.id, [sx(s.position[0]), sy(s.position[1])]);
  const others = topology.nodes.length ? topology.nodes : [];
  others.forEach((id, i) => pos.set(id, [W / 2 + (i - (others.length - 1) / 2) * 110, 24]));
  const parts = [];
  for (const l of topology.links) {
    const a = pos.get(l.a), b = pos.get(l.b);
    if (!a || !b) continue;
    parts.push(svg("line", { class: "link", x1: a[0], y1: a[1], x2: b[0], y2: b[1] }));
    parts.push(svg("text", { x: (a[0] + b[0]) / 2, y: (a[1] + b[1]) / 2 + 4, "text-anchor": "middle",
      class: "faint halo" }, fmtRate(l.rate_bps)));
  }
  for (const u of topology.users) {
    const [x, y] = [sx(u.position[0]), sy(u.position[1])];
    if (u.server && pos.get(u.server)) {
      const s = pos.get(u.server);
      parts.push(svg("line", { class: "assoc", x1: x, y1: y, x2: s[0], y2: s[1] }));
    }
    parts.push(svg("rect", { class: "user", x: x - 4, y: y - 4, width: 8, height: 8 }));
    parts.push(svg("text", { x: x + 7, y: y + 4, class: "faint halo" }, u.id));
  }
  for (const id of others) {
    const [x, y] = pos.get(id);
    parts.push(svg("rect", { x: x - 34, y: y - 13, width: 68, height: 26, rx: 5, fill: "#1d2330" }));
    parts.push(svg("text", { x, y: y + 4, "text-anchor": "middle", fill: "#fff", style: "fill:#fff" }, id));
  }
  for (const s of topology.servers) {
    const [x, y] = pos.get(s.id);
    const n = byId.get(s.id);
    const up = n && n.ok;
    const used = up ? n.used_bytes / (n.capacity_bytes || 1) : 0;
    const g = svg("g", { "data-node": s.id });
    g.append(svg("title", {}, `${s.id}: ${up ? `${fmtBytes(n.used_bytes)} of ${fmtBytes(n.capacity_bytes)}` : "unreachable"}`));
    const r = 25;
    g.append(svg("circle", { class: "server", cx: x, cy: y, r, fill: up ? "#e7effc" : "#fde2e2" }));
    // Used share of the capacity as an arc around the server.
    if (up && used > 0) {
      const frac = Math.min(used, 0.9999), a = 2 * Math.PI * frac - Math.PI / 2;
      const ex = x + r * Math.cos(a), ey = y + r * Math.sin(a);
      g.append(svg("path", { d: `M ${x} ${y - r} A ${r} ${r} 0 ${frac > 0.5 ? 1 : 0} 1 ${ex} ${ey}`,
        fill: "none", stroke: "#2f6fde", "stroke-width": 5 }));
    }
    g.append(svg("circle", { cx: x, cy: y, r, fill: "none", stroke: up ? "#2f6fde" : "#d64545", "stroke-width": 1.5 }));
    g.append(svg("text", { x, y: y + 4, "text-anchor": "middle", "font-weight": 600, class: "small" }, s.id));
    const label = up ? `${fmtBytes(n.used_bytes)} / ${fmtBytes(n.capacity_bytes)}` : `down · ${fmtBytes(s.capacity_bytes)}`;
    g.append(svg("text", { x, y: y + r + 14, "text-anchor": "middle", class: up ? "halo" : "halo down" }, label));
    parts.push(g);
  }
  replace(box, ...parts);
  const rows = topology.links.map((l) => el("tr", {}, el("td", { text: `${l.a} — ${l.b}` }),
    el("td", { class: "num", text: fmtRate(l.rate_bps) })));
  replace($("links"), el("tr", {}, el("th", { text: "backhaul link" }), el("th", { class: "num", text: "rate" })), ...rows);
}

// -- nodes, models, totals ------------------------------------------------------------------

function renderNodes(nodes) {
  const cards = nodes.map((n) => {
    const card = el("div", { class: n.ok ? "node" : "node down", id: `node-${n.id}` });
    card.append(el("h3", {}, el("span", { text: n.id }),
      el("span", { class: n.ok ? "badge" : "badge bad", text: n.ok ? "up" : "down" })));
    card.append(el("div", { class: "url", text: n.url || "no URL" }));
    if (!n.ok) {
      card.append(el("div", { class: "error", text: n.error || "unreachable" }));
      card.append(el("div", { class: "legend", text: `capacity ${fmtBytes(n.capacity_bytes)} (topology)` }));
      return card;
    }
    const cap = n.capacity_bytes || 1;
    const bar = el("div", { class: "storage", title: `${fmtBytes(n.used_bytes)} of ${fmtBytes(n.capacity_bytes)}` },
      el("div", { class: "pinned", style: `width:${(100 * n.pinned_bytes) / cap}%` }),
      el("div", { class: "cached", style: `width:${(100 * n.cached_bytes) / cap}%` }));
    card.append(bar);
    card.append(el("div", { class: "legend" },
      `${fmtBytes(n.used_bytes)} of ${fmtBytes(n.capacity_bytes)} used · `,
      el("span", { class: "swatch pinned" }), `pinned ${fmtBytes(n.pinned_bytes)} · `,
      el("span", { class: "swatch cached" }), `cached ${fmtBytes(n.cached_bytes)}`));
    const total = n.hits + n.misses;
    card.append(el("div", { class: "stats" },
      el("span", {}, "hits ", el("b", { class: "hits", text: String(n.hits) })),
      el("span", {}, "misses ", el("b", { class: "misses", text: String(n.misses) })),
      el("span", {}, "hit rate ", el("b", { text: total ? `${((100 * n.hits) / total).toFixed(0)}%` : "–" }))));
    const plan = n.plan || {};
    const planText = plan.plan_id
      ? `plan ${plan.plan_id}: ${plan.state} (${plan.fetched ?? 0}/${plan.blocks} blocks fetched)`
      : "no plan yet";
    card.append(el("div", { class: "legend", text: `${n.blocks} blocks · policy ${n.policy} · ${planText}` }));
    if (n.capacity_bytes !== n.topology_capacity_bytes) {
      card.append(el("div", { class: "legend warn-text",
        text: `the topology plans with ${fmtBytes(n.topology_capacity_bytes)} for this node` }));
    }
    return card;
  });
  replace($("nodes"), ...cards);
}

function renderModels(models, nodes) {
  const head = el("tr", {}, el("th", { text: "model" }), ...nodes.map((n) => el("th", { text: n.id })));
  const rows = models.map((name) => el("tr", { "data-model": name }, el("td", { text: name }), ...nodes.map((n) => {
    if (!n.ok) return el("td", { class: "unknown", text: "?", title: "node unreachable" });
    const m = n.models.find((x) => x.name === name);
    if (!m || !m.held_bytes) return el("td", { class: "none", text: "–" });
    if (m.complete) return el("td", { class: "complete", text: "✓ complete", title: fmtBytes(m.bytes) });
    const pct = 100 * m.fraction;
    return el("td", { class: "partial", text: pct < 1 ? "<1%" : `${Math.floor(pct)}%`,
      title: `${fmtBytes(m.held_bytes)} of ${fmtBytes(m.bytes)}` });
  })));
  if (!models.length) rows.push(el("tr", {}, el("td", { class: "muted", text: "no model published yet" })));
  replace($("models"), head, ...rows);
}

function renderTotals(totals, origin) {
  const total = totals.hits + totals.misses;
  const cell = (label, value, id) => el("div", {}, el("b", { id, text: value }), el("span", { class: "muted", text: label }));
  replace($("totals"),
    cell("nodes up", `${totals.nodes_up} / ${totals.nodes}`, "total-nodes"),
    cell("bytes used", `${fmtBytes(totals.used_bytes)}`, "total-used"),
    cell("capacity", fmtBytes(totals.capacity_bytes), "total-capacity"),
    cell("block hits", String(totals.hits), "total-hits"),
    cell("block misses", String(totals.misses), "total-misses"),
    cell("hit rate", total ? `${((100 * totals.hits) / total).toFixed(1)}%` : "–"));
  $("totals").title = `origin ${origin}`;
}

// -- runs -----------------------------------------------------------------------------------

function renderRuns(doc) {
  const runs = doc.runs;
  $("runs-source").textContent = doc.source === "origin"
    ? "(from the origin's catalogue)" : "(from the controller's memory: the origin is unreachable)";
  const head = el("tr", {}, ...["run", "when", "solver", "expected hit ratio", "bytes moved", "nodes pushed",
    "models", "solve time", "stored"].map((t, i) => el("th", { class: i >= 3 && i !== 8 ? "num" : "", text: t })));
  const rows = runs.map((r) => {
    const nodes = Object.values(r.nodes || {});
    const pushed = nodes.filter((n) => n.pushed).length;
    return el("tr", { id: `run-${r.run_id}`, class: r.stored ? "" : "unsaved" },
      el("td", { text: `#${r.run_id}` }),
      el("td", { text: fmtTime(r.created_at) }),
      el("td", { text: r.solver }),
      el("td", { class: "num hit-ratio", text: fmtRatio(r.hit_ratio) }),
      el("td", { class: "num", text: fmtBytes(r.bytes_moved) }),
      el("td", { class: "num", text: `${pushed} / ${nodes.length}` }),
      el("td", { class: "num", text: String((r.inputs || {}).models ?? "–") }),
      el("td", { class: "num", text: `${(r.runtime_s * 1000).toFixed(0)} ms` }),
      el("td", { text: r.stored ? "catalogue" : "memory only" }));
  });
  if (!runs.length) rows.push(el("tr", {}, el("td", { class: "muted", text: "no placement run yet" })));
  replace($("runs"), head, ...rows);
  renderMovedChart(runs.slice().reverse());
}

function renderMovedChart(runs) {
  const box = $("moved-chart");
  const W = 480, H = 220, L = 58, R = 12, T = 18, B = 30;
  if (!runs.length) {
    replace(box, svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "faint" }, "no runs yet"));
    return;
  }
  const max = Math.max(1, ...runs.map((r) => r.bytes_moved || 0));
  const step = (W - L - R) / runs.length;
  const bw = Math.min(48, step * 0.7);
  const y = (v) => H - B - (v / max) * (H - T - B);
  const parts = [];
  for (const f of [0, 0.5, 1]) {
    parts.push(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(max * f), y2: y(max * f) }));
    parts.push(svg("text", { x: L - 6, y: y(max * f) + 4, "text-anchor": "end", class: "faint" }, fmtBytes(max * f)));
  }
  runs.forEach((r, i) => {
    const x = L + i * step + (step - bw) / 2;
    const v = r.bytes_moved || 0;
    const bar = svg("rect", { class: "bar", x, y: y(v), width: bw, height: Math.max(0, H - B - y(v)), rx: 2 });
    bar.append(svg("title", {}, `run #${r.run_id}: ${fmtBytes(v)} to move`));
    parts.push(bar);
    parts.push(svg("text", { x: x + bw / 2, y: H - B + 14, "text-anchor": "middle" }, `#${r.run_id}`));
    if (runs.length <= 12) {
      parts.push(svg("text", { x: x + bw / 2, y: y(v) - 4, "text-anchor": "middle", class: "faint" }, fmtBytes(v)));
    }
  });
  parts.push(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  replace(box, ...parts);
}

// -- simulation -----------------------------------------------------------------------------

async function loadSimulation(key) {
  simulationFor = key;
  $("sim-note").textContent = "simulating…";
  try {
    const sim = await getJSON("/v1/simulation");
    renderSimulation(sim);
  } catch (e) {
    simulationFor = undefined;
    $("sim-note").textContent = `simulation failed: ${e.message}`;
  }
}

function renderSimulation(sim) {
  const box = $("sim-chart");
  const W = 480, H = 220, L = 44, R = 14, T = 14, B = 36;
  if (!sim.available) {
    replace(box, svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "faint" }, sim.reason || "no data"));
    $("sim-note").textContent = "";
    simulationFor = undefined;
    return;
  }
  const x = (f) => L + f * (W - L - R);
  const y = (h) => H - B - h * (H - T - B);
  const parts = [];
  for (const h of [0, 0.25, 0.5, 0.75, 1]) {
    parts.push(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(h), y2: y(h) }));
    parts.push(svg("text", { x: L - 6, y: y(h) + 4, "text-anchor": "end", class: "faint" }, h.toFixed(2)));
  }
  for (const f of [0, 0.25, 0.5, 0.75, 1]) {
    parts.push(svg("text", { x: x(f), y: H - B + 14, "text-anchor": "middle", class: "faint" }, `${f * 100}%`));
  }
  parts.push(svg("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" },
    `capacity per node, share of the catalogue (${fmtBytes(sim.catalogue_bytes)})`));
  parts.push(svg("line", { class: "axis", x1: L, x2: W - R, y1: y(0), y2: y(0) }));
  parts.push(svg("line", { class: "axis", x1: L, x2: L, y1: y(0), y2: y(1) }));
  if (sim.current_fraction !== null && sim.current_fraction <= 1) {
    const cx = x(sim.current_fraction);
    parts.push(svg("line", { x1: cx, x2: cx, y1: y(0), y2: y(1), stroke: "#6b7380", "stroke-dasharray": "4 3" }));
    parts.push(svg("text", { x: cx + 4, y: y(1) + 10, class: "faint" }, "current"));
  }
  const colours = { "trimcaching-ls": "#2a9d8f", "trimcaching-gen": "var(--gen)", independent: "var(--ind)" };
  const legend = [];
  Object.entries(sim.curves).forEach(([solver, points], i) => {
    const colour = colours[solver] || "#555";
    const d = points.map((p, j) => `${j ? "L" : "M"} ${x(p.fraction).toFixed(1)} ${y(p.hit_ratio).toFixed(1)}`).join(" ");
    // The baseline is dashed on top, so equal curves (little sharing to exploit) both stay visible.
    parts.push(svg("path", { d, fill: "none", stroke: colour, "stroke-width": solver === "independent" ? 2 : 4,
      "stroke-dasharray": solver === "independent" ? "6 4" : "none", "data-solver": solver }));
    for (const p of points) {
      const dot = svg("circle", { cx: x(p.fraction), cy: y(p.hit_ratio), r: 3.5, fill: colour });
      dot.append(svg("title", {}, `${solver}: ${fmtRatio(p.hit_ratio)} at ${fmtBytes(p.capacity_bytes)} per node`));
      parts.push(dot);
    }
    parts.push(svg("rect", { x: L + 12, y: T + 4 + i * 16, width: 10, height: 10, fill: colour }));
    parts.push(svg("text", { x: L + 27, y: T + 13 + i * 16 }, solver));
    legend.push(solver);
  });
  replace(box, ...parts);
  const cur = sim.current_fraction;
  $("sim-note").textContent = `${sim.models} models, demand from ${sim.demand}; ` + (cur === null ? "" : cur > 1
    ? `each node can hold ${cur.toFixed(1)}× the catalogue today.`
    : `today each node holds ${(100 * cur).toFixed(0)}% of the catalogue.`);
}

// -- refresh loop and the recompute button ----------------------------------------------------

async function refresh() {
  const errors = [];
  const [cluster, runs] = await Promise.allSettled([getJSON("/v1/cluster"), getJSON("/v1/runs?limit=20")]);
  if (cluster.status === "fulfilled") {
    const c = cluster.value;
    $("topology-name").textContent = `topology ${c.topology.name} · origin ${c.origin_url}`;
    renderTopology(c.topology, c.nodes);
    renderNodes(c.nodes);
    renderModels(c.models, c.nodes);
    renderTotals(c.totals, c.origin_url);
    for (const n of c.nodes) if (!n.ok) errors.push(`node ${n.id} is down: ${n.error}`);
    if (c.origin && !c.origin.ok) errors.push(`origin ${c.origin.url} is down: ${c.origin.error}`);
  } else {
    errors.push(`controller unreachable: ${cluster.reason.message}`);
  }
  if (runs.status === "fulfilled") {
    renderRuns(runs.value);
    if (runs.value.source !== "origin") errors.push("origin unreachable: runs are shown from the controller's memory");
    const newest = runs.value.runs[0];
    const key = newest ? `${newest.run_id}@${newest.created_at}` : "none";
    if (key !== latestRunKey || simulationFor === undefined) {
      latestRunKey = key;
      if (simulationFor !== key) loadSimulation(key);
    }
  } else if (cluster.status === "fulfilled") {
    errors.push(`runs unavailable: ${runs.reason.message}`);
  }
  const banner = $("banner");
  replace(banner, ...errors.map((e) => el("div", { text: e })));
  banner.hidden = errors.length === 0;
  const status = $("status");
  status.textContent = `${errors.length ? "degraded" : "healthy"} · updated ${new Date().toLocaleTimeString(undefined, { hour12: false })}`;
  status.className = errors.length ? "pill bad" : "pill ok";
}

async function loadSolvers() {
  try {
    const doc = await getJSON("/openapi.json");
    const op = doc.paths["/v1/placement/recompute"].post;
    const names = op.requestBody.content["application/json"].schema.properties.solver.enum;
    const select = $("solver");
    for (const name of names) select.append(el("option", { value: name, text: name }));
  } catch (e) {
    // The controller's default solver still works without the list.
  }
}

async function recompute(event) {
  event.preventDefault();
  const out = $("recompute-result");
  const token = $("token").value.trim();
  if (!token) {
    out.className = "result bad";
    out.textContent = "Enter the operator token first.";
    return;
  }
  const button = $("recompute");
  button.disabled = true;
  button.textContent = "Recomputing…";
  out.className = "result";
  out.textContent = "";
  const solver = $("solver").value;
  try {
    const run = await getJSON("/v1/placement/recompute", {
      method: "POST",
      headers: { "Authorization": `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify(solver ? { solver } : {}),
    });
    out.className = "result ok";
    out.textContent = `Run #${run.run_id} (${run.solver}): expected hit ratio ${fmtRatio(run.hit_ratio)}, `
      + `${fmtBytes(run.bytes_moved)} to move` + (run.stored ? "." : " (not stored at the origin yet).");
  } catch (e) {
    out.className = "result bad";
    out.textContent = e.status === 401 ? "Refused: wrong or missing operator token." : `Recompute failed: ${e.message}`;
  } finally {
    button.disabled = false;
    button.textContent = "Recompute now";
  }
  await refresh();
}

async function loop() {
  try { await refresh(); } catch (e) { console.error(e); }
  setTimeout(loop, REFRESH_MS);
}

$("recompute-form").addEventListener("submit", recompute);
loadSolvers();
loop();
