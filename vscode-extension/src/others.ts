/**
 * Agents of other yool servers on the same YOOL_HOME, e.g. those VS Code's agent mode spawns
 * through the MCP server (a process of its own, with a session of its own): the LSP session's
 * `ps` does not list them, so the extension reads them with `yool ps --json` (which reads the
 * store, read-only, beside running servers) and adds them to the Agents view.
 *
 * A live one is shown as `elsewhere` (the server's own word for it): it can be inspected, but
 * only the server that runs it can signal it, so the view offers no kill/stop on it.
 */

import { AgentStatus, LIVE_STATUSES, Ps } from "./protocol";

/** How often the view, while visible, looks for other servers' agents. */
export const POLL_MS = 10_000;

/** A row of `yool ps --json` (yool.watch): what the extension uses of it. */
export interface StoreAgent {
  pid: number;
  status: string;
  reason?: string | null;
  result?: string | null;
  steps?: number;
  tokens?: number;
  usd?: number;
  persona?: string | null;
  task?: string;
  origin?: Record<string, unknown> | null;
}

/** The agents of `yool ps --json` output, or why it could not be read. */
export function parseStorePs(stdout: string): StoreAgent[] | { problem: string } {
  let data: unknown;
  try {
    data = JSON.parse(stdout);
  } catch {
    return { problem: "yool ps --json printed no JSON" };
  }
  const agents = (data as { agents?: unknown } | null)?.agents;
  if (!Array.isArray(agents)) return { problem: "yool ps --json has no agents list" };
  return agents.filter(
    (a): a is StoreAgent =>
      typeof a === "object" && a !== null && typeof (a as StoreAgent).pid === "number" && typeof (a as StoreAgent).status === "string",
  );
}

/** The session's `ps` with the other servers' agents added (the session's own rows win). */
export function withOthers(ps: Ps, others: readonly StoreAgent[]): Ps {
  const mine = new Set(ps.agents.map((a) => a.pid));
  const added: AgentStatus[] = others
    .filter((o) => !mine.has(o.pid) && o.pid !== ps.session.pid)
    .map((o) => ({
      pid: o.pid,
      status: LIVE_STATUSES.has(o.status) ? "elsewhere" : o.status,
      reason: o.reason ?? null,
      result: o.result ?? null,
      steps: o.steps ?? 0,
      tokens: o.tokens ?? 0,
      usd: o.usd ?? 0,
      task: o.task ?? "",
      persona: o.persona ?? null,
      origin: o.origin ?? null,
    }));
  return added.length === 0 ? ps : { ...ps, agents: [...ps.agents, ...added] };
}
