/**
 * The shapes yool's LSP server speaks (see the repo's LSP contract): the `ps` result, the
 * `yool/agentsChanged` and `yool/trace` notifications, and the names of the requests the
 * extension sends. Only types and constants: no `vscode` import, so tests use them too.
 */

/** One agent as `ps` lists it (yool.tools.agents.AgentStatus). */
export interface AgentStatus {
  pid: number;
  /** running | stopped | exited | interrupted | elsewhere */
  status: string;
  /** The kernel's exit reason: normal, quota(tokens), killed(by=1), ... */
  reason?: string | null;
  /** How the agent ended its work: completed, stalled, step_limit. */
  result?: string | null;
  answer?: string | null;
  steps?: number;
  tokens?: number;
  usd?: number;
  task?: string;
  persona?: string | null;
  origin?: Record<string, unknown> | null;
  /** "node/pid" for an agent running on another node of a yool cluster. */
  node?: string | null;
}

/** The session process's spend and what is left of its budget (yool.tools.agents.SessionStatus). */
export interface SessionStatus {
  pid: number;
  tokens: number;
  usd: number;
  tool_calls: number;
  /** Tightest remaining amount per meter (tokens, usd, tool_calls, wall_s); null = unlimited. */
  remaining: Record<string, number | null>;
}

/** The `ps` result, and the params of `yool/agentsChanged`. */
export interface Ps {
  agents: AgentStatus[];
  session: SessionStatus;
}

/** One kernel event (yool.tools.introspection.TraceEvent). */
export interface TraceEvent {
  seq: number;
  ts: number;
  kind: string;
  pid: number | null;
  data?: unknown;
}

/** The capabilities.experimental.yool block of the initialize result. */
export interface OperationInfo {
  name: string;
  group: string;
  readOnly: boolean;
  blocking: boolean;
  description: string;
}

export const NOTIFY_AGENTS = "yool/agentsChanged";
export const NOTIFY_TRACE = "yool/trace";
export const REQUEST_TRACE_FOLLOW = "yool/traceFollow";
/** Other yool servers' agents on this YOOL_HOME: `{watch?}` → `{agents, watching}`. */
export const REQUEST_OTHERS = "yool/others";
export const NOTIFY_OTHERS = "yool/othersChanged";

/** The custom request that runs operation `op`. */
export function opMethod(op: string): string {
  return `yool/${op}`;
}

/** Statuses of an agent that is still live in this session (signals apply). */
export const LIVE_STATUSES: ReadonlySet<string> = new Set(["running", "stopped"]);
