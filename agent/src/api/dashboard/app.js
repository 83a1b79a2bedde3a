// The ferry dashboard: reads the agent's API (the same one `ferry` uses) and acts through it.
// No framework; uPlot draws the charts. Over TCP every call carries the bearer token, which
// the page asks for once and keeps in this tab's sessionStorage.
"use strict";

const $ = (sel) => document.querySelector(sel);
const REFRESH_MS = 3000;
const EVENTS_SHOWN = 100;
let token = sessionStorage.getItem("ferry-token") || "";
let status = null;
let charts = {};
let streaming = false;

function human(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = bytes, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}
function secs(s) {
  if (s == null) return "–";
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}
function time(ms) { return new Date(ms).toLocaleTimeString(); }
function text(el, s) { el.textContent = s; return el; }
function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}

class Unauthorized extends Error {}

async function api(method, path, body) {
  const headers = {};
  if (token) headers["Authorization"] = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (r.status === 401) throw new Unauthorized((await r.json()).error);
  const t = await r.text();
  const v = t ? JSON.parse(t) : null;
  if (!r.ok) throw new Error(v && v.error ? v.error + (v.hint && !v.error.includes(v.hint) ? ` (${v.hint})` : "") : `HTTP ${r.status}`);
  return v;
}

function showLogin(why) {
  $("#main").hidden = true;
  $("#login").hidden = false;
  text($("#login-error"), why || "");
  text($("#conn"), "not connected");
  $("#token").focus();
}

$("#login").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("#token").value.trim();
  sessionStorage.setItem("ferry-token", token);
  start();
});

// The NBD URI of an export on this agent: its first TCP listener, else its unix socket.
function exportUri(name) {
  const tcp = (status.nbd_listen || []).find((l) => l.startsWith("nbd://"));
  return tcp ? `${tcp}/${name}` : `nbd+unix:///${name}?socket=${status.state_dir}/nbd.sock`;
}

function renderIndicators(s) {
  const m = s.summary;
  const set = (id, shown, value) => { const o = $(id); o.textContent = shown; o.dataset.value = value; };
  set("#ind-vpgs", String(m.vpgs), m.vpgs);
  set("#ind-volumes", String(m.volumes_protected), m.volumes_protected);
  set("#ind-data", human(m.data_protected_bytes), m.data_protected_bytes);
  set("#ind-rpo", m.average_rpo_s == null ? "–" : secs(m.average_rpo_s), m.average_rpo_s == null ? "" : m.average_rpo_s);
  text($("#h-ok"), m.meeting_sla); text($("#h-warn"), m.not_meeting_sla); text($("#h-bad"), m.in_error);
  text($("#h-held"), m.held_here);
  const total = Math.max(1, m.meeting_sla + m.not_meeting_sla + m.in_error + m.held_here);
  const bar = $("#healthbar");
  bar.replaceChildren(
    ...[["ok", m.meeting_sla], ["warn", m.not_meeting_sla], ["bad", m.in_error], ["held", m.held_here]]
      .filter(([, n]) => n > 0)
      .map(([c, n]) => el("span", { class: c, style: `width:${(100 * n) / total}%` })));
}

function renderVpgs(s) {
  const body = $("#vpg-table tbody");
  const rows = [];
  for (const v of s.vpgs) {
    const meeting = v.rpo_s != null && v.rpo_target_s != null ? v.rpo_s <= v.rpo_target_s : null;
    rows.push(el("tr", { "data-vpg": v.name },
      el("td", {}, v.name),
      el("td", { title: "protected from this site" }, v.peer ? `this site → ${v.peer}` : "local only"),
      el("td", {}, v.state),
      el("td", {}, v.rpo_s == null ? "–" : secs(v.rpo_s)),
      el("td", {}, v.rpo_target_s == null ? "–" : secs(v.rpo_target_s)),
      el("td", { class: meeting === false ? "sla-no" : "sla-yes" }, meeting == null ? "–" : meeting ? "meeting" : "not meeting"),
      el("td", {}, "kept at the recovery site")));
  }
  for (const r of s.replicas) {
    const span = r.oldest_point_ms ? (Date.now() - r.oldest_point_ms) / 1000 : null;
    rows.push(el("tr", { "data-vpg": r.name },
      el("td", {}, r.name),
      el("td", { title: "held at this site" }, `${r.peer ? r.peer.address : "peer"} → this site`),
      el("td", {}, r.split_brain ? "split brain" : r.state),
      el("td", { title: "the actual RPO is measured at the protected site" },
        r.last_received_ms ? `last write received ${secs((Date.now() - r.last_received_ms) / 1000)} ago` : "–"),
      el("td", {}, "–"),
      el("td", {}, "–"),
      el("td", {}, span == null ? "–" : `${secs(span)} (${human(r.history_bytes)})`)));
  }
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: "7" }, "No VPGs yet: `ferry vpg create` makes one.")));
  body.replaceChildren(...rows);
}

function renderAlerts(alerts) {
  const ul = $("#alerts");
  ul.replaceChildren(...(alerts.length ? alerts.map((a) =>
    el("li", {}, el("span", { class: `sev-${a.severity}` }, a.severity.toUpperCase()), " ", el("strong", {}, a.source), ": ", a.message))
    : [el("li", { class: "muted" }, "No alerts.")]));
}

function addEvent(e, atTop) {
  const ul = $("#events");
  const li = el("li", { class: e.alert ? "alert" : "" },
    el("span", { class: "time" }, time(e.unix_ms)), el("strong", {}, e.source), ": ", e.message);
  if (atTop) ul.prepend(li); else ul.append(li);
  while (ul.children.length > EVENTS_SHOWN) ul.lastChild.remove();
}

// Server-Sent Events through fetch, so the token goes in a header (EventSource cannot).
async function streamEvents() {
  if (streaming) return;
  streaming = true;
  text($("#events-live"), "(live)");
  try {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const r = await fetch("/v1/events/stream", { headers });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i); buf = buf.slice(i + 2);
        let kind = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) kind = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (kind === "event" && data) addEvent(JSON.parse(data), true);
      }
    }
  } catch (_) { /* retried below */ }
  streaming = false;
  text($("#events-live"), "(reconnecting)");
  setTimeout(streamEvents, 3000);
}

function chart(id, series, data) {
  const target = $(id);
  const width = Math.max(300, target.clientWidth || 500);
  const key = id + series.join("|");
  if (charts[id] && charts[id].key === key) { charts[id].plot.setData(data); return; }
  if (charts[id]) charts[id].plot.destroy();
  const colors = ["#1f6fb2", "#2e9d5b", "#d23c3c", "#e0a100", "#7a4fb5", "#158f8f"];
  const opts = {
    width, height: 200,
    series: [{}, ...series.map((name, i) => ({ label: name, stroke: colors[i % colors.length], width: 2, spanGaps: true }))],
    axes: [{}, { size: 60 }],
    legend: { show: true },
  };
  charts[id] = { key, plot: new uPlot(opts, data, target) };
}

function renderSamples(s) {
  const xs = s.samples.map((x) => x.unix_ms / 1000);
  const col = (name, f) => s.samples.map((x) => { const v = x.vpgs.find((y) => y.vpg === name); return v && v[f] != null ? v[f] : null; });
  const named = (f) => [...new Set(s.samples.flatMap((x) => x.vpgs.filter((v) => v[f] != null).map((v) => v.vpg)))];
  const protectedHere = named("rpo_s");
  const heldHere = named("history_bytes");
  const empty = (id, why) => {
    if (charts[id]) { charts[id].plot.destroy(); delete charts[id]; }
    $(id).replaceChildren(el("p", { class: "muted" }, why));
  };
  const show = (id, caption, names, data) => {
    const p = $(id).querySelector("p"); if (p) p.remove();
    $(id).previousElementSibling.textContent = caption;
    chart(id, names, data);
  };
  if (protectedHere.length) {
    show("#chart-rpo", "Actual RPO (s)", protectedHere, [xs, ...protectedHere.map((n) => col(n, "rpo_s"))]);
    show("#chart-tput", "Throughput (MB/s acknowledged)", protectedHere,
      [xs, ...protectedHere.map((n) => col(n, "bytes_per_s").map((b) => (b == null ? null : b / 1e6)))]);
  } else if (heldHere.length) {
    // A recovery site: the RPO is measured where the VPG runs; here, the history it holds.
    empty("#chart-rpo", "The RPO of the VPGs held here is measured at their protected sites.");
    show("#chart-tput", "History held (MiB)", heldHere,
      [xs, ...heldHere.map((n) => col(n, "history_bytes").map((b) => (b == null ? null : b / 1048576)))]);
  } else {
    empty("#chart-rpo", "No VPG is protected from or held at this site.");
    empty("#chart-tput", "No VPG is protected from or held at this site.");
  }
}

function fillSelect(sel, names, keep) {
  const old = sel.value;
  const opts = names.map((n) => el("option", { value: n }, n));
  if (opts.length === 0) opts.push(el("option", { value: "" }, "none here"));
  sel.replaceChildren(...opts);
  if (keep && names.includes(old)) sel.value = old;
}

async function fillCheckpoints(vpgSel, cpSel) {
  const vpg = vpgSel.value;
  const opts = [el("option", { value: "latest" }, "latest")];
  if (vpg) {
    try {
      const cps = await api("GET", `/v1/checkpoints/${encodeURIComponent(vpg)}`);
      for (const c of cps.slice(-50).reverse()) {
        opts.push(el("option", { value: String(c.seq) }, `${c.seq} · ${new Date(c.unix_ms).toLocaleString()}${c.tag ? ` · ${c.tag}` : ""}`));
      }
    } catch (_) { /* the select keeps "latest" */ }
  }
  cpSel.replaceChildren(...opts);
}

function renderRunning(s) {
  const box = $("#running");
  const items = [];
  for (const t of s.failover_tests) {
    items.push(el("div", { class: "running", "data-test": t.vpg },
      el("strong", {}, `Failover test of ${t.vpg}`), ` at checkpoint ${t.checkpoint.seq}, ready in ${t.ready_after_ms.toFixed(0)} ms`,
      el("ul", {}, ...t.exports.map(([vol, name]) => el("li", {}, `${vol}: `, el("span", { class: "uri" }, exportUri(name))))),
      el("button", { type: "button", class: "secondary", "data-stop": t.vpg, onclick: () => stopTest(t.vpg) }, "Stop test…")));
  }
  for (const l of s.live_failovers) {
    const row = el("div", { class: "running" },
      el("strong", {}, `LIVE failover of ${l.vpg}`), ` (${l.phase}) at checkpoint ${l.checkpoint.seq}`,
      el("ul", {}, ...l.exports.map(([vol, name]) => el("li", {}, `${vol}: `, el("span", { class: "uri" }, exportUri(name))))));
    if (l.phase === "needs-commit") {
      row.append(
        el("button", { type: "button", onclick: () => liveAction(l.vpg, "commit") }, "Commit"), " ",
        el("button", { type: "button", class: "secondary", onclick: () => liveAction(l.vpg, "rollback") }, "Roll back"));
    }
    items.push(row);
  }
  if (items.length === 0) items.push(el("p", { class: "muted" }, "Nothing running."));
  box.replaceChildren(...items);
  const needs = s.live_failovers.filter((l) => l.phase === "needs-commit");
  const banner = $("#live-banner");
  banner.hidden = needs.length === 0 && !document.body.classList.contains("live-mode");
  banner.textContent = needs.length
    ? `LIVE FAILOVER: ${needs.map((l) => l.vpg).join(", ")} running here, needs commit or rollback`
    : "LIVE mode: a failover from here stops replication and runs the VPG at this site";
}

function renderTasks(tasks) {
  $("#tasks").replaceChildren(...(tasks.length ? tasks.slice(0, 20).map((t) =>
    el("li", {}, el("span", { class: "time" }, time(t.started_unix_ms)),
      `${t.kind.replace(/_/g, " ")} of ${t.vpg}: ${t.state}${t.state === "running" ? ` ${t.percent.toFixed(0)}%` : ""} · ${t.detail}`))
    : [el("li", { class: "muted" }, "No long operations.")]));
}

async function refresh() {
  try {
    const [s, alerts, samples, tasks] = await Promise.all([
      api("GET", "/v1/status"), api("GET", "/v1/alerts"), api("GET", "/v1/samples"), api("GET", "/v1/tasks")]);
    status = s;
    $("#login").hidden = true;
    $("#main").hidden = false;
    text($("#site"), `${s.version} · ${s.state_dir}`);
    text($("#conn"), `updated ${new Date().toLocaleTimeString()}`);
    renderIndicators(s);
    renderVpgs(s);
    renderAlerts(alerts);
    renderSamples(samples);
    renderRunning(s);
    renderTasks(tasks);
    const tagSel = $("#tag-vpg"), testSel = $("#test-vpg"), liveSel = $("#live-vpg");
    const hadTest = testSel.value, hadLive = liveSel.value;
    fillSelect(tagSel, s.vpgs.map((v) => v.name), true);
    fillSelect(testSel, s.replicas.map((r) => r.name), true);
    fillSelect(liveSel, s.replicas.map((r) => r.name), true);
    if (testSel.value !== hadTest) fillCheckpoints(testSel, $("#test-checkpoint"));
    if (liveSel.value !== hadLive) fillCheckpoints(liveSel, $("#live-checkpoint"));
    document.body.dataset.loaded = "true";
    return true;
  } catch (e) {
    if (e instanceof Unauthorized) { showLogin(token ? "That token was refused." : ""); return false; }
    text($("#conn"), `cannot reach the agent: ${e.message}`);
    return true;
  }
}

async function submit(form, fn) {
  const out = form.querySelector(".result");
  out.className = "result";
  text(out, "working…");
  try { text(out, await fn()); } catch (e) { out.className = "result error"; text(out, e.message); }
  refresh();
}

$("#tag-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const f = e.target;
  submit(f, async () => {
    const cp = await api("POST", `/v1/vpgs/${encodeURIComponent(f.vpg.value)}/checkpoints`, { tag: f.tag.value });
    f.tag.value = "";
    return `tagged checkpoint ${cp.seq} "${cp.tag}"`;
  });
});

$("#test-vpg").addEventListener("change", () => fillCheckpoints($("#test-vpg"), $("#test-checkpoint")));
$("#live-vpg").addEventListener("change", () => fillCheckpoints($("#live-vpg"), $("#live-checkpoint")));

$("#test-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const f = e.target;
  submit(f, async () => {
    const t = await api("POST", `/v1/failover/${encodeURIComponent(f.vpg.value)}/test`, { checkpoint: f.checkpoint.value || "latest" });
    return `test of ${t.vpg} started at checkpoint ${t.checkpoint.seq}: ${t.exports.length} export(s)`;
  });
});

for (const r of document.querySelectorAll("input[name=mode]")) {
  r.addEventListener("change", () => {
    const live = document.querySelector("input[name=mode]:checked").value === "live";
    document.body.classList.toggle("live-mode", live);
    $("#live-form").hidden = !live;
    $("#test-form").hidden = live;
    if (status) renderRunning(status);
  });
}

$("#live-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const f = e.target;
  const vpg = f.vpg.value;
  const d = $("#confirm");
  text($("#confirm-text"), `VPG ${vpg} will run at this site from checkpoint ${f.checkpoint.value || "latest"}; its protected site: ${f.shutdown.selectedOptions[0].text}.`);
  $("#confirm-name").value = "";
  d.returnValue = "";
  d.onclose = () => {
    if (d.returnValue !== "go") return;
    if ($("#confirm-name").value !== vpg) { text(f.querySelector(".result"), "Not confirmed: the name typed was not the VPG's."); return; }
    submit(f, async () => {
      const l = await api("POST", `/v1/failover/${encodeURIComponent(vpg)}/live`,
        { checkpoint: f.checkpoint.value || "latest", shutdown: f.shutdown.value });
      return `LIVE: ${l.vpg} runs here at checkpoint ${l.checkpoint.seq} (${l.phase})`;
    });
  };
  d.showModal();
  $("#confirm-name").focus();
});

function stopTest(vpg) {
  const d = $("#stop");
  d.returnValue = "";
  $("#stop-note").value = "";
  d.onclose = async () => {
    if (d.returnValue !== "go") return;
    const f = $("#stop-form");
    const result = f.querySelector("input[name=result]:checked").value;
    try {
      const r = await api("POST", `/v1/failover/${encodeURIComponent(vpg)}/stop`, { result, note: $("#stop-note").value });
      text($("#test-form .result"), `test of ${r.vpg} stopped: ${r.result}, report recorded`);
    } catch (e) { text($("#test-form .result"), e.message); }
    refresh();
  };
  d.showModal();
}

async function liveAction(vpg, what) {
  if (!window.confirm(what === "commit" ? `Commit the live failover of ${vpg}? It then runs here for good.` : `Roll back the live failover of ${vpg}? Writes made here are discarded.`)) return;
  try { await api("POST", `/v1/failover/${encodeURIComponent(vpg)}/${what}`, what === "commit" ? {} : undefined); }
  catch (e) { text($("#live-form .result"), e.message); }
  refresh();
}

async function start() {
  if (!(await refresh())) return;
  try { (await api("GET", "/v1/events")).slice(-EVENTS_SHOWN).forEach((e) => addEvent(e, true)); } catch (_) { /* shown on refresh */ }
  streamEvents();
  if (!start.timer) start.timer = setInterval(refresh, REFRESH_MS);
}

start();
