// SVG charts drawn with the DOM (no library): agreement over time, calibration, drift bars.
// Every number is set as text or an attribute, never parsed as HTML.

const SVG = "http://www.w3.org/2000/svg";

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

function svgEl(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  setAttrs(node, attrs);
  if (text !== null) node.textContent = String(text);
  return node;
}

function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.setAttribute("class", value);
    else if (name === "text") node.textContent = String(value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
}

export function pct(value, digits = 1) {
  return value === null || value === undefined ? "–" : `${(value * 100).toFixed(digits)}%`;
}

export function utc(iso, withTime = true) {
  let text = String(iso);
  if (/[+-]\d\d:\d\d$/.test(text)) { // an offset (Python's isoformat): to UTC first
    const parsed = new Date(text);
    if (!Number.isNaN(parsed.getTime())) text = parsed.toISOString();
  }
  text = text.replace("T", " ").replace(/(\.\d+)?Z$/, "");
  return withTime ? `${text.slice(0, 16)} UTC` : text.slice(0, 10);
}

const W = 300, H = 150, M = { left: 34, right: 8, top: 10, bottom: 22 };
const PLOT_W = W - M.left - M.right, PLOT_H = H - M.top - M.bottom;
const yOf = (share) => M.top + PLOT_H * (1 - share);

function frame(svg, yTicks = [0, 0.5, 1]) {
  for (const tick of yTicks) {
    svg.append(svgEl("line", { class: "grid-line", x1: M.left, x2: W - M.right, y1: yOf(tick), y2: yOf(tick) }));
    svg.append(svgEl("text", { x: M.left - 4, y: yOf(tick) + 3, "text-anchor": "end" }, pct(tick, 0)));
  }
  svg.append(svgEl("line", { class: "axis", x1: M.left, x2: M.left, y1: M.top, y2: M.top + PLOT_H }));
  svg.append(svgEl("line", { class: "axis", x1: M.left, x2: W - M.right, y1: M.top + PLOT_H, y2: M.top + PLOT_H }));
}

// Labels never overlap: each one's width is measured in the page's font (a canvas; without
// one, estimated generously), and a label that would touch one already placed, or cross the
// bar line, goes up a lane. SVG text is 10 units high whatever the chart's size on screen.
const CHAR_W = 6.6, LABEL_H = 11, LANE = 12;
let ruler;
function labelWidth(text) {
  if (ruler === undefined) {
    ruler = null;
    try {
      const context = document.createElement("canvas").getContext("2d");
      context.font = `10px ${getComputedStyle(document.body).fontFamily}`;
      ruler = context;
    } catch {
      // no canvas: the estimate below
    }
  }
  const measured = ruler ? ruler.measureText(String(text)).width : 0;
  return measured > 0 ? measured * 1.08 + 1 : String(text).length * CHAR_W;
}
const touches = (a, b) => a.x0 < b.x1 + 2 && b.x0 < a.x1 + 2 && a.y0 < b.y1 && b.y0 < a.y1;

function barLine(svg, bar) {
  if (bar === null || bar === undefined) return [];
  const text = `bar ${pct(bar, 0)}`;
  const below = yOf(bar) - 3 - LABEL_H + 2 < 0; // no room above the line: write it under
  const y = below ? yOf(bar) + LABEL_H : yOf(bar) - 3;
  svg.append(svgEl("line", { class: "bar-line", "data-bar": bar, x1: M.left, x2: W - M.right, y1: yOf(bar), y2: yOf(bar) }));
  svg.append(svgEl("text", { x: M.left + 3, y, class: "bar-label" }, text));
  return [
    { x0: M.left + 3, x1: M.left + 3 + labelWidth(text), y0: y - LABEL_H + 2, y1: y + 2 },
    { x0: M.left, x1: W - M.right, y0: yOf(bar) - 1, y1: yOf(bar) + 1 }, // the line itself
  ];
}

// Marker labels ({x, text, cls}) beside their lines (left of it near the right edge), in their
// lines' colours, from the bottom of the plot up: each in the lowest lane where it touches
// nothing already placed (``taken``: boxes in SVG units).
function placeLabels(svg, labels, taken) {
  for (const label of [...labels].sort((a, b) => a.x - b.x)) {
    const width = labelWidth(label.text);
    const end = label.x + 2 + width > W; // near the right edge: write it left of the line
    const x0 = end ? label.x - 2 - width : label.x + 2;
    let lane = 0, box;
    for (; lane < 8; lane++) {
      const y = M.top + PLOT_H - 4 - lane * LANE;
      box = { x0, x1: x0 + width, y0: y - LABEL_H + 2, y1: y + 2 };
      if (!taken.some((other) => touches(box, other))) break;
    }
    taken.push(box);
    svg.append(svgEl("text", {
      x: end ? label.x - 2 : label.x + 2, y: box.y1 - 2, "text-anchor": end ? "end" : "start",
      class: label.cls, "data-lane": lane,
    }, label.text));
  }
}

function polyline(svg, points, cls) { // a calibration curve (thresholds leave no gaps)
  if (points.length > 1) {
    svg.append(svgEl("polyline", { class: cls, points: points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ") }));
  }
}

// -- agreement over time --------------------------------------------------------------------

const HOUR = 3600e3, DAY = 86400e3;
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
// Tick spacings tried in turn, the finest whose labels fit side by side wins.
const SPACINGS = {
  hour: [1, 2, 3, 6, 12, 24, 48, 96, 168].map((h) => h * HOUR),
  day: [1, 2, 3, 7, 14, 28, 56, 91, 182, 364].map((d) => d * DAY),
};
const R_MIN = 1.5, R_MAX = 4.5; // a point's radius: the bucket with the most comparisons gets R_MAX

const dayLabel = (ms) => `${MONTHS[new Date(ms).getUTCMonth()]} ${new Date(ms).getUTCDate()}`;
function hourLabel(ms) {
  const hour = new Date(ms).getUTCHours();
  return hour === 0 ? dayLabel(ms) : `${String(hour).padStart(2, "0")}:00`;
}

// The x axis, in UTC: hourly charts tick the hours between buckets (a date at midnight), daily
// charts name each day under its point. Labels are measured and never touch: the finest
// spacing whose labels fit is drawn, each kept inside the chart.
function timeAxis(svg, start, end, step) {
  const xAt = (ms) => M.left + PLOT_W * ((ms - start) / (end - start));
  const stepMs = step === "hour" ? HOUR : DAY;
  for (const [n, spacing] of SPACINGS[step].entries()) {
    const ticks = [];
    if (step === "hour") { // on the hour marks that divide the day (UTC)
      for (let t = Math.ceil(start / spacing) * spacing; t <= end; t += spacing) ticks.push(t);
    } else { // under the days' points, every so many days from the first
      for (let t = start; t < end; t += spacing) ticks.push(t + stepMs / 2);
    }
    const labels = ticks.map((t) => {
      const text = step === "hour" ? hourLabel(t) : dayLabel(t - stepMs / 2);
      const width = labelWidth(text);
      const x0 = Math.min(Math.max(xAt(t) - width / 2, 1), W - 1 - width);
      return { t, text, x0, x1: x0 + width };
    });
    const fits = labels.every((label, i) => i === 0 || label.x0 >= labels[i - 1].x1 + 6);
    if (!fits && n < SPACINGS[step].length - 1) continue;
    for (const label of fits ? labels : [labels[0]]) {
      const x = xAt(label.t);
      svg.append(svgEl("line", { class: "tick", x1: x, x2: x, y1: M.top + PLOT_H, y2: M.top + PLOT_H + 3 }));
      svg.append(svgEl("text", {
        class: "x-label", x: label.x0.toFixed(1), y: H - 6, "data-at": new Date(label.t).toISOString(),
      }, label.text));
    }
    svg.dataset.tickHours = String(spacing / HOUR);
    return;
  }
}

// One slice (or the aggregate) over time: a line through consecutive buckets with comparisons,
// broken where a bucket has none (nothing is drawn across a gap); a whisker for each bucket's
// 95% interval; each point's area in proportion to its comparisons (``maxSamples``: the most
// any point of the charts drawn together has, so sizes compare across charts); the bar dashed.
export function trendChart(series, buckets, step, maxSamples = null) {
  const stepMs = step === "hour" ? HOUR : DAY;
  const start = Date.parse(buckets[0]);
  const end = Date.parse(buckets[buckets.length - 1]) + stepMs;
  const xOf = (iso) => M.left + PLOT_W * ((Date.parse(iso) + stepMs / 2 - start) / (end - start));
  const most = maxSamples ?? Math.max(1, ...series.points.map((p) => p.samples));
  const radius = (n) => R_MIN + (R_MAX - R_MIN) * Math.sqrt(Math.min(n / most, 1));
  const name = series.dimension === "all" ? "all" : `${series.dimension}=${series.value}`;
  const svg = svgEl("svg", {
    viewBox: `0 0 ${W} ${H}`, role: "img", "data-slice": name, "data-verdict": series.verdict ?? "",
    "aria-label": `agreement of ${name} over time`,
  });
  frame(svg);
  barLine(svg, series.bar);
  const slot = new Map(buckets.map((at, i) => [Date.parse(at), i]));
  const shown = [...series.points].filter((p) => p.samples > 0).sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
  const segments = [];
  let previous = null;
  for (const point of shown) {
    const at = slot.get(Date.parse(point.at));
    if (previous === null || at !== previous + 1) segments.push([]);
    segments[segments.length - 1].push(point);
    previous = at;
  }
  for (const point of shown) {
    const x = xOf(point.at);
    svg.append(svgEl("line", { class: "whisker", x1: x, x2: x, y1: yOf(point.ci_low), y2: yOf(point.ci_high) }));
  }
  for (const segment of segments) {
    if (segment.length < 2) continue;
    svg.append(svgEl("polyline", {
      class: "series", "data-from": segment[0].at, "data-to": segment[segment.length - 1].at,
      points: segment.map((p) => `${xOf(p.at).toFixed(1)},${yOf(p.agreement).toFixed(1)}`).join(" "),
    }));
  }
  for (const point of shown) {
    const dot = svgEl("circle", {
      class: point.below_bar ? "point below" : "point", cx: xOf(point.at).toFixed(1),
      cy: yOf(point.agreement).toFixed(1), r: radius(point.samples).toFixed(2), "data-at": point.at,
      "data-agreement": point.agreement, "data-samples": point.samples,
    });
    dot.append(svgEl("title", {}, `${utc(point.at, step === "hour")}: ${point.agreed}/${point.samples} agree, ` +
      `${pct(point.agreement)} (95% CI ${pct(point.ci_low)}–${pct(point.ci_high)})`));
    svg.append(dot);
  }
  timeAxis(svg, start, end, step);
  return svg;
}

// One calibration curve: agreement and served share against the threshold.
export function calibrationChart(curve, current, recommended) {
  const xOf = (t) => M.left + PLOT_W * t;
  const name = curve.dimension === "all" ? "all" : `${curve.dimension}=${curve.value}`;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "data-curve": name, "aria-label": `calibration of ${name}` });
  frame(svg);
  const taken = barLine(svg, curve.bar);
  const labels = [];
  for (const [value, cls, label] of [[current, "marker", "live"], [recommended, "marker recommended", "rec."]]) {
    if (value === null || value === undefined) continue;
    svg.append(svgEl("line", { class: cls, "data-threshold": value, x1: xOf(value), x2: xOf(value), y1: M.top, y2: M.top + PLOT_H }));
    labels.push({ x: xOf(value), text: `${label} ${value}`, cls: `marker-label ${label === "live" ? "live" : "recommended"}` });
  }
  placeLabels(svg, labels, taken);
  polyline(svg, curve.points.filter((p) => p.served > 0).map((p) => [xOf(p.threshold), yOf(p.agreement)]), "series");
  polyline(svg, curve.points.map((p) => [xOf(p.threshold), yOf(p.share ?? 0)]), "series share");
  for (const p of curve.points) {
    if (!p.served) continue;
    const dot = svgEl("circle", {
      class: p.meets_bar === false ? "point below" : "point", cx: xOf(p.threshold).toFixed(1),
      cy: yOf(p.agreement).toFixed(1), r: 2.2, "data-threshold": p.threshold,
      "data-agreement": p.agreement, "data-share": p.share,
    });
    dot.append(svgEl("title", {}, `threshold ${p.threshold}: serves ${p.served}/${p.total} (${pct(p.share)}), ` +
      `${p.agreed} agree (${pct(p.agreement)})`));
    svg.append(dot);
  }
  for (const tick of [0, 0.5, 1]) {
    svg.append(svgEl("text", { x: xOf(tick), y: H - 6, "text-anchor": tick === 0 ? "start" : tick === 1 ? "end" : "middle" }, tick));
  }
  return svg;
}

// One drift dimension: reference share and current share of each value, as paired bars.
export function driftChart(dimension, maxBins = 12) {
  const bins = dimension.bins.slice(0, maxBins);
  const rowH = 22, labelW = 110, width = 400, right = 46;
  const height = bins.length * rowH + 8;
  const top = Math.max(...bins.map((b) => Math.max(b.reference_share, b.current_share)), 0.01);
  const xOf = (share) => labelW + (width - labelW - right) * (share / top);
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "data-dimension": dimension.dimension, "data-psi": dimension.psi });
  bins.forEach((bin, i) => {
    const y = 4 + i * rowH;
    const label = String(bin.value);
    svg.append(svgEl("text", { x: labelW - 6, y: y + 13, "text-anchor": "end" }, label.length > 18 ? `${label.slice(0, 17)}…` : label));
    const ref = svgEl("rect", { class: "ref-bar", x: labelW, y, height: 8, width: Math.max(0.5, xOf(bin.reference_share) - labelW), "data-value": label, "data-share": bin.reference_share });
    ref.append(svgEl("title", {}, `${label}: reference ${pct(bin.reference_share)} (${bin.reference})`));
    const cur = svgEl("rect", { class: "cur-bar", x: labelW, y: y + 9, height: 8, width: Math.max(0.5, xOf(bin.current_share) - labelW), "data-value": label, "data-share": bin.current_share });
    cur.append(svgEl("title", {}, `${label}: current ${pct(bin.current_share)} (${bin.current})`));
    svg.append(ref, cur);
    svg.append(svgEl("text", { x: xOf(Math.max(bin.reference_share, bin.current_share)) + 4, y: y + 13 }, pct(bin.current_share)));
  });
  return svg;
}
