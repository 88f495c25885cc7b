/**
 * Agents of other yool servers on the same YOOL_HOME, e.g. those VS Code's agent mode spawns
 * through the MCP server (a process of its own, with a session of its own): the LSP session's
 * `ps` does not list them, so the LSP server reads them from the store (`yool/others`, and
 * `yool/othersChanged` while the Agents view is visible) and the view adds them.
 *
 * A live one is shown as `elsewhere` (the server's own word for it): it can be inspected, but
 * only the server that runs it can signal it, so the view offers no kill/stop on it.
 */

import { AgentStatus, LIVE_STATUSES, Ps } from "./protocol";

/** A row of `yool/others` (the store's view, as `yool ps --json` prints it): what the
 * extension uses of it. */
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

/** The agents of a `yool/others` answer or `yool/othersChanged` notification, or why not. */
export function parseOthers(params: unknown): StoreAgent[] | { problem: string } {
  const agents = (params as { agents?: unknown } | null)?.agents;
  if (!Array.isArray(agents)) return { problem: "yool/others: no agents list" };
  return agents.filter(
    (a): a is StoreAgent =>
      typeof a === "object" && a !== null && typeof (a as StoreAgent).pid === "number" && typeof (a as StoreAgent).status === "string",
  );
}

/**
 * The session's `ps` with the other servers' agents added. The session's own rows win, but
 * for the ones it lists as `elsewhere` (running under another server when it started) the
 * store's row is newer and replaces it.
 */
export function withOthers(ps: Ps, others: readonly StoreAgent[]): Ps {
  const theirs = new Set(others.map((o) => o.pid));
  const kept = ps.agents.filter((a) => a.status !== "elsewhere" || !theirs.has(a.pid));
  const mine = new Set(kept.map((a) => a.pid));
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
  return added.length === 0 && kept.length === ps.agents.length ? ps : { ...ps, agents: [...kept, ...added] };
}
