/**
 * A small time-series line chart on <canvas>: a sliding window, one or two y axes, crisp on
 * high-DPI screens, colours from the page's CSS variables (so it follows the theme).
 *
 *   const chart = new LineChart(canvas, {
 *     windowMs: 10 * 60_000,
 *     series: [{ key: "eps", label: "events/s", color: "--accent", axis: "left", fill: true },
 *              { key: "open", label: "open tasks", color: "--ok", axis: "right" }],
 *   });
 *   chart.push(Date.now(), { eps: 12.5, open: 3 });
 */

function niceCeil(value) {
  if (!(value > 0)) return 1;
  const exp = Math.floor(Math.log10(value));
  const base = 10 ** exp;
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * base) return step * base;
  }
  return 10 * base;
}

function formatTick(value) {
  if (value === 0) return "0";
  if (Math.abs(value) >= 1000) return `${parseFloat((value / 1000).toFixed(1))}k`;
  return String(parseFloat(value.toFixed(2)));
}

const TIME_STEPS = [5, 10, 15, 30, 60, 120, 300, 600].map((s) => s * 1000);

export class LineChart {
  constructor(canvas, { series, windowMs = 10 * 60_000, minWindowMs = 30_000, maxPoints = 2000, emptyText = "Waiting for data…", minMax = {} }) {
    this.canvas = canvas;
    this.minWindowMs = minWindowMs;
    this.minMax = minMax;
    this.series = series;
    this.windowMs = windowMs;
    this.maxPoints = maxPoints;
    this.emptyText = emptyText;
    this.points = []; // [{t, values}]
    this._frame = null;
    const observer = typeof ResizeObserver !== "undefined" ? new ResizeObserver(() => this.draw()) : null;
    observer?.observe(canvas);
    window.addEventListener("themechange", () => this.draw());
    setInterval(() => this.draw(), 1_000);
    this.draw();
  }

  /** Add earlier points (e.g. a server's recent history): only those before the first point. */
  seed(points) {
    const first = this.points.length ? this.points[0].t : Infinity;
    const earlier = points.filter((p) => Number.isFinite(p.t) && p.t < first).sort((a, b) => a.t - b.t);
    this.points = [...earlier, ...this.points].slice(-this.maxPoints);
    this.draw();
  }

  push(t, values) {
    this.points.push({ t, values });
    if (this.points.length > this.maxPoints) this.points.splice(0, this.points.length - this.maxPoints);
    this.draw();
  }

  draw() {
    if (this._frame) return;
    this._frame = requestAnimationFrame(() => {
      this._frame = null;
      this._render();
    });
  }

  _color(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
  }

  _render() {
    const canvas = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const muted = this._color("--text-faint");
    const grid = this._color("--chart-grid");
    const hasRight = this.series.some((s) => s.axis === "right");
    const pad = { left: 44, right: hasRight ? 44 : 16, top: 12, bottom: 26 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const now = Date.now();
    // The window grows with the data (from `minWindowMs`) up to `windowMs`, then slides: a
    // fresh page shows its first seconds across the chart rather than in a sliver at the edge.
    const first = this.points.length ? this.points[0].t : now;
    const span = Math.min(this.windowMs, Math.max(this.minWindowMs, (now - first) * 1.15));
    const t0 = now - span;
    const visible = this.points.filter((p) => p.t >= t0 - 60_000);

    const maxFor = (axis) => {
      // A floor per axis keeps an idle service's chart calm instead of magnifying noise.
      let max = 0;
      for (const s of this.series.filter((x) => (x.axis || "left") === axis)) {
        for (const p of visible) max = Math.max(max, Number(p.values[s.key]) || 0);
      }
      // A nice step first, so every grid line gets a round label.
      return niceCeil(Math.max(this.minMax[axis] ?? 1, max * 1.1) / rows) * rows;
    };
    const rows = 4;
    const scales = { left: maxFor("left"), right: hasRight ? maxFor("right") : 1 };
    const x = (t) => pad.left + ((t - t0) / span) * plotW;
    const y = (v, axis) => pad.top + plotH - (Math.max(0, v) / scales[axis]) * plotH;

    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    // Horizontal grid and y labels.
    for (let i = 0; i <= rows; i++) {
      const gy = Math.round(pad.top + (plotH * i) / rows) + 0.5;
      ctx.strokeStyle = grid;
      ctx.beginPath();
      ctx.moveTo(pad.left, gy);
      ctx.lineTo(pad.left + plotW, gy);
      ctx.stroke();
      ctx.fillStyle = muted;
      ctx.textBaseline = "middle";
      ctx.textAlign = "right";
      ctx.fillText(formatTick((scales.left * (rows - i)) / rows), pad.left - 8, gy);
      if (hasRight) {
        ctx.textAlign = "left";
        ctx.fillText(formatTick((scales.right * (rows - i)) / rows), pad.left + plotW + 8, gy);
      }
    }
    // About five time labels, on round seconds or minutes.
    const stepMs = TIME_STEPS.find((step) => span / step <= 6) || TIME_STEPS[TIME_STEPS.length - 1];
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let t = Math.ceil(t0 / stepMs) * stepMs; t <= now; t += stepMs) {
      const d = new Date(t);
      const hm = `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
      const label = stepMs < 60_000 ? `${hm}:${String(d.getSeconds()).padStart(2, "0")}` : hm;
      ctx.fillStyle = muted;
      ctx.fillText(label, x(t), pad.top + plotH + 8);
    }

    if (!visible.length) {
      ctx.fillStyle = muted;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.font = "13px system-ui, sans-serif";
      ctx.fillText(this.emptyText, pad.left + plotW / 2, pad.top + plotH / 2);
      return;
    }

    ctx.save();
    ctx.beginPath();
    ctx.rect(pad.left, pad.top - 2, plotW, plotH + 4);
    ctx.clip();
    for (const s of this.series) {
      const axis = s.axis || "left";
      const color = this._color(s.color);
      const pts = visible.filter((p) => typeof p.values[s.key] === "number");
      if (!pts.length) continue;
      ctx.lineJoin = "round";
      ctx.lineCap = "round";
      if (s.fill) {
        const gradient = ctx.createLinearGradient(0, pad.top, 0, pad.top + plotH);
        gradient.addColorStop(0, `${color}55`);
        gradient.addColorStop(1, `${color}00`);
        ctx.fillStyle = gradient;
        ctx.beginPath();
        ctx.moveTo(x(pts[0].t), pad.top + plotH);
        for (const p of pts) ctx.lineTo(x(p.t), y(p.values[s.key], axis));
        ctx.lineTo(x(pts[pts.length - 1].t), pad.top + plotH);
        ctx.closePath();
        ctx.fill();
      }
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      pts.forEach((p, i) => {
        const px = x(p.t);
        const py = y(p.values[s.key], axis);
        if (i === 0) ctx.moveTo(px, py);
        else if (s.step) {
          ctx.lineTo(px, y(pts[i - 1].values[s.key], axis));
          ctx.lineTo(px, py);
        } else ctx.lineTo(px, py);
      });
      ctx.stroke();
      const last = pts[pts.length - 1];
      ctx.fillStyle = color;
      ctx.beginPath();
      ctx.arc(x(last.t), y(last.values[s.key], axis), 3, 0, Math.PI * 2);
      ctx.fill();
    }
    ctx.restore();
  }
}
