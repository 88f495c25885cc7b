/** The commands' requests and documents, and package.json's contributions in step with the code. */

import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";

import {
  OWN_COMMANDS,
  failureText,
  inspectDocument,
  lessonsDocument,
  runDocument,
  sandboxLanguage,
  serverCommands,
  spawnRequest,
  spawnTask,
} from "../src/commands";

const root = path.resolve(__dirname, "..", "..");
const pkg = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8"));

test("package.json contributes exactly the commands the extension registers", () => {
  const contributed = pkg.contributes.commands.map((c: { command: string }) => c.command).sort();
  assert.deepEqual(contributed, [...OWN_COMMANDS].sort());
  const source = fs.readFileSync(path.join(root, "src", "extension.ts"), "utf8");
  for (const id of OWN_COMMANDS) assert.ok(source.includes(`command("${id}"`), `${id} is registered in extension.ts`);
  for (const menu of Object.values(pkg.contributes.menus) as { command: string }[][]) {
    for (const m of menu) assert.ok((OWN_COMMANDS as readonly string[]).includes(m.command), `${m.command} in a menu is contributed`);
  }
});

test("the Agents view, its container and the MCP provider are declared", () => {
  assert.deepEqual(pkg.contributes.views.yool.map((v: { id: string }) => v.id), ["yool.agents"]);
  assert.equal(pkg.contributes.viewsContainers.activitybar[0].id, "yool");
  assert.ok(fs.existsSync(path.join(root, pkg.contributes.viewsContainers.activitybar[0].icon)));
  assert.deepEqual(pkg.contributes.mcpServerDefinitionProviders, [{ id: "yool", label: "yool" }]);
  assert.match(pkg.engines.vscode, /^\^1\.1\d\d\./);
  assert.equal(pkg.main, "./dist/extension.js");
});

test("the server's yool.<op> commands are registered except those the extension owns", () => {
  assert.deepEqual(serverCommands(["yool.ps", "yool.spawn", "yool.inspect", "yool.resume", "yool.trace"]), ["yool.ps", "yool.trace"]);
  assert.deepEqual(serverCommands(undefined), []);
});

test("a spawn's task is the prompt, then the selected code with where it is from", () => {
  const sel = { text: "def f():\n    return 1\n\n", file: "src/a.py", languageId: "python", line: 10 };
  assert.equal(spawnTask("  add a docstring ", sel), "add a docstring\n\nThe code (src/a.py, from line 10):\n\n```python\ndef f():\n    return 1\n```");
  assert.equal(spawnTask("", sel), "Work on this code (src/a.py, from line 10).\n\n```python\ndef f():\n    return 1\n```");
  assert.equal(spawnTask("list the files"), "list the files");
  assert.equal(spawnTask("x", { ...sel, text: "   " }), "x");
  assert.match(String(spawnTask("q", { ...sel, text: "a ``` b" })), /````python\na ``` b\n````$/);
  const refused = spawnTask("   ");
  assert.ok(typeof refused !== "string" && /^task: /.test(refused.refused));
  assert.deepEqual(spawnRequest("do it"), { method: "yool/spawn", params: { task: "do it" } });
  assert.deepEqual(spawnRequest("do it", "tester"), { method: "yool/spawn", params: { task: "do it", persona: "tester" } });
});

test("only Python and shell code goes to the sandbox as is", () => {
  assert.equal(sandboxLanguage("python"), "python");
  assert.equal(sandboxLanguage("shellscript"), "sh");
  assert.equal(sandboxLanguage("typescript"), undefined);
});

test("the documents show what the operations returned", () => {
  const run = runDocument("python", "print(1)", { reason: "normal", exit_code: 0, stdout: "1\n", stderr: "", wall_ms: 12.3, layers: ["rlimits", "seccomp"] });
  assert.match(run, /reason: \*\*normal\*\* · exit code 0 · 12 ms/);
  assert.match(run, /layers: rlimits, seccomp/);
  assert.match(run, /## stdout\n\n```\n1\n```/);
  assert.doesNotMatch(run, /## stderr/);
  const lessons = lessonsDocument("retries", { lessons: [{ id: 4, text: "Back off.", tags: ["net"] }] });
  assert.match(lessons, /^- \*\*#4\*\* — `net`: Back off\.$/m);
  assert.match(lessonsDocument("x", { lessons: [] }), /No lesson matches yet/);
  assert.deepEqual(JSON.parse(inspectDocument({ pid: 3, live: false })), { pid: 3, live: false });
});

test("a failed request reads as the server's message under the operation's name", () => {
  assert.equal(failureText("spawn", { code: -32602, message: "task: Field required" }), "yool spawn: task: Field required");
  assert.equal(failureText("ps", new Error("Connection is closed")), "yool ps: Connection is closed");
});
