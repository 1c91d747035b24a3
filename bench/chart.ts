/**
 * A bench run as an SVG bar chart, one panel per scenario, one bar per
 * server, in plain SVG that any browser or markdown viewer shows.
 *
 * @module
 */
import { formatNumber, shortBurnMs } from "./report.ts";
import type { BenchResult } from "./run.ts";
import type { Row } from "./scenarios.ts";

/** What a bar's number alone would hide. */
function barNote(row: Row, cpuMs?: number): string | undefined {
  if (row.stoppedBy) return `held ${row.idleServed}`;
  const burnt = shortBurnMs(row, cpuMs);
  if (burnt !== undefined) return `${formatNumber(burnt)} ms CPU/req`;
  if (typeof row.errors === "number" && row.errors > 0) {
    return `${formatNumber(row.errors)} errors`;
  }
  return undefined;
}

const COLORS: Record<string, string> = {
  bare: "#6b7280",
  "bare-relay": "#fca5a5",
  evented: "#2563eb",
  iterative: "#9333ea",
  forked: "#dc2626",
  threaded: "#ea580c",
  "threaded-pool": "#ca8a04",
  prefork: "#16a34a",
  "cluster-shared": "#0d9488",
  "cluster-rr": "#0891b2",
  handoff: "#f87171",
  "socat-pipe": "#94a3b8",
  "socat-exec": "#94a3b8",
  ncat: "#94a3b8",
  reference: "#cbd5e1",
};

function escapeXml(text: string): string {
  return text.replace(
    /[&<>"]/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]!,
  );
}

/** The chart of `result`: a bar chart, one panel per scenario. */
export function chart(result: BenchResult): string {
  const panelWidth = 470;
  const labelWidth = 170;
  const barSpace = 190;
  const rowHeight = 22;
  const gap = 20;
  const columns = 2;
  const panels = result.scenarios.map((scenario) => {
    const { metric, unit, lowerIsBetter, log } = scenario;
    const bars = scenario.rows.map((row) => ({
      label: row.label.replace(/ \(reference\)$/, " (ref)"), // fits the panel
      value: typeof row[metric] === "number" ? row[metric] as number : null,
      color: COLORS[row.server] ?? COLORS.reference,
      note: row.note ?? barNote(row, scenario.cpuMs),
    }));
    if (scenario.id === "S4" && result.references) {
      bars.push(
        {
          label: "Deno child start (ref)",
          value: result.references.childStartsPerSecond,
          color: COLORS.reference,
          note: undefined,
        },
        {
          label: "Worker start (ref)",
          value: result.references.workerStartsPerSecond,
          color: COLORS.reference,
          note: undefined,
        },
      );
    }
    return { scenario, unit, lowerIsBetter, log, bars };
  });
  const heights = panels.map((p) =>
    52 + p.bars.length * rowHeight + (p.log ? 24 : 8)
  );
  const rows = Math.ceil(panels.length / columns);
  const rowTops: number[] = [];
  let top = 64;
  for (let r = 0; r < rows; r++) {
    rowTops.push(top);
    top += Math.max(...heights.slice(r * columns, r * columns + columns)) +
      gap;
  }
  const width = columns * panelWidth + (columns + 1) * gap;
  const height = top + 10;
  const { machine, settings } = result;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="${gap}" y="28" font-size="18" font-weight="bold" fill="#111827">Echo servers side by side</text>`,
    `<text x="${gap}" y="48" font-size="12" fill="#4b5563">${
      escapeXml(
        `${machine.cpus} CPUs (${machine.cpuModel}), Deno ${machine.deno}, ${
          machine.date.slice(0, 10)
        }; ${settings.duration} s per run${settings.quick ? " (quick)" : ""}${
          settings.rounds > 1 ? `, median of ${settings.rounds} rounds` : ""
        }`,
      )
    }</text>`,
  ];
  panels.forEach((panel, i) => {
    const x = gap + (i % columns) * (panelWidth + gap);
    const y = rowTops[Math.floor(i / columns)];
    const { scenario } = panel;
    const values = panel.bars.map((b) => b.value ?? 0).filter((v) => v > 0);
    const max = Math.max(...values, 1e-9);
    // Log panels start a third below the smallest value, so it shows.
    const low = Math.min(...values, max) / 3;
    const barWidth = (value: number) =>
      Math.max(
        1,
        panel.log
          ? Math.log(value / low) / Math.log(max / low) * barSpace
          : value / max * barSpace,
      );
    out.push(
      `<g transform="translate(${x},${y})">`,
      `<rect width="${panelWidth}" height="${
        heights[i]
      }" rx="6" fill="#f9fafb" stroke="#e5e7eb"/>`,
      `<text x="12" y="22" font-size="14" font-weight="bold" fill="#111827">${
        escapeXml(`${scenario.id} ${scenario.title}`)
      }</text>`,
      `<text x="12" y="40" font-size="11" fill="#4b5563">${
        escapeXml(
          `${panel.unit} (${
            panel.lowerIsBetter ? "lower" : "higher"
          } is better${panel.log ? "; log scale" : ""})`,
        )
      }</text>`,
    );
    if (panel.log && values.length) {
      // A tick per power of ten, so that the log scale reads as one.
      const axis = 52 + panel.bars.length * rowHeight + 4;
      for (
        let tick = 10 ** Math.ceil(Math.log10(low));
        tick <= max;
        tick *= 10
      ) {
        const tx = (labelWidth + barWidth(tick)).toFixed(1);
        out.push(
          `<line x1="${tx}" y1="52" x2="${tx}" y2="${axis}" stroke="#d1d5db" stroke-dasharray="2,3"/>`,
          `<text x="${tx}" y="${
            axis + 12
          }" font-size="10" text-anchor="middle" fill="#6b7280">${
            tick.toLocaleString("en-US", { maximumFractionDigits: 3 })
          }</text>`,
        );
      }
    }
    panel.bars.forEach((bar, j) => {
      const by = 52 + j * rowHeight;
      out.push(
        `<text x="${labelWidth - 8}" y="${
          by + 15
        }" font-size="12" text-anchor="end" fill="#111827">${
          escapeXml(bar.label)
        }</text>`,
      );
      if (bar.value === null) {
        out.push(
          `<text x="${labelWidth}" y="${
            by + 15
          }" font-size="11" fill="#6b7280">${
            escapeXml(bar.note ?? "no result")
          }</text>`,
        );
        return;
      }
      const w = bar.value > 0 ? barWidth(bar.value) : 1;
      out.push(
        `<rect x="${labelWidth}" y="${by + 3}" width="${
          w.toFixed(1)
        }" height="${rowHeight - 6}" fill="${bar.color}"/>`,
        `<text x="${labelWidth + w + 6}" y="${
          by + 15
        }" font-size="11" fill="#111827">${
          escapeXml(
            formatNumber(bar.value) + (bar.note ? ` (${bar.note})` : ""),
          )
        }</text>`,
      );
    });
    out.push("</g>");
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}
