/**
 * What the extension's commands send and show, apart from VS Code's UI calls: the task built
 * from a prompt and the editor's selection, the sandbox language of a document, the documents
 * that inspect/recall/run open, and the wording of a failed request.
 */

import { opMethod } from "./protocol";
import { Request } from "./agents";

/** The commands package.json contributes (view id `yool.agents`; ids `yool.<verb>`). */
export const OWN_COMMANDS = [
  "yool.refresh",
  "yool.spawn",
  "yool.hire",
  "yool.recall",
  "yool.runSelection",
  "yool.kill",
  "yool.stop",
  "yool.resume",
  "yool.inspect",
  "yool.showTrace",
  "yool.restartServer",
] as const;

/**
 * The server's `yool.<op>` commands the language client may register as VS Code commands:
 * all but those the extension contributes itself (e.g. `yool.spawn`, which asks for a prompt
 * first), since VS Code refuses a command id registered twice.
 */
export function serverCommands(fromServer: readonly string[] | undefined, own: readonly string[] = OWN_COMMANDS): string[] {
  const mine = new Set(own);
  return (fromServer ?? []).filter((c) => !mine.has(c));
}

export interface Selection {
  text: string;
  /** The document's path relative to the workspace, or its name. */
  file: string;
  languageId: string;
  /** 1-based first line of the selection. */
  line: number;
}

/** The spawned agent's task: the typed prompt, then the selected code it is about. */
export function spawnTask(prompt: string, selection?: Selection): string | { refused: string } {
  const ask = prompt.trim();
  const code = selection && selection.text.trim() !== "" ? selection : undefined;
  if (ask === "" && !code) return { refused: "task: type what the agent should do, or select some code first" };
  if (!code) return ask;
  const fence = code.text.includes("```") ? "````" : "```";
  const where = `${code.file}, from line ${code.line}`;
  const head = ask === "" ? `Work on this code (${where}).` : `${ask}\n\nThe code (${where}):`;
  return `${head}\n\n${fence}${code.languageId}\n${code.text.replace(/\s+$/, "")}\n${fence}`;
}

export function spawnRequest(task: string, persona?: string): Request {
  return { method: opMethod("spawn"), params: persona ? { task, persona } : { task } };
}

/** The `code_run` language for a VS Code language id, or undefined when the sandbox has none. */
export function sandboxLanguage(languageId: string): "python" | "sh" | undefined {
  if (languageId === "python") return "python";
  if (languageId === "shellscript" || languageId === "sh" || languageId === "bash") return "sh";
  return undefined;
}

function fenced(text: string, lang = ""): string {
  const fence = text.includes("```") ? "````" : "```";
  return `${fence}${lang}\n${text.replace(/\s+$/, "")}\n${fence}`;
}

/** The document `yool.runSelection` opens: the exit status, output and the sandbox's layers. */
export function runDocument(lang: string, code: string, result: Record<string, unknown>): string {
  const lines = [`# Sandbox run (${lang})`, ""];
  const status = [`reason: **${String(result.reason ?? "?")}**`];
  if (result.exit_code !== undefined && result.exit_code !== null) status.push(`exit code ${String(result.exit_code)}`);
  if (result.signal !== undefined && result.signal !== null) status.push(`signal ${String(result.signal)}`);
  if (typeof result.wall_ms === "number") status.push(`${result.wall_ms.toFixed(0)} ms`);
  lines.push(status.join(" · "), "");
  if (result.error) lines.push(`error: ${String(result.error)}`, "");
  if (Array.isArray(result.layers) && result.layers.length) lines.push(`layers: ${result.layers.join(", ")}`, "");
  lines.push("## stdout", "", fenced(String(result.stdout ?? "")), "");
  if (result.stderr) lines.push("## stderr", "", fenced(String(result.stderr)), "");
  if (result.truncated) lines.push("_output truncated_", "");
  lines.push("## code", "", fenced(code, lang === "sh" ? "sh" : "python"), "");
  return lines.join("\n");
}

interface Lesson {
  id?: number;
  text?: string;
  tags?: string[];
  [key: string]: unknown;
}

/** The document `yool.recall` opens: each lesson with its id and tags. */
export function lessonsDocument(query: string, recalled: { lessons?: Lesson[] }): string {
  const lessons = recalled.lessons ?? [];
  const lines = [`# Lessons for “${query}”`, ""];
  if (lessons.length === 0) lines.push("No lesson matches yet. Agents learn them with `lesson_learn`; add one with `lesson_remember`.");
  for (const l of lessons) {
    const tags = l.tags && l.tags.length ? ` — ${l.tags.map((t) => `\`${t}\``).join(" ")}` : "";
    lines.push(`- **#${l.id ?? "?"}**${tags}: ${String(l.text ?? JSON.stringify(l))}`);
  }
  return lines.join("\n") + "\n";
}

/** The read-only document `yool.inspect` opens: the `inspect` result as JSON. */
export function inspectDocument(result: unknown): string {
  return JSON.stringify(result, null, 2) + "\n";
}

/** A failed request in one line: "yool spawn: task: Field required" (JSON-RPC code kept aside). */
export function failureText(op: string, error: unknown): string {
  const e = error as { message?: unknown; code?: unknown } | undefined;
  const message = e && typeof e.message === "string" ? e.message : String(error);
  return `yool ${op}: ${message}`;
}
