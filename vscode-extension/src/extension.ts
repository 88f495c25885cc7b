/**
 * The VS Code side of the extension, kept thin: it starts `yool server --lsp` with the language
 * client, registers yool as an MCP server for agent mode, and wires the Agents view, the Trace
 * channel, the status bar and the commands to the pure modules next to it.
 */

import * as vscode from "vscode";
import {
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  State,
} from "vscode-languageclient/node";

import { AgentAction, AgentNode, DetailNode, actionRequest, agentNodes, liveCount } from "./agents";
import {
  Selection,
  failureText,
  inspectDocument,
  lessonsDocument,
  runDocument,
  sandboxLanguage,
  serverCommands,
  spawnRequest,
  spawnTask,
} from "./commands";
import { NOTIFY_AGENTS, NOTIFY_OTHERS, NOTIFY_TRACE, Ps, REQUEST_OTHERS, REQUEST_TRACE_FOLLOW, TraceEvent, opMethod } from "./protocol";
import { StoreAgent, parseOthers, withOthers } from "./others";
import { Resolved, resolveYool } from "./resolve";
import { settingsEnv } from "./settings";
import { StatusView, startingView, statusView, stoppedView } from "./statusbar";
import { droppedLine, traceLines } from "./trace";

const DOC_SCHEME = "yool";

type Node = AgentNode | DetailNode;

/** The Agents view: nodes from the latest `ps` payload. */
class AgentsTree implements vscode.TreeDataProvider<Node> {
  private readonly changed = new vscode.EventEmitter<void>();
  readonly onDidChangeTreeData = this.changed.event;
  nodes: AgentNode[] = [];

  update(ps: Ps | undefined): void {
    this.nodes = agentNodes(ps);
    this.changed.fire();
  }

  getChildren(node?: Node): Node[] {
    if (!node) return this.nodes;
    return node.kind === "agent" ? node.children : [];
  }

  getTreeItem(node: Node): vscode.TreeItem {
    if (node.kind === "detail") {
      const item = new vscode.TreeItem(node.label, vscode.TreeItemCollapsibleState.None);
      item.id = node.id;
      item.description = node.description;
      item.tooltip = node.description;
      return item;
    }
    const item = new vscode.TreeItem(node.label, vscode.TreeItemCollapsibleState.Collapsed);
    item.id = node.id;
    item.description = node.description;
    item.tooltip = node.tooltip;
    item.contextValue = node.contextValue;
    item.iconPath = new vscode.ThemeIcon(node.icon.id, node.icon.color ? new vscode.ThemeColor(node.icon.color) : undefined);
    return item;
  }
}

/** Read-only documents (inspect results, lessons, sandbox runs) under the `yool:` scheme. */
class Documents implements vscode.TextDocumentContentProvider {
  private readonly texts = new Map<string, string>();
  private readonly changed = new vscode.EventEmitter<vscode.Uri>();
  readonly onDidChange = this.changed.event;

  provideTextDocumentContent(uri: vscode.Uri): string {
    return this.texts.get(uri.path) ?? "";
  }

  async show(name: string, text: string): Promise<void> {
    const uri = vscode.Uri.from({ scheme: DOC_SCHEME, path: "/" + name });
    this.texts.set(uri.path, text);
    this.changed.fire(uri);
    const doc = await vscode.workspace.openTextDocument(uri);
    await vscode.window.showTextDocument(doc, { preview: false });
  }
}

class Yool {
  client: LanguageClient | undefined;
  ps: Ps | undefined;
  private lastSeq = 0;
  private following = false;
  private reported = "";
  private startedWith: string | undefined;
  private queue: Promise<void> = Promise.resolve();
  /** Agents of other yool servers on this YOOL_HOME (agent mode's MCP server). */
  private others: StoreAgent[] = [];
  private yoolPath: string | undefined;
  private readonly mcpChanged = new vscode.EventEmitter<void>();

  constructor(
    private readonly context: vscode.ExtensionContext,
    readonly tree: AgentsTree,
    private readonly view: vscode.TreeView<Node>,
    readonly trace: vscode.OutputChannel,
    private readonly log: vscode.LogOutputChannel,
    private readonly status: vscode.StatusBarItem,
    readonly docs: Documents,
  ) {}

  folders(): string[] {
    return (vscode.workspace.workspaceFolders ?? []).filter((f) => f.uri.scheme === "file").map((f) => f.uri.fsPath);
  }

  resolve(): Resolved {
    const config = vscode.workspace.getConfiguration("yool");
    return resolveYool({
      setting: config.get<string>("path"),
      workspaceFolders: this.folders(),
      env: process.env,
      platform: process.platform,
    });
  }

  /** The settings' `YOOL_*` variables; with `report`, new problems are logged and shown. */
  env(report: boolean): Record<string, string> {
    const config = vscode.workspace.getConfiguration("yool");
    const { env, problems } = settingsEnv((key) => config.get(key));
    const text = problems.join("; ");
    if (report && text !== this.reported) {
      this.reported = text; // each new set of problems is shown once, not on every restart
      for (const p of problems) this.log.warn(p);
      if (problems.length > 0) {
        void vscode.window.showWarningMessage(`yool: ${problems.length} setting(s) ignored: ${text}`);
      }
    }
    return env;
  }

  showStatus(view: StatusView): void {
    this.status.text = view.text;
    this.status.tooltip = view.tooltip;
    this.status.backgroundColor =
      view.level === "normal" ? undefined : new vscode.ThemeColor(`statusBarItem.${view.level}Background`);
    this.status.show();
  }

  update(ps: Ps): void {
    this.ps = ps;
    this.tree.update(withOthers(ps, this.others));
    const live = liveCount(ps);
    this.view.badge = live > 0 ? { value: live, tooltip: `${live} live agent(s)` } : undefined;
    this.view.message = undefined; // an empty view shows its welcome content (package.json)
    this.showStatus(statusView(ps));
  }

  notRunning(problem: string): void {
    this.ps = undefined;
    this.tree.update(undefined);
    this.view.message = `yool is not running. ${problem}`;
    this.showStatus(stoppedView(problem));
  }

  async start(): Promise<void> {
    const found = this.resolve();
    this.startedWith = this.serverKey();
    if (!found.found) {
      this.yoolPath = undefined;
      this.log.error(`${found.problem} Looked at: ${found.tried.join(", ")}`);
      this.notRunning(found.problem);
      void this.offerFix(found.problem);
      return;
    }
    this.following = false;
    this.lastSeq = 0; // a new server numbers its events from the start again
    this.yoolPath = found.path;
    this.log.info(`starting ${found.path} server --lsp (found via ${found.source})`);
    this.showStatus(startingView());
    const folders = this.folders();
    const serverOptions: ServerOptions = {
      command: found.path,
      args: ["server", "--lsp"],
      options: { env: { ...process.env, ...this.env(true) }, cwd: folders[0] },
    };
    const clientOptions: LanguageClientOptions = {
      documentSelector: [],
      outputChannel: this.log,
      initializationFailedHandler: (error) => {
        this.notRunning(failureText("server", error));
        return false;
      },
    };
    const client = new LanguageClient("yool", "yool", serverOptions, clientOptions);
    this.client = client;
    // The server's yool.<op> commands become VS Code commands, except the ids this
    // extension contributes itself (VS Code refuses an id registered twice).
    const feature = client.getFeature(ExecuteCommandRequest.method);
    const register = feature.register.bind(feature);
    feature.register = (data) =>
      register({ ...data, registerOptions: { ...data.registerOptions, commands: serverCommands(data.registerOptions.commands) } });
    client.onNotification(NOTIFY_AGENTS, (ps: Ps) => this.update(ps));
    client.onNotification(NOTIFY_OTHERS, (params: unknown) => this.setOthers(params));
    client.onNotification(NOTIFY_TRACE, (params: { events: TraceEvent[]; dropped?: number }) => {
      const dropped = droppedLine(params.dropped);
      if (dropped) this.trace.appendLine(dropped);
      this.appendTrace(params.events);
    });
    client.onDidChangeState((e) => {
      if (e.newState === State.Stopped && this.client === client) this.notRunning("The server stopped; run “yool: Restart Server”.");
    });
    try {
      await client.start();
    } catch (error) {
      this.notRunning(failureText("server", error));
      return;
    }
    await this.refresh(false);
    await this.applyFollow();
    if (this.view.visible) await this.readOthers(true);
  }

  /**
   * Other servers' agents (agent mode's MCP server, say): read now, and with `watch`, pushed
   * by the server as they change (`yool/othersChanged`) while the Agents view is visible.
   */
  async readOthers(watch?: boolean): Promise<void> {
    const client = this.client;
    if (!client || !client.isRunning()) return;
    try {
      this.setOthers(await client.sendRequest(REQUEST_OTHERS, watch === undefined ? {} : { watch }));
    } catch (error) {
      this.log.warn(failureText("others", error));
    }
  }

  private setOthers(params: unknown): void {
    const rows = parseOthers(params);
    if (!Array.isArray(rows)) {
      this.log.warn(rows.problem);
      return;
    }
    this.others = rows;
    if (this.ps) this.update(this.ps);
  }

  /** Ask for `yool/trace` notifications as the `yool.trace.follow` setting says. */
  async applyFollow(): Promise<void> {
    const client = this.client;
    if (!client || !client.isRunning()) return;
    const follow = vscode.workspace.getConfiguration("yool").get<boolean>("trace.follow", true);
    if (follow === this.following) return;
    try {
      if (follow) {
        this.trace.appendLine(`-- ${this.yoolPath ?? "yool"} server --lsp started; its events follow --`);
        const recent = await client.sendRequest<{ events: TraceEvent[] }>(opMethod("trace"), { n: 50 });
        this.appendTrace(recent.events);
      }
      await client.sendRequest(REQUEST_TRACE_FOLLOW, { follow });
      this.following = follow;
    } catch (error) {
      this.log.warn(failureText("traceFollow", error));
    }
  }

  /** What the servers are started with: a change of it restarts them. */
  serverKey(): string {
    const found = this.resolve();
    return JSON.stringify([found.found ? found.path : found.problem, this.env(false), this.folders()[0] ?? ""]);
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (client) {
      try {
        await client.stop(5000);
      } catch (error) {
        this.log.warn(failureText("stop", error));
      }
    }
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** A restart after any start or restart already under way. */
  restartQueued(): Promise<void> {
    return this.enqueue(() => this.restart());
  }

  /** Run `step` after the steps queued before it; a failure is logged and ends no later step. */
  private enqueue(step: () => Promise<void>): Promise<void> {
    this.queue = this.queue.then(step).catch((error) => this.log.error(failureText("server", error)));
    return this.queue;
  }

  private async offerFix(problem: string): Promise<void> {
    const pick = await vscode.window.showErrorMessage(problem, "Choose the yool executable…", "Open Settings");
    if (pick === "Open Settings") {
      await vscode.commands.executeCommand("workbench.action.openSettings", "yool.path");
    } else if (pick) {
      const chosen = await vscode.window.showOpenDialog({ canSelectMany: false, openLabel: "Use this yool" });
      if (chosen && chosen[0]) {
        const target = this.folders().length > 0 ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global;
        await vscode.workspace.getConfiguration("yool").update("path", chosen[0].fsPath, target);
      }
    }
  }

  appendTrace(events: readonly TraceEvent[]): void {
    const { lines, last } = traceLines(events, this.lastSeq);
    this.lastSeq = last;
    for (const line of lines) this.trace.appendLine(line);
  }

  /** Send `yool/<op>`; on failure show the server's message (it names the field) and return undefined. */
  async request<T>(op: string, params: Record<string, unknown>, method = opMethod(op), wait = true): Promise<T | undefined> {
    if (wait) await this.queue; // a command run while the server starts waits for it
    const client = this.client;
    if (!client || !client.isRunning()) {
      void vscode.window.showErrorMessage("yool is not running: run “yool: Restart Server” (see the yool Server output).");
      return undefined;
    }
    try {
      return await client.sendRequest<T>(method, params);
    } catch (error) {
      const text = failureText(op, error);
      this.log.error(text);
      void vscode.window.showErrorMessage(text);
      return undefined;
    }
  }

  /** `wait` false: called from within a start, which must not wait for itself. */
  async refresh(wait = true): Promise<void> {
    const ps = await this.request<Ps>("ps", {}, opMethod("ps"), wait);
    if (ps) this.update(ps);
    await this.readOthers();
  }

  // -- MCP ---------------------------------------------------------------------------------

  registerMcp(): void {
    const lm = (vscode as { lm?: Partial<typeof vscode.lm> }).lm;
    if (!lm || typeof lm.registerMcpServerDefinitionProvider !== "function" || typeof vscode.McpStdioServerDefinition !== "function") {
      this.log.warn("This VS Code has no vscode.lm.registerMcpServerDefinitionProvider: yool is not offered as an MCP server (needs VS Code 1.101+).");
      return;
    }
    const version = String(this.context.extension.packageJSON.version ?? "0");
    this.context.subscriptions.push(
      this.mcpChanged,
      lm.registerMcpServerDefinitionProvider("yool", {
        onDidChangeMcpServerDefinitions: this.mcpChanged.event,
        provideMcpServerDefinitions: () => {
          const found = this.resolve();
          if (!found.found) {
            this.log.warn(`MCP: ${found.problem}`);
            return [];
          }
          const def = new vscode.McpStdioServerDefinition("yool", found.path, ["server", "--stdio"], this.env(false), version);
          const folders = this.folders();
          if (folders[0]) def.cwd = vscode.Uri.file(folders[0]);
          return [def];
        },
        resolveMcpServerDefinition: (def) => def,
      }),
    );
  }

  /**
   * A setting or workspace folder changed: restart the servers only when what they are started
   * with changed (a restart ends the session's live agents: they resume from the Agents view).
   */
  settingsChanged(): void {
    void this.enqueue(async () => {
      this.env(true);
      if (this.serverKey() === this.startedWith) {
        await this.applyFollow();
        return;
      }
      this.log.info("the yool settings changed: restarting the server");
      this.mcpChanged.fire();
      await this.restart();
    });
  }
}

// -- commands ------------------------------------------------------------------------------

function editorSelection(): Selection | undefined {
  const editor = vscode.window.activeTextEditor;
  if (!editor || editor.selection.isEmpty) return undefined;
  return {
    text: editor.document.getText(editor.selection),
    file: vscode.workspace.asRelativePath(editor.document.uri),
    languageId: editor.document.languageId,
    line: editor.selection.start.line + 1,
  };
}

async function spawn(y: Yool): Promise<void> {
  const selection = editorSelection();
  const prompt = await vscode.window.showInputBox({
    title: "yool: spawn a sub-agent",
    prompt: selection ? `What should the agent do with the selected code (${selection.file})?` : "What should the agent do?",
    ignoreFocusOut: true,
  });
  if (prompt === undefined) return;
  const task = spawnTask(prompt, selection);
  if (typeof task !== "string") {
    void vscode.window.showErrorMessage(task.refused);
    return;
  }
  const req = spawnRequest(task);
  const spawned = await y.request<{ pid: number; provider: string }>("spawn", req.params, req.method);
  if (spawned) void vscode.window.showInformationMessage(`yool: spawned agent ${spawned.pid} (${spawned.provider})`);
}

async function hire(y: Yool): Promise<void> {
  const list = await y.request<{ personas: { name: string; description: string; source: string; tools?: string[] }[] }>("persona_list", {});
  if (!list) return;
  const pick = await vscode.window.showQuickPick(
    list.personas.map((p) => ({ label: p.name, description: p.source, detail: p.description })),
    { title: "yool: hire a persona", placeHolder: "Persona", matchOnDetail: true },
  );
  if (!pick) return;
  const selection = editorSelection();
  const prompt = await vscode.window.showInputBox({ title: `yool: task for ${pick.label}`, ignoreFocusOut: true });
  if (prompt === undefined) return;
  const task = spawnTask(prompt, selection);
  if (typeof task !== "string") {
    void vscode.window.showErrorMessage(task.refused);
    return;
  }
  const hired = await y.request<{ pid: number; lessons: number[] }>("persona_hire", { name: pick.label, task });
  if (hired) {
    void vscode.window.showInformationMessage(
      `yool: hired ${pick.label} as agent ${hired.pid}` + (hired.lessons.length ? ` with ${hired.lessons.length} lesson(s)` : ""),
    );
  }
}

async function recall(y: Yool): Promise<void> {
  const editor = vscode.window.activeTextEditor;
  const initial = editor && !editor.selection.isEmpty ? editor.document.getText(editor.selection).slice(0, 200) : "";
  const query = await vscode.window.showInputBox({ title: "yool: recall lessons", prompt: "About what?", value: initial });
  if (!query) return;
  const found = await y.request<{ lessons: { id: number; text: string; tags: string[] }[] }>("lesson_recall", { query });
  if (found) await y.docs.show(`lessons.md`, lessonsDocument(query, found));
}

async function runSelection(y: Yool): Promise<void> {
  const editor = vscode.window.activeTextEditor;
  if (!editor) {
    void vscode.window.showErrorMessage("yool: open a Python or shell file and select the code to run.");
    return;
  }
  const code = editor.selection.isEmpty ? editor.document.getText() : editor.document.getText(editor.selection);
  if (code.trim() === "") {
    void vscode.window.showErrorMessage("yool: nothing to run: select some code.");
    return;
  }
  let lang = sandboxLanguage(editor.document.languageId);
  if (!lang) {
    const pick = await vscode.window.showQuickPick(["python", "sh"], { title: `Run ${editor.document.languageId} code as` });
    if (!pick) return;
    lang = pick as "python" | "sh";
  }
  const chosen = lang;
  const result = await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: `yool: running ${chosen} in the sandbox…` },
    () => y.request<Record<string, unknown>>("code_run", { code, lang: chosen }),
  );
  if (result) await y.docs.show(`sandbox-run.md`, runDocument(chosen, code, result));
}

/** The agent a row command acts on: the clicked row, else one picked from the list. */
async function pickAgent(y: Yool, node: AgentNode | undefined, title: string, fits: (n: AgentNode) => boolean): Promise<AgentNode | undefined> {
  if (node && node.kind === "agent") return node;
  const candidates = y.tree.nodes.filter(fits);
  if (candidates.length === 0) {
    void vscode.window.showInformationMessage(`yool: no agent to ${title}.`);
    return undefined;
  }
  const pick = await vscode.window.showQuickPick(
    candidates.map((n) => ({ label: n.label, description: n.description, node: n })),
    { title: `yool: ${title}` },
  );
  return pick?.node;
}

async function act(y: Yool, action: AgentAction, node?: AgentNode): Promise<void> {
  const fits = (n: AgentNode) => !("refused" in actionRequest(action, { pid: n.pid, status: n.contextValue.split(":")[1] }));
  const target = await pickAgent(y, node, `${action} an agent`, fits);
  if (!target) return;
  const status = y.ps?.agents.find((a) => a.pid === target.pid)?.status ?? target.contextValue.split(":")[1];
  const req = actionRequest(action, { pid: target.pid, status });
  if ("refused" in req) {
    void vscode.window.showWarningMessage(`yool: ${req.refused}`);
    return;
  }
  const op = req.method.replace(/^yool\//, "");
  const done = await y.request<Record<string, unknown>>(op, req.params, req.method);
  if (done) await y.refresh();
}

async function inspect(y: Yool, node?: AgentNode): Promise<void> {
  const target = await pickAgent(y, node, "inspect an agent", () => true);
  if (!target) return;
  const result = await y.request<unknown>("inspect", { pid: target.pid });
  if (result !== undefined) await y.docs.show(`inspect-${target.pid}.json`, inspectDocument(result));
}

export function activate(context: vscode.ExtensionContext): void {
  const trace = vscode.window.createOutputChannel("yool Trace");
  const log = vscode.window.createOutputChannel("yool Server", { log: true });
  const status = vscode.window.createStatusBarItem("yool.status", vscode.StatusBarAlignment.Left, 50);
  status.name = "yool";
  status.command = "yool.agents.focus";
  const tree = new AgentsTree();
  const view = vscode.window.createTreeView("yool.agents", { treeDataProvider: tree, showCollapseAll: true });
  const docs = new Documents();
  const y = new Yool(context, tree, view, trace, log, status, docs);
  const command = (id: string, fn: (...args: never[]) => unknown) => vscode.commands.registerCommand(id, fn);
  context.subscriptions.push(
    trace,
    log,
    status,
    view,
    vscode.workspace.registerTextDocumentContentProvider(DOC_SCHEME, docs),
    command("yool.refresh", () => y.refresh()),
    command("yool.spawn", () => spawn(y)),
    command("yool.hire", () => hire(y)),
    command("yool.recall", () => recall(y)),
    command("yool.runSelection", () => runSelection(y)),
    command("yool.kill", (node?: AgentNode) => act(y, "kill", node)),
    command("yool.stop", (node?: AgentNode) => act(y, "stop", node)),
    command("yool.resume", (node?: AgentNode) => act(y, "resume", node)),
    command("yool.inspect", (node?: AgentNode) => inspect(y, node)),
    command("yool.showTrace", () => trace.show(true)),
    command("yool.restartServer", () => y.restartQueued()),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration("yool")) y.settingsChanged();
    }),
    vscode.workspace.onDidChangeWorkspaceFolders(() => y.settingsChanged()),
  );
  context.subscriptions.push(view.onDidChangeVisibility((e) => void y.readOthers(e.visible)));
  current = y;
  y.registerMcp();
  void y.restartQueued(); // activation does not wait for the server: the commands are there already
}

let current: Yool | undefined;

export function deactivate(): Promise<void> | undefined {
  const y = current;
  current = undefined;
  return y?.stop();
}
