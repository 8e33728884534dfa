// Tally's live dashboard: two server-sent-event streams, drawn with plain DOM and SVG.
// /api/stream/sales/top        → snapshot, then `top` (open window, provisional), `final`
// /api/stream/servers/{id}     → snapshot, then `meta` and `point` (per minute, provisional|final)
// /api/stream/metrics/{id}     → the same for one metric across all servers
// /api/stream/social/summary   → a brand's posts per minute: snapshot, `meta`, `point`
// Every request carries the caller's bearer token (given in the link's #token=, or pasted).
"use strict";

const $ = (id) => document.getElementById(id);
const ROW = 34;
const clock = (iso) => (iso ? new Date(iso).toISOString().slice(11, 19) + "Z" : "–");
const stamp = (iso) => (iso ? new Date(iso).toISOString().replace("T", " ").slice(0, 19) + "Z" : "–");
const ago = (iso) => (iso ? `${Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000))} s ago` : "–");

// --- the caller's token: from the link (#token=…, never sent to a server) or asked for -------
const TOKEN_KEY = "tally.token";
function takeTokenFromLink() {
  const params = new URLSearchParams(location.hash.slice(1));
  const given = params.get("token");
  if (given === null) return;
  sessionStorage.setItem(TOKEN_KEY, given);
  params.delete("token"); // out of the address bar, the other parameters kept
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
}
const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
function askForToken(reason) {
  $("token-reason").textContent = reason;
  $("token-form").hidden = false;
}
$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  location.reload();
});

// --- connection pill: live while every open stream is connected ---------------------------
// Streams are read with fetch (EventSource cannot send a token): server-sent events parsed
// here, reconnecting after the server's `retry` with Last-Event-ID, as EventSource would.
const CONNECTING = 0, OPEN = 1, CLOSED = 2;
const streams = new Set();
function showConnection() {
  const pill = $("connection");
  const all = [...streams];
  const live = all.length > 0 && all.every((s) => s.readyState === OPEN);
  const closed = all.some((s) => s.readyState === CLOSED);
  pill.textContent = live ? "live" : closed ? "disconnected (reload the page)" : "reconnecting…";
  pill.className = "pill " + (live ? "live" : "down");
}

class TokenEventSource {
  constructor(url, handlers, onRefused) {
    Object.assign(this, { url, handlers, onRefused, readyState: CONNECTING, lastId: "", retry: 2000 });
    this.controller = new AbortController();
    this.connect();
  }
  async connect() {
    const headers = { Accept: "text/event-stream" };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    if (this.lastId) headers["Last-Event-ID"] = this.lastId;
    try {
      const response = await fetch(this.url, { headers, signal: this.controller.signal });
      if (response.status === 401 || response.status === 403) {
        const body = await response.json().catch(() => ({}));
        this.close();
        this.onRefused(response.status, body.error || `HTTP ${response.status}`);
        return;
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      this.readyState = OPEN;
      showConnection();
      await this.read(response.body.getReader());
    } catch (error) {
      if (this.readyState === CLOSED) return;
    }
    if (this.readyState === CLOSED) return;
    this.readyState = CONNECTING;
    showConnection();
    setTimeout(() => this.readyState !== CLOSED && this.connect(), this.retry);
  }
  async read(reader) {
    const decoder = new TextDecoder();
    let buffer = "", held = ""; // a chunk's last "\r" waits: the next may start with "\n"
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      let text = held + decoder.decode(value, { stream: true });
      held = text.endsWith("\r") ? "\r" : "";
      if (held) text = text.slice(0, -1);
      buffer += text.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        this.dispatch(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  }
  dispatch(block) {
    let event = "message", data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
      else if (field === "id") this.lastId = value;
      else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
    }
    const handle = this.handlers[event];
    if (!handle || !data.length) return;
    try {
      handle(JSON.parse(data.join("\n")));
    } catch (error) {
      console.warn(`event ${event} could not be shown: ${error}`); // the next one may be
    }
    showConnection();
  }
  close() {
    this.readyState = CLOSED;
    this.controller.abort();
  }
}

function listen(url, handlers, statusElement) {
  const refused = (status, reason) => {
    stopListening(source);
    showStatus(statusElement, { ok: false, reason });
    if (status === 401) askForToken(reason);
    showConnection();
  };
  const status = handlers.status;
  const watched = {
    ...handlers,
    // The server ends a stream whose token it no longer takes (revoked, expired).
    status: (s) => (s.refused ? refused(401, s.reason) : status(s)),
  };
  const source = new TokenEventSource(url, watched, refused);
  streams.add(source);
  return source;
}
function stopListening(source) {
  if (source) { source.close(); streams.delete(source); }
}
function showStatus(element, status) {
  element.hidden = status.ok;
  element.textContent = status.ok ? "" : `not answering: ${status.reason}`;
}

// --- sales: the top-10, rows moving to their rank ------------------------------------------
let latestTop = null;
const rows = new Map(); // "tenant|item_id" → <li>

function renderTop(answer) {
  latestTop = answer;
  $("top-window").textContent = answer.window_start
    ? `${stamp(answer.window_start)} → ${stamp(answer.window_end)} (${answer.state})` : "–";
  $("top-watermark").textContent = stamp(answer.watermark);
  $("top-late").textContent = answer.late_events;
  const siteWide = answer.tenant === "*";
  $("top-tenant").textContent = siteWide ? "every tenant (operator)" : answer.tenant || "–";
  const stale = $("top-stale");
  stale.hidden = !answer.stale || !answer.items.length;
  stale.textContent = answer.stale ? "stale: " + answer.stale_reasons.join("; ") : "";
  $("top-empty").hidden = answer.items.length > 0;
  const list = $("top-list");
  list.style.height = `${answer.items.length * ROW}px`;
  const most = Math.max(1, ...answer.items.map((i) => i.quantity));
  const seen = new Set();
  for (const item of answer.items) {
    const key = `${item.tenant}|${item.item_id}`; // one item id in two tenants: two items
    seen.add(key);
    let row = rows.get(key);
    if (!row) {
      row = document.createElement("li");
      row.dataset.item = item.item_id;
      row.innerHTML = '<span class="rank"></span><span class="bar"><span class="fill"></span>' +
        '<span class="name"></span><span class="tenant"></span></span><span class="qty"></span>';
      row.querySelector(".name").textContent = item.item_id;
      row.style.transform = `translateY(${answer.items.length * ROW}px)`; // enter from below
      list.appendChild(row);
      rows.set(key, row);
      row.getBoundingClientRect(); // start the move from there
    }
    row.classList.remove("leaving");
    row.querySelector(".tenant").textContent = siteWide ? item.tenant : "";
    row.querySelector(".rank").textContent = item.rank;
    row.querySelector(".qty").textContent = item.quantity.toLocaleString();
    row.querySelector(".fill").style.width = `${(100 * item.quantity) / most}%`;
    row.style.transform = `translateY(${(item.rank - 1) * ROW}px)`;
  }
  for (const [item, row] of rows) {
    if (!seen.has(item)) {
      rows.delete(item);
      row.classList.add("leaving");
      setTimeout(() => row.remove(), 450);
    }
  }
}

function addFinal(answer) {
  const entry = document.createElement("li");
  const leaders = answer.items.slice(0, 3).map((i) => `${i.item_id} (${i.quantity})`).join(", ");
  entry.textContent = `${stamp(answer.window_start)} → ${stamp(answer.window_end)}: ${leaders}`;
  $("final-list").prepend(entry);
}

takeTokenFromLink();
if (!token()) askForToken("this dashboard needs a token: paste one (`tally tokens issue`)");
listen("/api/stream/sales/top", {
  snapshot: renderTop,
  top: renderTop,
  final: addFinal,
  status: (s) => showStatus($("top-status"), s),
}, $("top-status"));

// --- metrics: one server's (or metric's) minutes as a band and a line ---------------------
let seriesSource = null;
let meta = null;
let series = new Map(); // series name → Map(t → point)
let seriesUpdated = null;

function chosen() {
  return {
    mode: $("mode").value, subject: $("subject").value.trim(), pick: $("series").value,
    tenant: $("tenant").value.trim(),
  };
}

function follow() {
  const { mode, subject, tenant } = chosen();
  if (!subject) return;
  // An operator's token reads any tenant's servers: the one named here (a tenant's reads its own).
  const whose = tenant ? `?tenant=${encodeURIComponent(tenant)}` : "";
  location.hash = `${mode}=${encodeURIComponent(subject)}` + (tenant ? `&tenant=${encodeURIComponent(tenant)}` : "");
  stopListening(seriesSource);
  showStatus($("series-status"), { ok: true });
  meta = null;
  series = new Map();
  draw();
  const kind = mode === "server" ? "servers" : "metrics";
  seriesSource = listen(`/api/stream/${kind}/${encodeURIComponent(subject)}${whose}`, {
    snapshot: (s) => {
      meta = s;
      series = new Map(Object.entries(s.series).map(([n, pts]) => [n, new Map(pts.map((p) => [p.t, p]))]));
      seriesUpdated = new Date().toISOString();
      refreshPicker();
      draw();
    },
    meta: (m) => { meta = { ...meta, ...m }; trim(); draw(); },
    point: (p) => {
      if (!series.has(p.series)) { series.set(p.series, new Map()); refreshPicker(); }
      series.get(p.series).set(p.t, p);
      seriesUpdated = new Date().toISOString();
      scheduleDraw();
    },
    status: (s) => showStatus($("series-status"), s),
  }, $("series-status"));
  $("series").hidden = mode !== "server";
}

function trim() {
  if (!meta) return;
  const from = Date.parse(meta.from);
  for (const points of series.values()) {
    for (const t of points.keys()) if (Date.parse(t) < from) points.delete(t);
  }
}

function refreshPicker() {
  const picker = $("series");
  const names = [...series.keys()].sort();
  const keep = picker.value;
  picker.replaceChildren(...names.map((n) => new Option(n, n)));
  if (names.includes(keep)) picker.value = keep;
}

let drawPending = false;
function scheduleDraw() {
  if (!drawPending) { drawPending = true; requestAnimationFrame(() => { drawPending = false; draw(); }); }
}

const svgNS = "http://www.w3.org/2000/svg";
function el(name, attrs, text, namespace = svgNS) {
  const node = document.createElementNS(namespace, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
const html = (name, attrs, text) => el(name, attrs, text, "http://www.w3.org/1999/xhtml");

function draw() {
  const chart = $("chart");
  chart.replaceChildren();
  $("series-watermark").textContent = meta ? stamp(meta.watermark) : "–";
  $("series-open").textContent = meta ? meta.open_minutes.length : "–";
  const tiers = meta && meta.tiers ? Object.keys(meta.tiers).filter((k) => meta.tiers[k]).join(" + ") : "";
  $("series-tiers").textContent = tiers || "–";
  const { mode, pick } = chosen();
  const name = mode === "server" ? pick || [...series.keys()].sort()[0] : "all";
  const points = [...(series.get(name) || new Map()).values()].sort((a, b) => Date.parse(a.t) - Date.parse(b.t));
  const W = 900, H = 280, L = 56, R = 12, T = 12, B = 28;
  if (!meta || !points.length) {
    chart.append(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" },
      meta ? "no minutes in this range yet" : "waiting for the stream…"));
    return;
  }
  const x0 = Date.parse(meta.from), x1 = Date.parse(meta.to);
  let lo = Math.min(...points.map((p) => p.min)), hi = Math.max(...points.map((p) => p.max));
  if (hi === lo) { hi += 1; lo -= 1; }
  const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
  const x = (t) => L + ((Date.parse(t) - x0) / (x1 - x0)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4, yy = y(v);
    chart.append(el("line", { x1: L, x2: W - R, y1: yy, y2: yy, class: "grid" }));
    chart.append(el("text", { x: L - 6, y: yy + 4, "text-anchor": "end", class: "axis" }, v.toPrecision(4)));
  }
  for (let i = 0; i <= 4; i++) {
    const t = new Date(x0 + ((x1 - x0) * i) / 4).toISOString();
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    chart.append(el("text", { x: x(t), y: H - 8, "text-anchor": anchor, class: "axis" }, clock(t).slice(0, 5)));
  }
  const upper = points.map((p) => `${x(p.t).toFixed(1)},${y(p.max).toFixed(1)}`);
  const lower = points.slice().reverse().map((p) => `${x(p.t).toFixed(1)},${y(p.min).toFixed(1)}`);
  chart.append(el("polygon", { points: upper.concat(lower).join(" "), class: "band" }));
  chart.append(el("polyline", { points: points.map((p) => `${x(p.t).toFixed(1)},${y(p.avg).toFixed(1)}`).join(" "), class: "avg" }));
  for (const p of points.filter((q) => q.state === "provisional")) {
    chart.append(el("circle", { cx: x(p.t), cy: y(p.avg), r: 3, class: "open" }));
  }
  if (meta.watermark && Date.parse(meta.watermark) >= x0) {
    const wx = x(meta.watermark);
    chart.append(el("line", { x1: wx, x2: wx, y1: T, y2: H - B, class: "wm" }));
  }
}

$("chooser").addEventListener("submit", (e) => { e.preventDefault(); follow(); });
$("series").addEventListener("change", draw);
$("mode").addEventListener("change", () => { $("series").hidden = $("mode").value !== "server"; });

const wanted = new URLSearchParams(location.hash.slice(1)); // #server=…|#metric=…, &tenant=…
for (const mode of ["server", "metric"]) {
  if (wanted.get(mode)) { $("mode").value = mode; $("subject").value = wanted.get(mode); }
}
if (wanted.get("tenant")) $("tenant").value = wanted.get("tenant");
follow();

// --- merchant: one merchant's own figures (workers running the merchants pipeline) --------
// /api/merchants/{id}/summary, /sales?step=1h, /top-items, polled: a merchant's token reads
// its own merchant (the token's tenant), an operator's any (#merchant=…, or typed here).
// The API document, asked once: each panel is shown where the worker serves its queries.
const apiDocument = getJSON("/api/openapi.json");

// A panel polled every `ms`: calling the result (again) polls now and from then on.
function poller(poll, ms) {
  let timer = null;
  return () => {
    clearInterval(timer);
    poll();
    timer = setInterval(poll, ms);
  };
}

const MERCHANT_POLL_MS = 5000;
let merchantAnswer = null;

function tokenTenant() {
  try { // the token's claims, read only to prefill the merchant: the server checks them
    return JSON.parse(atob(token().split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).tenant || "";
  } catch (error) {
    return "";
  }
}

async function getJSON(path) {
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  const response = await fetch(path, { headers });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

const money = (cents) => (cents === null ? "–" : (cents / 100).toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 }));

async function pollMerchant() {
  const merchant = $("merchant-id").value.trim();
  if (!merchant) return;
  const base = `/api/merchants/${encodeURIComponent(merchant)}`;
  const from = new Date(Date.now() - 24 * 3600 * 1000).toISOString();
  try {
    const [summary, hours, top] = await Promise.all([
      getJSON(`${base}/summary?from=${from}`),
      getJSON(`${base}/sales?from=${from}&step=1h`),
      getJSON(`${base}/top-items`),
    ]);
    merchantAnswer = summary;
    showStatus($("merchant-status"), { ok: true });
    $("merchant-orders").textContent = summary.orders.toLocaleString();
    $("merchant-revenue").textContent = money(summary.revenue_cents);
    $("merchant-average").textContent = money(summary.average_order_cents);
    const [low, high] = summary.distinct_customers_bounds;
    $("merchant-customers").textContent = `≈ ${summary.distinct_customers.toLocaleString()} (${low}–${high})`;
    $("merchant-tiers").textContent = summary.tiers.map((t) => t.tier).join(" + ") || "–";
    drawHours(hours);
    $("merchant-top").replaceChildren(...top.items.map((item) => {
      const entry = document.createElement("li");
      entry.textContent = `${item.item_id} · ${item.quantity.toLocaleString()}`;
      return entry;
    }));
  } catch (error) {
    showStatus($("merchant-status"), { ok: false, reason: error.message });
  }
}

function drawHours(answer) {
  const chart = $("merchant-chart");
  chart.replaceChildren();
  const W = 900, H = 160, B = 20, x0 = Date.parse(answer.from), x1 = Date.parse(answer.to);
  const most = Math.max(1, ...answer.steps.map((s) => s.revenue_cents));
  const width = ((W - 8) * 3600e3) / (x1 - x0);
  for (const step of answer.steps) {
    const x = 4 + ((step.start_ms - x0) / (x1 - x0)) * (W - 8);
    const h = ((H - B - 6) * step.revenue_cents) / most;
    const bar = el("rect", { x, y: H - B - h, width: Math.max(1, width - 2), height: h, class: "bar" });
    bar.append(el("title", {}, `${stamp(step.start)}: ${money(step.revenue_cents)} in ${step.orders} orders`));
    chart.append(bar);
  }
  for (let i = 0; i <= 4; i++) {
    const t = new Date(x0 + ((x1 - x0) * i) / 4).toISOString();
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    chart.append(el("text", { x: 4 + ((W - 8) * i) / 4, y: H - 4, "text-anchor": anchor, class: "axis" }, clock(t).slice(0, 5)));
  }
}

const followMerchant = poller(pollMerchant, MERCHANT_POLL_MS);

$("merchant-chooser").addEventListener("submit", (e) => { e.preventDefault(); followMerchant(); });
// Shown where the worker serves merchants' figures (its API document lists them).
apiDocument.then((api) => {
  if (!("/api/merchants/{merchant_id}/summary" in api.paths)) return;
  const own = tokenTenant();
  $("merchant-id").value = wanted.get("merchant") || (own && own !== "*" ? own : wanted.get("tenant") || "");
  $("merchant").hidden = false;
  followMerchant();
}).catch(() => {});

// --- social: a brand's posts per minute (live) and its open alerts (workers running social) --
// /api/stream/social/summary → snapshot, then `meta` (totals) and `point` (a minute changed);
// /api/social/alerts, polled; ack and resolve are POSTs (a token with the `review` scope).
const ALERT_POLL_MS = 5000;
let socialSource = null;
let socialMinutes = new Map(); // "<channel>|<t>" → point
let socialMeta = null;
let alertTimer = null;

function brandQuery() {
  return `tenant=${encodeURIComponent($("brand-id").value.trim())}`;
}

function showSocialMeta(meta) {
  socialMeta = meta;
  const all = meta.totals.all;
  $("social-posts").textContent = all.posts.toLocaleString();
  $("social-split").textContent = `${all.positive} · ${all.neutral} · ${all.negative}`;
  $("social-mean").textContent = all.mean_score === null ? "–" : all.mean_score.toFixed(3);
  $("social-newest").textContent = stamp(meta.newest_post);
  $("social-late").textContent = meta.late_posts.toLocaleString();
}

function drawSocial() {
  const chart = $("social-chart");
  chart.replaceChildren();
  if (!socialMeta) return;
  const W = 900, H = 160, B = 20, x0 = Date.parse(socialMeta.from), x1 = Date.parse(socialMeta.to);
  const minutes = new Map(); // t → [positive, neutral, negative] over every channel
  for (const point of socialMinutes.values()) {
    const sum = minutes.get(point.t) || [0, 0, 0];
    minutes.set(point.t, [sum[0] + point.positive, sum[1] + point.neutral, sum[2] + point.negative]);
  }
  const most = Math.max(1, ...[...minutes.values()].map((m) => m[0] + m[1] + m[2]));
  const width = ((W - 8) * 60e3) / (x1 - x0);
  for (const [t, counts] of minutes) {
    const x = 4 + ((Date.parse(t) - x0) / (x1 - x0)) * (W - 8);
    let y = H - B;
    counts.forEach((count, i) => {
      const h = ((H - B - 6) * count) / most;
      y -= h;
      chart.append(el("rect", { x, y, width: Math.max(1, width - 1), height: h, class: ["pos", "neu", "neg"][i] }));
    });
  }
  for (let i = 0; i <= 4; i++) {
    const t = new Date(x0 + ((x1 - x0) * i) / 4).toISOString();
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    chart.append(el("text", { x: 4 + ((W - 8) * i) / 4, y: H - 4, "text-anchor": anchor, class: "axis" }, clock(t).slice(0, 5)));
  }
}

async function act(alert, action) {
  const headers = { "Content-Type": "application/json", ...(token() ? { Authorization: `Bearer ${token()}` } : {}) };
  const path = `/api/social/alerts/${encodeURIComponent(alert.id)}/${action}?${brandQuery()}`;
  const response = await fetch(path, { method: "POST", headers, body: "{}" });
  const body = await response.json().catch(() => ({}));
  showStatus($("social-status"), response.ok ? { ok: true } : { ok: false, reason: body.error || `HTTP ${response.status}` });
  pollAlerts();
}

async function pollAlerts() {
  try {
    const queue = await getJSON(`/api/social/alerts?status=open&limit=10&${brandQuery()}`);
    $("alert-count").textContent = queue.counts.open.toLocaleString();
    $("alerts").replaceChildren(...queue.alerts.map((alert) => {
      const entry = html("li", {});
      entry.append(html("span", {}, alert.text));
      entry.append(html("span", { class: "who" }, ` — ${alert.author} on ${alert.channel}, score ${alert.compound}, reach ${alert.reach}`));
      for (const action of ["ack", "resolve"]) {
        const button = html("button", { type: "button" }, action);
        button.addEventListener("click", () => act(alert, action));
        entry.append(button);
      }
      return entry;
    }));
  } catch (error) {
    showStatus($("social-status"), { ok: false, reason: error.message });
  }
}

function followBrand() {
  stopListening(socialSource);
  socialMinutes = new Map();
  socialMeta = null;
  const keep = (point) => socialMinutes.set(`${point.series}|${point.t}`, point);
  socialSource = listen(`/api/stream/social/summary?minutes=60&${brandQuery()}`, {
    snapshot: (data) => {
      socialMinutes = new Map();
      for (const points of Object.values(data.series)) points.forEach(keep);
      showSocialMeta(data);
      drawSocial();
    },
    meta: (data) => { showSocialMeta(data); drawSocial(); },
    point: (data) => { keep(data); drawSocial(); },
    status: (status) => showStatus($("social-status"), status),
  }, $("social-status"));
  clearInterval(alertTimer);
  pollAlerts();
  alertTimer = setInterval(pollAlerts, ALERT_POLL_MS);
}

$("brand-chooser").addEventListener("submit", (e) => { e.preventDefault(); followBrand(); });
// Shown where the worker runs the social pipeline (its API document lists its queries).
apiDocument.then((api) => {
  if (!("/api/social/summary" in api.paths)) return;
  const own = tokenTenant();
  $("brand-id").value = wanted.get("brand") || (own && own !== "*" ? own : wanted.get("tenant") || "");
  $("social").hidden = false;
  if ($("brand-id").value) followBrand();
}).catch(() => {});

const SESSION_POLL_MS = 2000;

async function pollSession() {
  const session = $("session-id").value.trim();
  if (!session) return;
  const params = new URLSearchParams({ session, k: "10" });
  if ($("session-item").value.trim()) params.set("item", $("session-item").value.trim());
  if ($("session-shop").value.trim()) params.set("tenant", $("session-shop").value.trim());
  try {
    const answer = await getJSON(`/api/recommendations?${params}`);
    const state = answer.session_state;
    showStatus($("session-status"), { ok: true });
    $("session-seen").textContent = state.items_seen.toLocaleString();
    $("session-recent").textContent = state.recent_items.join(", ") || "–";
    $("session-expires").textContent = state.expires_at_ms === null
      ? "gone (no view within its time to live)"
      : `in ${Math.max(0, Math.round((state.expires_at_ms - state.clock_ms) / 1000))} s of event time`;
    $("session-window").textContent = answer.co_views.window_end || "–";
    $("session-recommendations").replaceChildren(...answer.recommendations.map((entry) => {
      const item = document.createElement("li");
      item.textContent = `${entry.item} · ${entry.score.toLocaleString()} sessions`;
      return item;
    }));
  } catch (error) {
    showStatus($("session-status"), { ok: false, reason: error.message });
  }
}

const followSession = poller(pollSession, SESSION_POLL_MS);

$("session-chooser").addEventListener("submit", (e) => { e.preventDefault(); followSession(); });
// Shown where the worker runs the recommendations pipeline.
apiDocument.then((api) => {
  if (!("/api/recommendations" in api.paths)) return;
  const own = tokenTenant();
  $("session-shop").value = wanted.get("shop") || (own && own !== "*" ? own : wanted.get("tenant") || "");
  $("session-id").value = wanted.get("session") || "";
  $("recommendations").hidden = false;
  if ($("session-id").value) followSession();
}).catch(() => {});

const COUPON_POLL_MS = 2000;

async function pollCoupons() {
  const shop = $("coupon-shop").value.trim();
  const query = shop ? `?tenant=${encodeURIComponent(shop)}` : "";
  try {
    const answer = await getJSON(`/api/coupons/campaigns${query}`);
    showStatus($("coupon-status"), { ok: true });
    const rate = (r) => (r === null ? "–" : `${(r * 100).toFixed(1)} %`);
    $("coupon-campaigns").replaceChildren(...answer.campaigns.map((c) => {
      const row = html("tr", {});
      for (const cell of [c.campaign_id, c.pushed, c.redeemed, rate(c.redemption_rate), c.budget_left, c.expired, c.over_budget]) {
        row.append(html("td", {}, typeof cell === "number" ? cell.toLocaleString() : cell));
      }
      return row;
    }));
  } catch (error) {
    showStatus($("coupon-status"), { ok: false, reason: error.message });
  }
}

const followCoupons = poller(pollCoupons, COUPON_POLL_MS);

$("coupon-chooser").addEventListener("submit", (e) => { e.preventDefault(); followCoupons(); });
// Shown where the worker runs the coupons pipeline.
apiDocument.then((api) => {
  if (!("/api/coupons/campaigns" in api.paths)) return;
  const own = tokenTenant();
  $("coupon-shop").value = wanted.get("shop") || (own && own !== "*" ? own : wanted.get("tenant") || "");
  $("coupons").hidden = false;
  followCoupons();
}).catch(() => {});

// Ages tick every second without waiting for the next event.
setInterval(() => {
  $("top-age").textContent = latestTop ? ago(latestTop.as_of) : "–";
  $("series-age").textContent = ago(seriesUpdated);
  $("merchant-age").textContent = merchantAnswer ? ago(merchantAnswer.as_of) : "–";
}, 1000);
