// The live chart of `cryptopipe serve` (docs/api.md). plotly.js draws; this file only
// fetches from the API, shapes the data into traces and keeps them current.
// Prices arrive as exact decimal strings; the chart plots them as numbers and shows
// the exact strings on hover.
"use strict";

const state = { symbol: null, exchange: null, interval: "1m", candles: [], events: 0,
                spreads: [] };
let source = null;
const $ = (id) => document.getElementById(id);
// What the tests read (and a curious user can, in the console).
window.cryptopipe = state;

async function getJSON(url) {
  const resp = await fetch(url);
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || resp.statusText);
  return body;
}

function query(extra) {
  const p = new URLSearchParams({ symbol: state.symbol, exchange: state.exchange, ...extra });
  return p.toString();
}

const iso = (ms) => new Date(ms).toISOString();

function traces(candles, history) {
  const x = candles.map((c) => iso(c.open_time));
  const num = (k) => candles.map((c) => Number(c[k]));
  const exact = candles.map((c) => [c.open, c.high, c.low, c.close, c.volume, c.source,
                                    c.closed ? "closed" : "live"]);
  const up = candles.map((c) => Number(c.close) >= Number(c.open));
  const out = [
    {
      type: "candlestick", name: state.symbol, x, open: num("open"), high: num("high"),
      low: num("low"), close: num("close"), customdata: exact, yaxis: "y",
      increasing: { line: { color: "#26a69a" } }, decreasing: { line: { color: "#ef5350" } },
      hovertemplate: "%{x}<br>O %{customdata[0]} H %{customdata[1]}<br>" +
        "L %{customdata[2]} C %{customdata[3]}<br>V %{customdata[4]} (%{customdata[5]}, " +
        "%{customdata[6]})<extra></extra>",
    },
    {
      type: "bar", name: "volume", x, y: num("volume"), yaxis: "y2", hoverinfo: "skip",
      marker: { color: up.map((u) => (u ? "rgba(38,166,154,.45)" : "rgba(239,83,80,.45)")) },
    },
  ];
  if (history.length) {
    const hx = history.map((m) => iso(m.open_time));
    for (const [k, color] of [["ema_12", "#f5c542"], ["ema_26", "#5b9cf5"]]) {
      out.push({ type: "scatter", mode: "lines", name: k.toUpperCase().replace("_", " "),
                 x: hx, y: history.map((m) => m[k]), line: { color, width: 1.3 },
                 connectgaps: false, yaxis: "y" });
    }
    const odd = history.filter((m) => m.price_anomaly || m.volume_anomaly);
    const highs = new Map(candles.map((c) => [c.open_time, Number(c.high)]));
    out.push({
      type: "scatter", mode: "markers", name: "anomaly", yaxis: "y",
      x: odd.map((m) => iso(m.open_time)),
      y: odd.map((m) => (highs.get(m.open_time) || Number(m.close)) * 1.001),
      text: odd.map((m) => [m.price_anomaly ? "price" : "", m.volume_anomaly ? "volume" : ""]
        .filter(Boolean).join(" + ") + " anomaly"),
      marker: { symbol: "triangle-down", size: 10, color: "#ff9800" },
      hovertemplate: "%{x}<br>%{text}<extra></extra>",
    });
  }
  return out;
}

const layout = () => ({
  paper_bgcolor: "#0f1419", plot_bgcolor: "#0f1419", font: { color: "#d6dde4" },
  margin: { l: 84, r: 20, t: 10, b: 30 }, showlegend: true,
  legend: { orientation: "h", x: 0, y: 1.04 },
  xaxis: { rangeslider: { visible: false }, gridcolor: "#1e2832", type: "date" },
  yaxis: { domain: [0.25, 1], gridcolor: "#1e2832", tickformat: ",.2f" },
  yaxis2: { domain: [0, 0.2], gridcolor: "#1e2832" },
  uirevision: `${state.symbol}|${state.exchange}|${state.interval}`,
});

let history = [];

function draw() {
  Plotly.react("chart", traces(state.candles, history), layout(), { responsive: true });
  const last = state.candles[state.candles.length - 1];
  $("price").textContent = last ? `${last.close} (${last.closed ? "closed" : "live"})` : "-";
}

// Each day: where its candles come from (stream or batch) and its reconciliation.
// A day is served from the batch only once a reconciliation passed (reconciled); a
// failed one leaves the stream's candles on show (unexplained N).
async function days() {
  const byDay = new Map();
  for (const c of state.candles) byDay.set(iso(c.open_time).slice(0, 10), c.source);
  const strip = $("days");
  strip.textContent = "";
  for (const [day, src] of [...byDay].slice(-14)) {
    const el = document.createElement("span");
    el.className = `day ${src}`;
    el.dataset.day = day;
    el.textContent = `${day} ${src}`;
    strip.appendChild(el);
    let r = null;
    try {
      r = await getJSON(`/api/reconciliation?date=${day}`);
    } catch (e) {
      if (src === "batch") el.textContent = `${day} batch, not reconciled`;
      continue;
    }
    if (r.unexplained > 0) {
      el.className = "day unexplained";
      el.textContent = `${day} ${src}, unexplained ${r.unexplained}`;
    } else if (src === "batch") {
      el.className = "day reconciled";
      el.textContent = `${day} batch, reconciled`;
    } else {
      el.textContent = `${day} stream, reconciled, batch not yet served`;
    }
  }
}

function follow() {
  if (source) source.close();
  $("live").className = "";
  source = new EventSource(`/api/live?${query({ interval: state.interval })}`);
  source.onopen = () => { $("live").className = "on"; };
  source.onerror = () => { $("live").className = ""; };
  source.addEventListener("candle", (ev) => {
    const c = JSON.parse(ev.data);
    if (state.exchange && c.exchange !== state.exchange) return;
    const cs = state.candles;
    const i = cs.findIndex((k) => k.open_time === c.open_time);
    if (i >= 0) cs[i] = c;
    else if (!cs.length || c.open_time > cs[cs.length - 1].open_time) cs.push(c);
    else return;
    state.events += 1;
    draw();
  });
}

async function load() {
  $("error").textContent = "";
  try {
    const [candles, hist] = await Promise.all([
      getJSON(`/api/candles?${query({ interval: state.interval, end: "2100-01-01" })}`),
      state.interval === "1m"
        ? getJSON(`/api/metrics/history?${query({})}`) : Promise.resolve([]),
    ]);
    state.candles = candles.filter((c) => c.exchange === state.exchange);
    history = hist;
    state.loaded = `${state.symbol}|${state.exchange}|${state.interval}`;
    draw();
    follow();
    days();
    spreads();
  } catch (e) {
    $("error").textContent = e.message;
  }
}

// The spreads the series is in (/api/spreads), as text above the chart: exact strings.
async function spreads() {
  const key = `${state.symbol}|${state.exchange}`;
  let list = [];
  try {
    list = await getJSON(`/api/spreads?${query({})}`);
  } catch (e) {
    return; // the candles' error line says what is wrong
  }
  if (`${state.symbol}|${state.exchange}` !== key) return;
  state.spreads = list;
  $("spreads").replaceChildren(...list.map((s) => {
    const el = document.createElement("span");
    el.className = "spread";
    el.title = `${s.a} ${s.a_close} at ${iso(s.a_open_time)}\n` +
      `${s.b} ${s.b_close} at ${iso(s.b_open_time)}`;
    el.append(`${s.a} - ${s.b}: `);
    const v = document.createElement("b");
    v.textContent = s.spread;
    el.append(v, ` ${s.base} (${s.a_quote} vs ${s.b_quote})`);
    return el;
  }));
}

async function start() {
  const series = await getJSON("/api/symbols");
  if (!series.length) {
    $("error").textContent = "no candles yet: is a feed running? (cryptopipe status)";
    return;
  }
  const symbols = [...new Set(series.map((s) => s.symbol))];
  const params = new URLSearchParams(location.search);
  state.symbol = params.get("symbol") || symbols[0];
  state.interval = params.get("interval") || "1m";
  $("symbol").innerHTML = symbols.map((s) => `<option>${s}</option>`).join("");
  $("symbol").value = state.symbol;
  $("interval").value = state.interval;
  const fillExchanges = () => {
    const exs = series.filter((s) => s.symbol === state.symbol).map((s) => s.exchange);
    $("exchange").innerHTML = exs.map((e) => `<option>${e}</option>`).join("");
    state.exchange = exs.includes(state.exchange) ? state.exchange : exs[0];
    $("exchange").value = state.exchange;
  };
  fillExchanges();
  $("symbol").onchange = () => { state.symbol = $("symbol").value; fillExchanges(); load(); };
  $("exchange").onchange = () => { state.exchange = $("exchange").value; load(); };
  $("interval").onchange = () => { state.interval = $("interval").value; load(); };
  load();
  setInterval(spreads, 10_000); // spreads move once a minute
}

start();
