/**
 * The packaged bundle (dist/extension.js) activated against a recording stand-in for the
 * `vscode` module: it registers every contributed command, the `yool.agents` view, the
 * read-only document scheme and the MCP provider (or skips it, logged, on a VS Code without
 * the API), and reports a missing `yool` with the fix. The stand-in records calls only;
 * the real VS Code run is the e2e test's job (vscode-extension/e2e).
 */

import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import Module = require("node:module");

import { OWN_COMMANDS } from "../src/commands";

const bundle = path.resolve(__dirname, "..", "..", "dist", "extension.js");

interface Recorded {
  commands: string[];
  views: string[];
  schemes: string[];
  mcp: { id: string; provider: { provideMcpServerDefinitions: () => unknown } }[];
  errors: string[];
  logs: string[];
  status: { text?: string; tooltip?: string; shown: boolean };
}

/** A `vscode` whose unknown members are inert classes, so the bundle's top level loads (marked
 * `__esModule`, so the bundled language client uses it as is rather than copying its keys). */
function fakeVscode(folder: string, withLm: boolean, settings: Record<string, unknown>): { api: unknown; rec: Recorded } {
  const rec: Recorded = { commands: [], views: [], schemes: [], mcp: [], errors: [], logs: [], status: { shown: false } };
  const disposable = { dispose: () => undefined };
  class EventEmitter {
    event = () => disposable;
    fire(): void {}
    dispose(): void {}
  }
  const channel = (name: string) => {
    const log = (level: string) => (msg: string) => rec.logs.push(`${name} ${level}: ${msg}`);
    return { name, appendLine: log("line"), info: log("info"), warn: log("warn"), error: log("error"), trace: log("trace"), debug: log("debug"), show() {}, dispose() {} };
  };
  const known: Record<string, unknown> = {
    EventEmitter,
    Disposable: class {
      static from() {
        return disposable;
      }
    },
    // esbuild's interop copies the module's own keys for extension.ts: what it uses is listed
    ThemeColor: class {},
    ThemeIcon: class {},
    TreeItem: class {},
    StatusBarAlignment: { Left: 1, Right: 2 },
    TreeItemCollapsibleState: { None: 0, Collapsed: 1, Expanded: 2 },
    ConfigurationTarget: { Global: 1, Workspace: 2 },
    ProgressLocation: { Notification: 15 },
    Uri: { file: (p: string) => ({ scheme: "file", fsPath: p, path: p }), from: (c: object) => c },
    McpStdioServerDefinition: class {
      cwd: unknown;
      constructor(
        readonly label: string,
        readonly command: string,
        readonly args: string[],
        readonly env: Record<string, string>,
        readonly version?: string,
      ) {}
    },
    window: {
      createOutputChannel: channel,
      createStatusBarItem: () => {
        const item = rec.status as Record<string, unknown>;
        item.show = () => (rec.status.shown = true);
        item.dispose = () => undefined;
        return item;
      },
      createTreeView: (id: string) => {
        rec.views.push(id);
        return { dispose() {}, visible: false, onDidChangeVisibility: () => disposable };
      },
      showErrorMessage: async (msg: string) => {
        rec.errors.push(msg);
        return undefined;
      },
      showWarningMessage: async (msg: string) => {
        rec.errors.push(msg);
        return undefined;
      },
      showInformationMessage: async () => undefined,
    },
    workspace: {
      workspaceFolders: [{ uri: { scheme: "file", fsPath: folder }, name: "ws", index: 0 }],
      getConfiguration: () => ({ get: (key: string, dflt?: unknown) => (key in settings ? settings[key] : dflt) }),
      registerTextDocumentContentProvider: (scheme: string) => {
        rec.schemes.push(scheme);
        return disposable;
      },
      onDidChangeConfiguration: () => disposable,
      onDidChangeWorkspaceFolders: () => disposable,
    },
    commands: {
      registerCommand: (id: string) => {
        assert.ok(!rec.commands.includes(id), `${id} registered once`);
        rec.commands.push(id);
        return disposable;
      },
      executeCommand: async () => undefined,
    },
    lm: withLm
      ? {
          registerMcpServerDefinitionProvider: (id: string, provider: Recorded["mcp"][0]["provider"]) => {
            rec.mcp.push({ id, provider });
            return disposable;
          },
        }
      : {},
  };
  const inert = class {};
  const api = new Proxy(known, { get: (t, prop: string) => (prop in t ? t[prop] : prop === "__esModule" ? true : inert) });
  return { api, rec };
}

interface Activated {
  rec: Recorded;
  folder: string;
  /** Deactivate, restore PATH and the loader, remove the workspace. */
  close: () => void;
}

/** Activate the bundle in a fresh workspace folder with no yool in it, nor on PATH. */
async function activate(withLm: boolean, settings: Record<string, unknown> = {}): Promise<Activated> {
  const folder = fs.mkdtempSync(path.join(os.tmpdir(), "yool-activate-"));
  const { api, rec } = fakeVscode(folder, withLm, settings);
  const loader = Module as unknown as { _load: (request: string, ...rest: unknown[]) => unknown };
  const original = loader._load;
  loader._load = (request: string, ...rest: unknown[]) => (request === "vscode" ? api : original(request, ...rest));
  const savedPath = process.env.PATH;
  process.env.PATH = folder;
  let ext: { activate: (ctx: unknown) => void; deactivate: () => unknown } | undefined;
  const context = { subscriptions: [] as { dispose: () => unknown }[], extension: { packageJSON: { version: "0.1.0" } } };
  const close = () => {
    void ext?.deactivate();
    for (const d of context.subscriptions) d.dispose(); // as VS Code does: timers end too
    process.env.PATH = savedPath;
    loader._load = original;
    fs.rmSync(folder, { recursive: true, force: true });
  };
  try {
    delete require.cache[bundle];
    ext = require(bundle) as typeof ext;
    ext!.activate(context);
    await new Promise((resolve) => setTimeout(resolve, 200)); // the start is queued
  } catch (e) {
    close();
    throw e;
  }
  return { rec, folder, close };
}

const skip = fs.existsSync(bundle) ? false : `no ${bundle}: run npm run build first`;

test("activation registers every command, the Agents view, the document scheme and the MCP provider", { skip }, async () => {
  const { rec, folder, close } = await activate(true, { "budget.usd": 2, provider: "anthropic" });
  try {
    assert.deepEqual([...rec.commands].sort(), [...OWN_COMMANDS].sort());
    assert.deepEqual(rec.views, ["yool.agents"]);
    assert.deepEqual(rec.schemes, ["yool"]);
    assert.deepEqual(rec.mcp.map((m) => m.id), ["yool"]);
    const provider = rec.mcp[0].provider;
    // yool is missing: the provider offers no server rather than one that cannot start
    assert.deepEqual(provider.provideMcpServerDefinitions(), []);
    // once the workspace has a venv with yool, the definition runs it with the settings' env
    const bin = path.join(folder, ".venv", "bin");
    fs.mkdirSync(bin, { recursive: true });
    fs.writeFileSync(path.join(bin, "yool"), "#!/bin/sh\nexit 0\n", { mode: 0o755 });
    const defs = provider.provideMcpServerDefinitions() as Record<string, unknown>[];
    assert.equal(defs.length, 1);
    assert.deepEqual(
      { label: defs[0].label, command: defs[0].command, args: defs[0].args, env: defs[0].env, version: defs[0].version },
      {
        label: "yool",
        command: path.join(bin, "yool"),
        args: ["server", "--stdio"],
        env: { YOOL_BUDGET_USD: "2", YOOL_PROVIDER: "anthropic" },
        version: "0.1.0",
      },
    );
    assert.deepEqual(defs[0].cwd, { scheme: "file", fsPath: folder, path: folder });
  } finally {
    close();
  }
});

test("a missing yool is reported with where it was looked for and the fix", { skip }, async () => {
  const { rec, close } = await activate(true);
  close();
  assert.equal(rec.errors.length, 1);
  assert.match(rec.errors[0], /^yool was not found: .*Fix: install it into the workspace \(python3 -m venv \.venv && .*set yool\.path/);
  assert.equal(rec.status.text, "$(error) yool");
  assert.equal(rec.status.shown, true);
  assert.ok(rec.logs.some((l) => /Looked at: .*\.venv[/\\]bin[/\\]yool/.test(l)));
  assert.ok(!rec.logs.some((l) => / error: yool server:/.test(l)), rec.logs.join("\n"));
});

test("a bad yool.path is named in the message", { skip }, async () => {
  const { rec, close } = await activate(true, { path: "/no/such/yool" });
  close();
  assert.match(rec.errors[0], /^The yool\.path setting is "\/no\/such\/yool"/);
});

test("a VS Code without the MCP API still activates the rest and logs the skip", { skip }, async () => {
  const { rec, close } = await activate(false);
  close();
  assert.equal(rec.mcp.length, 0);
  assert.deepEqual([...rec.commands].sort(), [...OWN_COMMANDS].sort());
  assert.ok(rec.logs.some((l) => /no vscode\.lm\.registerMcpServerDefinitionProvider/.test(l)));
});
