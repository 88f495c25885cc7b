/**
 * The status-bar item's content: the session's spend against its budget (used + remaining is
 * the budget, since the session is the root of yool's budget tree), how many agents are live,
 * and a warning level when a budget is nearly or wholly spent.
 */

import { Ps, SessionStatus } from "./protocol";
import { liveCount } from "./agents";
import { compactCount, dollars, duration } from "./format";

export type Level = "normal" | "warning" | "error";

export interface StatusView {
  text: string;
  tooltip: string;
  level: Level;
}

/** A budget nearly spent below this share of it left. */
export const WARN_SHARE = 0.1;

interface Meter {
  name: string;
  used: number;
  left: number | null | undefined;
  show: (n: number) => string;
}

function meters(s: SessionStatus): Meter[] {
  return [
    { name: "USD", used: s.usd, left: s.remaining.usd, show: dollars },
    { name: "tokens", used: s.tokens, left: s.remaining.tokens, show: compactCount },
    { name: "tool calls", used: s.tool_calls, left: s.remaining.tool_calls, show: compactCount },
  ];
}

function levelOf(m: Meter): Level {
  if (m.left === null || m.left === undefined) return "normal";
  if (m.left <= 0) return "error";
  const budget = m.used + m.left;
  return budget > 0 && m.left / budget < WARN_SHARE ? "warning" : "normal";
}

export function statusView(ps: Ps): StatusView {
  const s = ps.session;
  const all = meters(s);
  const usd = all[0];
  const spend =
    usd.left === null || usd.left === undefined
      ? `${dollars(s.usd)} (no USD budget)`
      : `${dollars(s.usd)} / ${dollars(s.usd + usd.left)}`;
  const live = liveCount(ps);
  const text = `$(hubot) yool ${spend}${live > 0 ? ` · ${live} live` : ""}`;
  const lines = [`yool session (pid ${s.pid})`];
  for (const m of all) {
    lines.push(
      m.left === null || m.left === undefined
        ? `${m.name}: ${m.show(m.used)} used, no budget`
        : `${m.name}: ${m.show(m.used)} used of ${m.show(m.used + m.left)} (${m.show(m.left)} left)`,
    );
  }
  const wall = s.remaining.wall_s;
  if (wall !== null && wall !== undefined) lines.push(`wall time left: ${duration(wall)}`);
  lines.push(`agents: ${live} live, ${ps.agents.length} listed`);
  const levels = all.map(levelOf);
  if (wall !== null && wall !== undefined && wall <= 0) levels.push("error");
  const level: Level = levels.includes("error") ? "error" : levels.includes("warning") ? "warning" : "normal";
  if (level !== "normal") {
    const spent = all.filter((m) => levelOf(m) !== "normal").map((m) => m.name);
    lines.push(
      level === "error"
        ? `budget spent${spent.length ? ` (${spent.join(", ")})` : ""}: new agents will end with quota`
        : `budget nearly spent (${spent.join(", ")})`,
    );
  }
  lines.push("", "Click to show the Agents view.");
  return { text, tooltip: lines.join("\n"), level };
}

export function startingView(): StatusView {
  return { text: "$(loading~spin) yool", tooltip: "yool: starting the server…", level: "normal" };
}

export function stoppedView(problem: string): StatusView {
  return { text: "$(error) yool", tooltip: `yool is not running: ${problem}`, level: "error" };
}
