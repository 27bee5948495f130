// The promptrun dashboard: plain DOM, no library, no CDN. Data comes from the status API
// with the token from sessionStorage in the Authorization header; text is always set with
// textContent, and the server's SVG charts are parsed as XML, never as HTML.
"use strict";

const KEY = "promptrun.token";
const $ = (sel) => document.querySelector(sel);

function token() { return sessionStorage.getItem(KEY); }

async function api(path, params) {
  const query = params ? "?" + new URLSearchParams(params).toString() : "";
  const resp = await fetch(path + query, {
    headers: { Authorization: "Bearer " + token() },
    cache: "no-store",
    referrerPolicy: "no-referrer",
  });
  if (resp.status === 401) { signOut("The token was not accepted."); throw new Error("401"); }
  if (!resp.ok) throw new Error(path + " answered " + resp.status);
  return resp;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

const num = (v, digits) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US", { maximumFractionDigits: digits ?? 0 }));

function progressBar(m) {
  const total = Math.max(1, m.planned);
  const pct = (n) => (100 * n / total).toFixed(1) + "%";
  const bar = el("div", { class: "bar", role: "img",
    "aria-label": `${m.succeeded} succeeded, ${m.failed} failed, ${m.planned - m.succeeded - m.failed} not finished, of ${m.planned}` });
  // CSSOM, not a style attribute: the Content-Security-Policy allows no inline style.
  for (const [cls, n] of [["ok", m.succeeded], ["bad", m.failed], ["wait", m.retrying + m.waiting + m.running]]) {
    const part = el("span", { class: cls });
    part.style.width = pct(n);
    bar.append(part);
  }
  return bar;
}

function fillTable(id, rows) {
  const body = $(id + " tbody");
  body.replaceChildren(...rows);
}

function option(value, label) { return el("option", { value }, label); }

async function loadOverview() {
  const data = await (await api("dashboard/overview", { batches: 10 })).json();
  const rows = [];
  for (const b of data.batches) {
    b.models.forEach((m, i) => {
      const tr = el("tr", { class: "batch-row", "data-batch": b.batch_key, "data-model": m.model });
      if (i === 0) tr.append(el("th", { scope: "row", rowspan: b.models.length }, b.batch_key));
      tr.append(el("td", {}, m.model), el("td", { class: "num" }, m.planned),
        el("td", { class: "num" }, m.succeeded), el("td", { class: "num" }, m.failed),
        el("td", { class: "num" }, m.retrying), el("td", { class: "num" }, m.waiting),
        el("td", { class: "num" }, m.running), el("td", {}, progressBar(m)));
      rows.push(tr);
    });
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 9 }, "No batches yet.")));
  fillTable("#batches", rows);
  fillTable("#models", data.models.map((m) => el("tr", {},
    el("th", { scope: "row" }, m.model), el("td", { class: "num" }, num(m.jobs)),
    el("td", { class: "num" }, num(m.p50_latency_ms, 1)), el("td", { class: "num" }, num(m.p95_latency_ms, 1)),
    el("td", { class: "num" }, num(m.input_tokens)), el("td", { class: "num" }, num(m.output_tokens)),
    el("td", { class: "num" }, num(m.cost_usd, 4)))));
  fillTable("#failures", data.failures.length ? data.failures.map((f) => el("tr", {},
    el("th", { scope: "row" }, f.error_kind), el("td", { class: "num" }, f.failed),
    el("td", { class: "num" }, f.retrying), el("td", {}, f.example || ""))) :
    [el("tr", {}, el("td", { colspan: 4 }, "No failures in the recent batches."))]);

  const brand = $("#brand");
  if (!brand.options.length) {
    for (const b of data.brands) brand.append(option(b.slug, b.name + (b.own ? " (yours)" : "")));
    if (!data.brands.length) brand.append(option("", "no brands in the catalogue"));
    for (const p of data.prompts) $("#prompt-filter").append(option(p, p));
    for (const b of data.batches) $("#answers-batch").append(option(b.batch_key, b.batch_key));
    for (const p of data.prompts) $("#answers-prompt").append(option(p, p));
  }
}

async function loadCharts() {
  const brand = $("#brand").value;
  if (!brand) return;
  // The last 90 days: a year of every brand is seconds of work; the API takes from/to.
  const since = new Date(Date.now() - 90 * 864e5).toISOString().slice(0, 10);
  const params = { brand, from: since };
  if ($("#prompt-filter").value) params.prompt = $("#prompt-filter").value;
  for (const metric of ["mention_rate", "share_of_voice"]) {
    const svgText = await (await api("dashboard/charts/visibility.svg", { ...params, metric })).text();
    const doc = new DOMParser().parseFromString(svgText, "image/svg+xml");
    const svg = doc.documentElement;
    if (svg.nodeName !== "svg") throw new Error("chart is not SVG");
    $("#chart-" + metric).replaceChildren(document.importNode(svg, true));
  }
}

function renderAnswer(a) {
  const text = el("p", { class: "answer-text", id: "answer-" + a.job_id, hidden: "" });
  for (const s of a.segments) {
    if (!s.entity) { text.append(s.text); continue; }
    const cls = s.own ? "own" : s.brand ? "brand" : "entity";
    const label = s.brand ? `${s.entity}: tracked brand ${s.brand}${s.own ? " (yours)" : ""}` : s.entity;
    text.append(el("mark", { class: cls, title: label }, s.text));
  }
  const names = a.mentions.map((m) => m.entity).join(", ");
  const button = el("button", { type: "button", "aria-expanded": "false", "aria-controls": "answer-" + a.job_id },
    `${a.model}, run ${a.run_index}: ${a.mentions.length} mentions${names ? " (" + names + ")" : ""}`);
  button.addEventListener("click", () => {
    const open = button.getAttribute("aria-expanded") === "true";
    button.setAttribute("aria-expanded", String(!open));
    text.hidden = open;
  });
  return el("li", { class: "answer" }, button, text);
}

async function loadAnswers() {
  const batch = $("#answers-batch").value, prompt = $("#answers-prompt").value;
  if (!batch || !prompt) return;
  const data = await (await api("dashboard/answers", { batch_key: batch, prompt })).json();
  const items = data.items.map(renderAnswer);
  $("#answers").replaceChildren(...(items.length ? items : [el("li", {}, "No answers for this prompt in this batch.")]));
}

async function show() {
  $("#login").hidden = true;
  $("#main").hidden = false;
  $("#signout").hidden = false;
  $("#status").textContent = "Loading…";
  try {
    await loadOverview();
    await Promise.all([loadCharts(), loadAnswers()]);
    $("#status").textContent = "Updated " + new Date().toLocaleTimeString();
  } catch (err) {
    if (err.message !== "401") $("#status").textContent = "Could not load: " + err.message;
  }
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  $("#main").hidden = true;
  $("#signout").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("#token").value.trim());
    $("#token").value = "";
    show();
  });
  $("#signout").addEventListener("click", () => signOut("Signed out."));
  $("#brand").addEventListener("change", () => loadCharts().catch(() => {}));
  $("#prompt-filter").addEventListener("change", () => loadCharts().catch(() => {}));
  $("#answers-batch").addEventListener("change", () => loadAnswers().catch(() => {}));
  $("#answers-prompt").addEventListener("change", () => loadAnswers().catch(() => {}));
  if (token()) show();
});
