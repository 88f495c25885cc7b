/**
 * Lines of the Trace output channel: one kernel event (from `yool/trace` notifications or a
 * `trace` result) per line, time first, then kind and pid, then its data kept short.
 */

import { TraceEvent } from "./protocol";

export const DATA_CHARS = 300;

/** "HH:MM:SS.mmm" in UTC, so a line reads the same on every machine. */
export function clock(ts: number): string {
  const d = new Date(ts * 1000);
  return Number.isNaN(d.getTime()) ? "--:--:--.---" : d.toISOString().slice(11, 23);
}

function dataText(data: unknown, max: number): string {
  if (data === undefined || data === null) return "";
  let text: string;
  if (typeof data === "string") {
    text = data;
  } else if (typeof data === "object" && !Array.isArray(data)) {
    const parts = Object.entries(data as Record<string, unknown>).map(
      ([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`,
    );
    text = parts.join(" ");
  } else {
    text = JSON.stringify(data);
  }
  text = text.replace(/\s+/g, " ").trim();
  return text.length <= max ? text : text.slice(0, max - 1) + "…";
}

export function traceLine(ev: TraceEvent, max: number = DATA_CHARS): string {
  const pid = ev.pid === null || ev.pid === undefined ? "-" : String(ev.pid);
  const data = dataText(ev.data, max);
  return `${clock(ev.ts)} #${ev.seq} ${ev.kind.padEnd(8)} pid ${pid}${data ? "  " + data : ""}`;
}

/** Lines of a batch, in sequence order, skipping events already shown (seq <= `after`). */
export function traceLines(events: readonly TraceEvent[], after = 0): { lines: string[]; last: number } {
  const fresh = events.filter((e) => e.seq > after).sort((a, b) => a.seq - b.seq);
  return {
    lines: fresh.map((e) => traceLine(e)),
    last: fresh.length ? fresh[fresh.length - 1].seq : after,
  };
}

/** The line for events the server dropped because the channel fell behind. */
export function droppedLine(dropped: number | undefined): string | undefined {
  if (!dropped || dropped <= 0) return undefined;
  return `… ${dropped} event${dropped === 1 ? "" : "s"} dropped by the server (too many to stream; see yool trace)`;
}
