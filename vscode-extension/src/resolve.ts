/**
 * Finding the `yool` executable the extension starts: the `yool.path` setting, else a virtual
 * environment in a workspace folder, else PATH. Pure logic over an injected file check, so it
 * is tested without VS Code and without touching the real disk layout.
 */

import * as path from "node:path";
import * as fs from "node:fs";
import * as os from "node:os";

export interface ResolveInput {
  /** The `yool.path` setting ("" or undefined when unset). */
  setting?: string;
  /** Absolute paths of the workspace folders, in order. */
  workspaceFolders: readonly string[];
  /** The environment (PATH, PATHEXT, HOME). */
  env: Readonly<Record<string, string | undefined>>;
  platform: NodeJS.Platform;
  /** True when `file` exists and can be executed. Defaults to a real check on disk. */
  isExecutable?: (file: string) => boolean;
}

export type Resolved =
  | { found: true; path: string; source: "setting" | "venv" | "PATH" }
  | { found: false; tried: string[]; problem: string };

/** The venv locations looked at in each workspace folder, most common first. */
export function venvCandidates(folder: string, platform: NodeJS.Platform): string[] {
  const p = platform === "win32" ? path.win32 : path.posix;
  if (platform === "win32") {
    return [".venv", "venv", "env"].map((dir) => p.join(folder, dir, "Scripts", "yool.exe"));
  }
  return [".venv", "venv", "env"].map((dir) => p.join(folder, dir, "bin", "yool"));
}

/** The PATH entries a search for `yool` looks at, with Windows' executable extensions. */
export function pathCandidates(
  env: Readonly<Record<string, string | undefined>>,
  platform: NodeJS.Platform,
): string[] {
  const win = platform === "win32";
  const p = win ? path.win32 : path.posix;
  const raw = env.PATH ?? env.Path ?? "";
  const dirs = raw.split(win ? ";" : ":").filter((d) => d.trim() !== "");
  const exts = win
    ? (env.PATHEXT ?? ".COM;.EXE;.BAT;.CMD").split(";").filter((e) => e !== "")
    : [""];
  const out: string[] = [];
  for (const dir of dirs) {
    for (const ext of exts) {
      out.push(p.join(dir, "yool" + ext.toLowerCase()));
    }
  }
  return out;
}

/** `~` expanded and a relative setting taken from the first workspace folder. */
export function expandSetting(
  setting: string,
  folders: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
  platform: NodeJS.Platform,
): string {
  const p = platform === "win32" ? path.win32 : path.posix;
  let value = setting.trim();
  const home = env.HOME ?? env.USERPROFILE ?? os.homedir();
  if (value === "~" || value.startsWith("~/") || value.startsWith("~\\")) {
    value = p.join(home, value.slice(1));
  }
  if (!p.isAbsolute(value) && folders.length > 0) {
    value = p.join(folders[0], value);
  }
  return value;
}

export function defaultIsExecutable(file: string): boolean {
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) return false;
    if (process.platform === "win32") return true;
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Where `yool` is, or every place looked at and what to do about it. */
export function resolveYool(input: ResolveInput): Resolved {
  const isExec = input.isExecutable ?? defaultIsExecutable;
  const setting = (input.setting ?? "").trim();
  if (setting !== "") {
    const file = expandSetting(setting, input.workspaceFolders, input.env, input.platform);
    if (isExec(file)) return { found: true, path: file, source: "setting" };
    return {
      found: false,
      tried: [file],
      problem:
        `The yool.path setting is "${setting}", but ${file} is not an executable file. ` +
        "Fix: point yool.path at the yool executable (e.g. .venv/bin/yool), or clear it to " +
        "search the workspace's virtual environment and PATH.",
    };
  }
  const tried: string[] = [];
  for (const folder of input.workspaceFolders) {
    for (const file of venvCandidates(folder, input.platform)) {
      tried.push(file);
      if (isExec(file)) return { found: true, path: file, source: "venv" };
    }
  }
  for (const file of pathCandidates(input.env, input.platform)) {
    tried.push(file);
    if (isExec(file)) return { found: true, path: file, source: "PATH" };
  }
  const venv = input.platform === "win32" ? ".venv\\Scripts\\pip" : ".venv/bin/pip";
  return {
    found: false,
    tried,
    problem:
      "yool was not found: the yool.path setting is empty, no workspace folder has a " +
      ".venv, venv or env with yool in it, and it is not on PATH. " +
      `Fix: install it into the workspace (python3 -m venv .venv && ${venv} install ` +
      "<path to the yool repo>), or set yool.path to the yool executable.",
  };
}
