/**
 * The extension's settings that become `YOOL_*` variables of the servers it starts (the LSP
 * server and the MCP server VS Code's agent mode runs), checked here so a bad value is reported
 * with the setting's name instead of the server exiting on a PolicyError.
 *
 * The table below is the one list: package.json's `contributes.configuration` must declare the
 * same keys (a unit test holds them together). Names and bounds follow src/yool/policy.py.
 */

export type Kind =
  | { type: "text" }
  | { type: "enum"; values: readonly string[] }
  | { type: "int"; min: number; max: number }
  | { type: "number"; min: number; max: number; exclusiveMin?: boolean }
  | { type: "budget"; integer: boolean; exclusiveMin?: boolean }
  | { type: "groups" };

export interface EnvSetting {
  /** The setting's key without the `yool.` prefix. */
  key: string;
  env: string;
  kind: Kind;
}

export const PROVIDERS = ["scripted", "anthropic", "openai", "sampling"] as const;
export const TOOL_GROUPS = [
  "agents",
  "code",
  "memory",
  "personas",
  "prompts",
  "system",
  "tuples",
] as const;

export const ENV_SETTINGS: readonly EnvSetting[] = [
  { key: "home", env: "YOOL_HOME", kind: { type: "text" } },
  { key: "provider", env: "YOOL_PROVIDER", kind: { type: "enum", values: PROVIDERS } },
  { key: "model", env: "YOOL_MODEL", kind: { type: "text" } },
  { key: "budget.tokens", env: "YOOL_BUDGET_TOKENS", kind: { type: "budget", integer: true } },
  { key: "budget.usd", env: "YOOL_BUDGET_USD", kind: { type: "budget", integer: false } },
  {
    key: "budget.toolCalls",
    env: "YOOL_BUDGET_TOOL_CALLS",
    kind: { type: "budget", integer: true },
  },
  {
    key: "budget.wallSeconds",
    env: "YOOL_BUDGET_WALL_S",
    kind: { type: "budget", integer: false, exclusiveMin: true },
  },
  { key: "tools", env: "YOOL_TOOLS", kind: { type: "groups" } },
  { key: "sandbox.level", env: "YOOL_SANDBOX_LEVEL", kind: { type: "int", min: 0, max: 6 } },
  {
    key: "sandbox.timeoutSeconds",
    env: "YOOL_SANDBOX_TIMEOUT_S",
    kind: { type: "number", min: 0, max: 600, exclusiveMin: true },
  },
  {
    key: "sandbox.memoryMb",
    env: "YOOL_SANDBOX_MEMORY_MB",
    kind: { type: "int", min: 64, max: 65536 },
  },
];

/** The free-form `yool.env` setting: more `YOOL_*` variables, for knobs without a setting. */
export const EXTRA_ENV_KEY = "env";
const YOOL_VAR = /^YOOL_[A-Z0-9_]+$/;
const UNLIMITED = new Set(["none", "unlimited", "off"]);

export interface SettingsEnv {
  env: Record<string, string>;
  /** One line per setting that was not used, naming it and the fix. */
  problems: string[];
}

function unset(value: unknown): boolean {
  return value === undefined || value === null || (typeof value === "string" && value.trim() === "");
}

function numberText(n: number): string {
  // Plain digits: Python's int() does not read "1e+21".
  return Number.isInteger(n) ? BigInt(n).toString() : String(n);
}

/** The variable's value for one setting, or a problem (without the setting's name). */
function convert(kind: Kind, value: unknown): { value: string } | { problem: string } {
  switch (kind.type) {
    case "text":
      if (typeof value !== "string") return { problem: "expected text" };
      return { value: value.trim() };
    case "enum": {
      const v = typeof value === "string" ? value.trim().toLowerCase() : "";
      if (!kind.values.includes(v)) return { problem: `expected one of ${kind.values.join(", ")}` };
      return { value: v };
    }
    case "groups": {
      const list = Array.isArray(value)
        ? value
        : typeof value === "string"
          ? value.split(",")
          : null;
      if (list === null || !list.every((g) => typeof g === "string")) {
        return { problem: `expected a list of tool groups (${TOOL_GROUPS.join(", ")})` };
      }
      const names = [...new Set(list.map((g) => g.trim().toLowerCase()).filter((g) => g !== ""))];
      if (names.length === 0) return { problem: "expected at least one tool group, or leave it empty" };
      const unknown = names.filter((g) => g !== "all" && !(TOOL_GROUPS as readonly string[]).includes(g));
      if (unknown.length > 0) {
        return {
          problem: `unknown tool group ${unknown.map((g) => JSON.stringify(g)).join(", ")}; known: ${TOOL_GROUPS.join(", ")}`,
        };
      }
      return { value: names.includes("all") ? "all" : names.sort().join(",") };
    }
    case "int":
    case "number": {
      const n = typeof value === "string" ? Number(value.trim()) : value;
      const whole = kind.type === "int";
      const exclusive = kind.type === "number" && kind.exclusiveMin === true;
      const range = exclusive
        ? `above ${kind.min} and at most ${kind.max}`
        : `from ${kind.min} to ${kind.max}`;
      const expected = `expected ${whole ? "a whole number" : "a number"} ${range}`;
      if (typeof n !== "number" || !Number.isFinite(n)) return { problem: expected };
      if (whole && !Number.isInteger(n)) return { problem: expected };
      const low = exclusive ? n <= kind.min : n < kind.min;
      if (low || n > kind.max) return { problem: expected };
      return { value: numberText(n) };
    }
    case "budget": {
      if (typeof value === "string" && UNLIMITED.has(value.trim().toLowerCase())) {
        return { value: "unlimited" };
      }
      const n = typeof value === "string" ? Number(value.trim()) : value;
      const expected =
        `expected ${kind.integer ? "a whole number" : "a number"} ` +
        `${kind.exclusiveMin ? "> 0" : ">= 0"}, "unlimited", or null for yool's default`;
      if (typeof n !== "number" || !Number.isFinite(n)) return { problem: expected };
      if (kind.integer && !Number.isInteger(n)) return { problem: expected };
      if (kind.exclusiveMin ? n <= 0 : n < 0) return { problem: expected };
      return { value: numberText(n) };
    }
  }
}

function shown(value: unknown): string {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/**
 * The `YOOL_*` variables the settings ask for. `get(key)` reads `yool.<key>` (undefined or
 * null when unset). A setting left at its default adds nothing, so yool's own defaults and
 * the variables of the user's shell apply.
 */
export function settingsEnv(get: (key: string) => unknown): SettingsEnv {
  const env: Record<string, string> = {};
  const problems: string[] = [];
  const extra = get(EXTRA_ENV_KEY);
  if (!unset(extra)) {
    if (typeof extra !== "object" || Array.isArray(extra)) {
      problems.push(`yool.env: expected an object of YOOL_* variables, got ${shown(extra)}`);
    } else {
      for (const [name, value] of Object.entries(extra as Record<string, unknown>)) {
        if (!YOOL_VAR.test(name)) {
          problems.push(
            `yool.env: ${name} is not a YOOL_* variable; only yool's knobs belong here ` +
              "(keep API keys in the environment VS Code starts with)",
          );
        } else if (typeof value === "string" || typeof value === "number" || typeof value === "boolean") {
          env[name] = String(value);
        } else {
          problems.push(`yool.env: ${name} must be text, a number or true/false, got ${shown(value)}`);
        }
      }
    }
  }
  for (const setting of ENV_SETTINGS) {
    const value = get(setting.key);
    if (unset(value) || (Array.isArray(value) && value.length === 0)) continue;
    const out = convert(setting.kind, value);
    if ("problem" in out) {
      problems.push(`yool.${setting.key}: ${out.problem}, got ${shown(value)}`);
    } else {
      env[setting.env] = out.value; // a named setting wins over the same variable in yool.env
    }
  }
  return { env, problems };
}
