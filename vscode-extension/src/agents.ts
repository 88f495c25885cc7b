/**
 * The Agents view's model: `ps` rows (from `yool/ps` or `yool/agentsChanged`) turned into tree
 * nodes, and the request each row action sends. No `vscode` import: extension.ts maps a node
 * to a TreeItem field by field, so what the view shows is tested here.
 *
 * An agent's `contextValue` carries its status, which the `view/item/context` menus of
 * package.json match on: kill on live agents, stop on running ones, resume on stopped ones
 * (the `cont` signal) and on interrupted ones (yool's `resume` from the journal).
 */

import { AgentStatus, LIVE_STATUSES, Ps, opMethod } from "./protocol";
import { compactCount, dollars, oneLine } from "./format";

export const CONTEXT_PREFIX = "yoolAgent:";

export interface Icon {
  /** A codicon id, e.g. "sync~spin". */
  id: string;
  /** A theme color id, or undefined for the default. */
  color?: string;
}

export interface DetailNode {
  kind: "detail";
  id: string;
  label: string;
  description: string;
}

export interface AgentNode {
  kind: "agent";
  id: string;
  pid: number;
  label: string;
  description: string;
  tooltip: string;
  contextValue: string;
  icon: Icon;
  children: DetailNode[];
}

/** The kind of an exit reason: "quota(tokens)" -> "quota". */
export function reasonKind(reason: string | null | undefined): string | undefined {
  if (!reason) return undefined;
  const m = /^[a-z_]+/i.exec(reason.trim());
  return m ? m[0].toLowerCase() : undefined;
}

export function iconFor(row: AgentStatus): Icon {
  switch (row.status) {
    case "running":
      return { id: "sync~spin" };
    case "stopped":
      return { id: "debug-pause", color: "charts.yellow" };
    case "interrupted":
      return { id: "debug-disconnect", color: "charts.orange" };
    case "elsewhere":
      return { id: "remote" };
    case "exited": {
      const kind = reasonKind(row.reason);
      if (kind === "normal") return { id: "pass", color: "testing.iconPassed" };
      if (kind === "killed" || kind === "shutdown") return { id: "circle-slash" };
      return { id: "error", color: "testing.iconFailed" };
    }
    default:
      return { id: "question" };
  }
}

function usage(row: AgentStatus): string {
  const steps = row.steps ?? 0;
  return `${steps} step${steps === 1 ? "" : "s"} · ${compactCount(row.tokens ?? 0)} tok · ${dollars(row.usd ?? 0)}`;
}

/** The status, with the exit reason once the agent has ended. */
export function statusText(row: AgentStatus): string {
  if (row.status === "exited" && row.reason) return `exited: ${row.reason}`;
  if (row.status === "elsewhere") return "running under another yool server";
  return row.status;
}

function details(row: AgentStatus): DetailNode[] {
  const id = (name: string) => `${row.pid}/${name}`;
  const out: DetailNode[] = [];
  if (row.task) out.push({ kind: "detail", id: id("task"), label: "task", description: oneLine(row.task, 120) });
  out.push({ kind: "detail", id: id("status"), label: "status", description: row.status });
  if (row.reason) out.push({ kind: "detail", id: id("reason"), label: "exit reason", description: row.reason });
  if (row.result) out.push({ kind: "detail", id: id("result"), label: "result", description: row.result });
  out.push({ kind: "detail", id: id("usage"), label: "usage", description: usage(row) });
  if (row.node) out.push({ kind: "detail", id: id("node"), label: "node", description: row.node });
  if (row.origin && Object.keys(row.origin).length > 0) {
    out.push({ kind: "detail", id: id("origin"), label: "origin", description: JSON.stringify(row.origin) });
  }
  return out;
}

export function agentNode(row: AgentStatus): AgentNode {
  const who = row.persona ?? "agent";
  const tip = [
    `pid ${row.pid} · ${who}${row.node ? ` · on ${row.node}` : ""}`,
    `status: ${row.status}`,
    ...(row.reason ? [`exit reason: ${row.reason}`] : []),
    ...(row.result ? [`result: ${row.result}`] : []),
    `steps: ${row.steps ?? 0} · tokens: ${row.tokens ?? 0} · USD: ${dollars(row.usd ?? 0)}`,
    ...(row.task ? ["", oneLine(row.task, 400)] : []),
  ];
  return {
    kind: "agent",
    id: String(row.pid),
    pid: row.pid,
    label: `${row.pid} ${who}${row.node ? ` @${row.node.split("/")[0]}` : ""}`,
    description: `${statusText(row)} · ${usage(row)}`,
    tooltip: tip.join("\n"),
    contextValue: CONTEXT_PREFIX + row.status,
    icon: iconFor(row),
    children: details(row),
  };
}

/**
 * The view's top level: this session's live agents, then those running under another server,
 * then ended ones, each newest first.
 */
export function agentNodes(ps: Pick<Ps, "agents"> | undefined): AgentNode[] {
  if (!ps) return [];
  const rank = (r: AgentStatus) => (LIVE_STATUSES.has(r.status) ? 0 : r.status === "elsewhere" ? 1 : 2);
  const rows = [...ps.agents].sort((a, b) => rank(a) - rank(b) || b.pid - a.pid);
  return rows.map(agentNode);
}

export type AgentAction = "kill" | "stop" | "resume";

export interface Request {
  method: string;
  params: Record<string, unknown>;
}

/**
 * The request an action on `row` sends, or why it does not apply (the menus hide it then, but
 * a command can also be run from the palette with a stale row).
 */
export function actionRequest(action: AgentAction, row: Pick<AgentStatus, "pid" | "status">): Request | { refused: string } {
  const live = LIVE_STATUSES.has(row.status);
  switch (action) {
    case "kill":
      if (!live) return { refused: `agent ${row.pid} is ${row.status}; only a live agent can be killed` };
      return { method: opMethod("signal"), params: { pid: row.pid, signal: "kill" } };
    case "stop":
      if (row.status !== "running") return { refused: `agent ${row.pid} is ${row.status}; only a running agent can be stopped` };
      return { method: opMethod("signal"), params: { pid: row.pid, signal: "stop" } };
    case "resume":
      if (row.status === "stopped") return { method: opMethod("signal"), params: { pid: row.pid, signal: "cont" } };
      if (row.status === "interrupted") return { method: opMethod("resume"), params: { pid: row.pid } };
      return { refused: `agent ${row.pid} is ${row.status}; only a stopped or interrupted agent resumes` };
  }
}

/** How many agents are live in a `ps` payload. */
export function liveCount(ps: Pick<Ps, "agents"> | undefined): number {
  return ps ? ps.agents.filter((r) => LIVE_STATUSES.has(r.status)).length : 0;
}
