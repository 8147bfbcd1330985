// Line charts drawn as inline SVG: no library, no network.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(tag, attrs, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(value)));
  for (const m of [1, 2, 2.5, 5, 10]) if (value <= m * p) return m * p;
  return 10 * p;
}

// series: [{name, color, points: [[t, v|null], ...]}]; opts: {span, end, format, max, axes}
function drawLineChart(svg, series, opts) {
  const width = svg.clientWidth || 300;
  const height = svg.clientHeight || 150;
  const bare = opts.axes === false;
  const legend = bare ? [] : legendLayout(series, opts.format, width);
  const legendRows = legend.length ? legend[legend.length - 1].row + 1 : 0;
  const pad = bare ? {left: 1, right: 1, top: 2, bottom: 2} : {left: 46, right: 8, top: 6 + 12 * legendRows, bottom: 16};
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const end = opts.end;
  const start = end - opts.span;
  let top = opts.max || 0;
  if (!opts.max) {
    for (const s of series) for (const [, v] of s.points) if (v !== null && v > top) top = v;
    top = niceMax(top);
  }
  const x = t => pad.left + (width - pad.left - pad.right) * (t - start) / (end - start || 1);
  const y = v => height - pad.bottom - (height - pad.top - pad.bottom) * Math.min(v, top) / top;
  for (const f of bare ? [] : [0, 0.5, 1]) {
    const yy = y(top * f);
    svg.appendChild(svgEl("line", {class: "axis", x1: pad.left, x2: width - pad.right, y1: yy, y2: yy}));
    svg.appendChild(svgEl("text", {x: pad.left - 4, y: yy + 3, "text-anchor": "end"}, opts.format(top * f)));
  }
  const minutes = opts.span / 60;
  for (const m of bare ? [] : [minutes, minutes / 2, 0]) {
    svg.appendChild(svgEl("text", {x: x(end - m * 60), y: height - 3, "text-anchor": m === minutes ? "start" : (m === 0 ? "end" : "middle")},
      m === 0 ? "now" : `-${Math.round(m * 10) / 10}m`));
  }
  for (const item of legend) {
    svg.appendChild(svgEl("rect", {x: item.x, y: 4 + 12 * item.row, width: 9, height: 9, fill: item.color}));
    svg.appendChild(svgEl("text", {x: item.x + 12, y: 12 + 12 * item.row}, item.label));
  }
  for (const s of series) {
    let d = "";
    let pen = false;
    for (const [t, v] of s.points) {
      if (t < start || v === null || v === undefined) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    }
    if (d) svg.appendChild(svgEl("path", {class: "series", d, stroke: s.color, "data-series": s.name}));
  }
}

// One legend entry per series ("name last-value"), wrapped onto as many rows as the width needs.
function legendLayout(series, format, width) {
  const items = [];
  let x = 46;
  let row = 0;
  for (const s of series) {
    const last = s.points.length ? s.points[s.points.length - 1][1] : null;
    const label = `${s.name} ${last === null || last === undefined ? "-" : format(last)}`;
    const size = 22 + label.length * 6;
    if (x + size > width && x > 46) { x = 46; row += 1; }
    items.push({x, row, label, color: s.color});
    x += size;
  }
  return items;
}

// Seconds the charts cover: what the history holds, at least a minute, at most the history kept.
function chartSpan(points, historySeconds) {
  if (points.length < 2) return Math.min(60, historySeconds);
  const held = points[points.length - 1].time - points[0].time;
  return Math.min(historySeconds, Math.max(60, Math.ceil(held / 60) * 60));
}
