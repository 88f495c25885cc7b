/**
 * The LSP protocol against the real Python server: `../.venv/bin/python -m yool server --lsp`
 * in a clean environment (no API keys, YOOL_HOME and the workspace in temp dirs), driven from
 * Node with vscode-jsonrpc, and its notification payloads fed to the extension's own models.
 *
 * A live agent for the kill test talks to yool's fake Anthropic endpoint on 127.0.0.1
 * (`python -m yool.testing --latency N`), so it is still running when the kill arrives.
 */

import { after, before, describe, test } from "node:test";
import * as assert from "node:assert/strict";
import * as cp from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as readline from "node:readline";
import { pathToFileURL } from "node:url";
import {
  MessageConnection,
  ResponseError,
  StreamMessageReader,
  StreamMessageWriter,
  createMessageConnection,
} from "vscode-jsonrpc/node";

import { actionRequest, agentNodes } from "../src/agents";
import { serverCommands } from "../src/commands";
import { StoreAgent, parseOthers, withOthers } from "../src/others";
import {
  NOTIFY_AGENTS,
  NOTIFY_OTHERS,
  NOTIFY_TRACE,
  OperationInfo,
  Ps,
  REQUEST_OTHERS,
  REQUEST_TRACE_FOLLOW,
  TraceEvent,
  opMethod,
} from "../src/protocol";
import { statusView } from "../src/statusbar";
import { traceLines } from "../src/trace";

const repo = path.resolve(__dirname, "..", "..", "..");
const python = path.join(repo, ".venv", process.platform === "win32" ? "Scripts\\python.exe" : "bin/python");
const skip = fs.existsSync(python)
  ? false
  : `no Python venv at ${python}: create it (python3 -m venv .venv && .venv/bin/pip install -e .) to run the LSP integration test`;

const WAIT_MS = 20_000;

/** The environment a user's machine might have, minus anything secret. */
function cleanEnv(home: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: home,
    LANG: "C.UTF-8",
    YOOL_HOME: path.join(home, "yool"),
    ...extra,
  };
}

class Server {
  readonly proc: cp.ChildProcess;
  readonly conn: MessageConnection;
  readonly agents: Ps[] = [];
  readonly trace: TraceEvent[] = [];
  readonly others: StoreAgent[][] = [];
  readonly messages: { type: number; message: string }[] = [];
  stderr = "";
  private waiters: (() => void)[] = [];

  constructor(env: Record<string, string>, cwd: string) {
    this.proc = cp.spawn(python, ["-m", "yool", "server", "--lsp"], { env, cwd, stdio: ["pipe", "pipe", "pipe"] });
    this.proc.stderr!.on("data", (d: Buffer) => (this.stderr += d.toString()));
    this.conn = createMessageConnection(new StreamMessageReader(this.proc.stdout!), new StreamMessageWriter(this.proc.stdin!));
    this.conn.onNotification(NOTIFY_AGENTS, (ps: Ps) => {
      this.agents.push(ps);
      this.wake();
    });
    this.conn.onNotification(NOTIFY_OTHERS, (p: unknown) => {
      const rows = parseOthers(p);
      assert.ok(Array.isArray(rows), JSON.stringify(rows));
      this.others.push(rows);
      this.wake();
    });
    this.conn.onNotification(NOTIFY_TRACE, (p: { events: TraceEvent[] }) => {
      this.trace.push(...p.events);
      this.wake();
    });
    this.conn.onNotification("window/showMessage", (m: { type: number; message: string }) => {
      this.messages.push(m);
      this.wake();
    });
    this.conn.onNotification("window/logMessage", () => undefined);
    this.conn.onRequest("window/workDoneProgress/create", () => null);
    this.conn.listen();
  }

  private wake(): void {
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w();
  }

  /** Resolve once `check` holds (checked now and after every notification), or fail after WAIT_MS. */
  async until<T>(what: string, check: () => T | undefined): Promise<T> {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const v = check();
      if (v !== undefined) return v;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; server stderr:\n${this.stderr.slice(-3000)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 500));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** The newest agentsChanged payload whose row for `pid` passes `check`. */
  agentRow(pid: number, check: (status: string) => boolean): Ps | undefined {
    for (let i = this.agents.length - 1; i >= 0; i--) {
      const row = this.agents[i].agents.find((a) => a.pid === pid);
      if (row && check(row.status)) return this.agents[i];
    }
    return undefined;
  }

  async close(): Promise<number | null> {
    const exited = new Promise<number | null>((resolve) => {
      if (this.proc.exitCode !== null) resolve(this.proc.exitCode);
      else this.proc.once("exit", (code) => resolve(code));
    });
    try {
      await this.conn.sendRequest("shutdown");
      await this.conn.sendNotification("exit");
    } catch {
      // already gone: the exit code says how
    }
    const timer = setTimeout(() => this.proc.kill("SIGKILL"), 10_000);
    const code = await exited;
    clearTimeout(timer);
    this.conn.dispose();
    return code;
  }
}

async function initialize(server: Server, workspace: string): Promise<any> {
  const result = await server.conn.sendRequest("initialize", {
    processId: process.pid,
    rootUri: pathToFileURL(workspace).href,
    workspaceFolders: [{ uri: pathToFileURL(workspace).href, name: "ws" }],
    capabilities: { window: { workDoneProgress: true } },
    clientInfo: { name: "yool-extension-test" },
  });
  await server.conn.sendNotification("initialized", {});
  return result;
}

async function rpcError(p: Promise<unknown>): Promise<ResponseError<unknown>> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ResponseError, `a JSON-RPC error, got ${String(e)}`);
    return e;
  }
  assert.fail("the request succeeded; an error was expected");
}

/** `python -m yool.testing --latency N`: the fake Anthropic endpoint; resolves to its URL. */
function startFake(latency: number): Promise<{ url: string; proc: cp.ChildProcess }> {
  const proc = cp.spawn(python, ["-m", "yool.testing", "--latency", String(latency)], {
    env: cleanEnv(os.tmpdir()),
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: proc.stdout! });
    lines.once("line", (url) => resolve({ url: url.trim(), proc }));
    proc.once("exit", (code) => reject(new Error(`the fake provider exited with ${code}`)));
  });
}

describe("yool server --lsp, driven over JSON-RPC", { skip, timeout: 120_000 }, () => {
  let tmp: string;
  let workspace: string;
  let server: Server;
  let fake: { url: string; proc: cp.ChildProcess };
  let env: Record<string, string>;
  let init: {
    capabilities: { executeCommandProvider?: { commands: string[] }; experimental?: { yool?: { version: number; operations: OperationInfo[] } } };
    serverInfo?: { name: string; version?: string };
  };

  before(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), "yool-lsp-"));
    workspace = path.join(tmp, "ws");
    fs.mkdirSync(workspace);
    fake = await startFake(30); // the live agent waits on it until killed
    env = cleanEnv(tmp, { ANTHROPIC_BASE_URL: fake.url, ANTHROPIC_API_KEY: "fake-key-for-the-local-fake" });
    server = new Server(env, tmp);
    init = await initialize(server, workspace);
  });

  after(async () => {
    let code: number | null = null;
    if (server) code = await server.close();
    fake?.proc.kill();
    fs.rmSync(tmp, { recursive: true, force: true });
    assert.equal(code, 0, `the server exits 0 after shutdown/exit; stderr:\n${server?.stderr.slice(-2000)}`);
  });

  test("initialize lists every operation as a yool.<op> command and describes them", () => {
    assert.equal(init.serverInfo?.name, "yool");
    const commands = init.capabilities.executeCommandProvider?.commands ?? [];
    for (const c of ["yool.ps", "yool.spawn", "yool.signal", "yool.inspect", "yool.trace", "yool.resume", "yool.persona_hire", "yool.lesson_recall", "yool.code_run"]) {
      assert.ok(commands.includes(c), `${c} in ${commands.join(", ")}`);
    }
    const yool = init.capabilities.experimental?.yool;
    assert.equal(yool?.version, 1);
    const ops = new Map(yool!.operations.map((o) => [o.name, o]));
    assert.deepEqual(
      [...ops.keys()].map((n) => `yool.${n}`).sort(),
      [...commands].sort(),
      "one operation entry per command",
    );
    const ps = ops.get("ps")!;
    assert.equal(ps.group, "agents");
    assert.equal(ps.readOnly, true);
    assert.equal(ps.blocking, false);
    assert.match(ps.description, /List agents/);
    assert.equal(ops.get("wait")?.blocking, true);
    // what the extension lets the language client register as VS Code commands
    const registered = serverCommands(commands);
    assert.ok(registered.includes("yool.ps") && !registered.includes("yool.spawn") && !registered.includes("yool.inspect"));
  });

  test("yool/ps answers the ps result: agents and the session's spend and budget", async () => {
    const ps = await server.conn.sendRequest<Ps>(opMethod("ps"), {});
    assert.deepEqual(ps.agents, []);
    assert.equal(typeof ps.session.pid, "number");
    assert.equal(ps.session.tokens, 0);
    assert.equal(ps.session.usd, 0);
    assert.equal(ps.session.tool_calls, 0);
    assert.equal(ps.session.remaining.usd, 5);
    assert.equal(ps.session.remaining.tokens, 2_000_000);
    assert.equal(statusView(ps).text, "$(hubot) yool $0.00 / $5.00");
    const viaCommand = await server.conn.sendRequest<Ps>("workspace/executeCommand", { command: "yool.ps", arguments: [] });
    assert.deepEqual(viaCommand, ps);
  });

  test("a spawn is notified with its pid, then its exit with a reason; the tree is built from it", async () => {
    assert.deepEqual(await server.conn.sendRequest(REQUEST_TRACE_FOLLOW, { follow: true }), {});
    const spawned = await server.conn.sendRequest<{ pid: number; provider: string }>(opMethod("spawn"), { task: "say hello" });
    assert.equal(spawned.provider, "scripted");
    const pid = spawned.pid;
    const seen = await server.until(`agentsChanged with pid ${pid}`, () => server.agentRow(pid, () => true));
    assert.ok(seen.agents.some((a) => a.pid === pid));
    const ended = await server.until(`agent ${pid} exited`, () => server.agentRow(pid, (s) => s === "exited"));
    const row = ended.agents.find((a) => a.pid === pid)!;
    assert.equal(row.reason, "normal");
    assert.equal(row.result, "completed");
    assert.ok((row.steps ?? 0) >= 1);
    assert.ok((row.tokens ?? 0) > 0);
    assert.equal(row.task, "say hello");

    const node = agentNodes(ended).find((n) => n.pid === pid)!;
    assert.equal(node.label, `${pid} agent`);
    assert.match(node.description, /^exited: normal · \d+ steps? · \d+ tok · \$0\.00$/);
    assert.equal(node.contextValue, "yoolAgent:exited");
    assert.ok("refused" in actionRequest("kill", row), "an exited agent has no kill");
    const view = statusView(ended);
    assert.match(view.text, /^\$\(hubot\) yool \$0\.00 \/ \$5\.00$/);
    assert.match(view.tooltip, new RegExp(`tokens: ${ended.session.tokens} used of`));

    const events = await server.until("trace events of the spawn and exit", () => {
      const mine = server.trace.filter((e) => e.pid === pid);
      return mine.some((e) => e.kind === "exit") ? server.trace : undefined;
    });
    const { lines } = traceLines(events);
    assert.ok(lines.some((l) => new RegExp(`^\\d\\d:\\d\\d:\\d\\d\\.\\d{3} #\\d+ spawn +pid ${pid}`).test(l)), lines.join("\n"));
    assert.ok(lines.some((l) => new RegExp(` exit +pid ${pid} `).test(l)), lines.join("\n"));

    const inspected = await server.conn.sendRequest<{ pid: number; live: boolean; reason?: string }>(opMethod("inspect"), { pid });
    assert.equal(inspected.pid, pid);
    assert.equal(inspected.live, false);
    assert.equal(inspected.reason, "normal");
  });

  test("a live agent is stopped, continued and killed through the view's action requests", async () => {
    const spawned = await server.conn.sendRequest<{ pid: number }>(opMethod("spawn"), { task: "think slowly", provider: "anthropic" });
    const pid = spawned.pid;
    const live = await server.until(`agent ${pid} running`, () => server.agentRow(pid, (s) => s === "running"));
    const node = agentNodes(live).find((n) => n.pid === pid)!;
    assert.equal(node.contextValue, "yoolAgent:running");
    assert.equal(node.icon.id, "sync~spin");
    const stop = actionRequest("stop", live.agents.find((a) => a.pid === pid)!);
    assert.ok(!("refused" in stop));
    assert.equal((await server.conn.sendRequest<{ status: string }>(stop.method, stop.params)).status, "stopped");
    const stopped = await server.until(`agent ${pid} stopped`, () => server.agentRow(pid, (s) => s === "stopped"));
    assert.equal(agentNodes(stopped).find((n) => n.pid === pid)!.contextValue, "yoolAgent:stopped");
    const cont = actionRequest("resume", stopped.agents.find((a) => a.pid === pid)!);
    assert.deepEqual(cont, { method: "yool/signal", params: { pid, signal: "cont" } });
    const before = server.agents.length;
    assert.equal((await server.conn.sendRequest<{ status: string }>(cont.method, cont.params)).status, "running");
    const resumed = await server.until(`agent ${pid} running again`, () =>
      server.agents.length > before ? server.agentRow(pid, (s) => s === "running") : undefined,
    );
    const row = resumed.agents.find((a) => a.pid === pid)!;
    const kill = actionRequest("kill", row);
    assert.ok(!("refused" in kill));
    const done = await server.conn.sendRequest<{ pid: number; signal: string; status: string }>(kill.method, kill.params);
    assert.equal(done.pid, pid);
    assert.equal(done.signal, "kill");
    const ended = await server.until(`agent ${pid} killed`, () => server.agentRow(pid, (s) => s === "exited"));
    const after = ended.agents.find((a) => a.pid === pid)!;
    assert.match(after.reason ?? "", /^killed/);
    assert.equal(agentNodes(ended).find((n) => n.pid === pid)!.icon.id, "circle-slash");
  });

  test("bad arguments are -32602 naming the field; a refused operation is -32001", async () => {
    const missing = await rpcError(server.conn.sendRequest(opMethod("spawn"), {}));
    assert.equal(missing.code, -32602);
    assert.match(missing.message, /^task: /);
    const extra = await rpcError(server.conn.sendRequest(opMethod("spawn"), { task: "x", colour: "red" }));
    assert.equal(extra.code, -32602);
    assert.match(extra.message, /^colour: /);
    const badSignal = await rpcError(server.conn.sendRequest(opMethod("signal"), { pid: 1, signal: "hup" }));
    assert.equal(badSignal.code, -32602);
    assert.match(badSignal.message, /^signal: /);
    const refused = await rpcError(server.conn.sendRequest(opMethod("inspect"), { pid: 999_999 }));
    assert.equal(refused.code, -32001);
    assert.match(refused.message, /pid/);
    const unknown = await rpcError(server.conn.sendRequest(opMethod("no_such_op"), {}));
    assert.equal(unknown.code, -32601);
    assert.equal(server.messages.length, 0, "custom requests do not pop up messages");
  });

  test("a failed workspace/executeCommand is also shown as an error message", async () => {
    const failed = await rpcError(server.conn.sendRequest("workspace/executeCommand", { command: "yool.spawn", arguments: [{}] }));
    assert.equal(failed.code, -32602);
    const shown = await server.until("window/showMessage", () => server.messages.find((m) => m.message.startsWith("yool spawn:")));
    assert.equal(shown.type, 1);
    assert.match(shown.message, /^yool spawn: task: /);
  });

  test("another server's agent on the same YOOL_HOME is pushed by yool/othersChanged and shown as elsewhere", async () => {
    // agent mode's MCP server is such a server: its agents are not in this session's ps
    const watching = await server.conn.sendRequest<{ agents: unknown[]; watching: boolean }>(REQUEST_OTHERS, { watch: true });
    assert.equal(watching.watching, true);
    const other = new Server(env, tmp);
    try {
      await initialize(other, workspace);
      const { pid } = await other.conn.sendRequest<{ pid: number }>(opMethod("spawn"), { task: "agent mode's task", provider: "anthropic" });
      const rows = await server.until("othersChanged with the other server's agent", () =>
        [...server.others].reverse().find((r) => r.some((a) => a.pid === pid && a.status === "running")),
      );
      const mine = await server.conn.sendRequest<Ps>(opMethod("ps"), {});
      assert.ok(!mine.agents.some((a) => a.pid === pid), "the session's own ps does not list it");
      const merged = withOthers(mine, rows);
      const node = agentNodes(merged).find((n) => n.pid === pid)!;
      assert.equal(node.contextValue, "yoolAgent:elsewhere");
      assert.match(node.description, /^running under another yool server · /);
      assert.equal(node.children.find((c) => c.label === "task")?.description, "agent mode's task");
      const inspected = await server.conn.sendRequest<{ pid: number; process?: { status?: string; ended?: number | null } }>(opMethod("inspect"), { pid });
      assert.equal(inspected.pid, pid);
      assert.equal(inspected.process?.ended ?? null, null, "the store says it has not ended");
    } finally {
      assert.equal(await other.close(), 0);
      await server.conn.sendRequest(REQUEST_OTHERS, { watch: false });
    }
  });
});
