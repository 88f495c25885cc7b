/** The Agents view model, the status bar and the Trace lines, from `ps`-shaped payloads. */

import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";

import { CONTEXT_PREFIX, actionRequest, agentNode, agentNodes, reasonKind } from "../src/agents";
import { Ps } from "../src/protocol";
import { statusView } from "../src/statusbar";
import { clock, droppedLine, traceLine, traceLines } from "../src/trace";
import { compactCount, dollars, duration } from "../src/format";

const session = { pid: 1, tokens: 1200, usd: 0.25, tool_calls: 3, remaining: { tokens: 1998800, usd: 4.75, tool_calls: 9997, wall_s: null } };

const ps: Ps = {
  agents: [
    { pid: 5, status: "exited", reason: "normal", result: "completed", steps: 2, tokens: 300, usd: 0.0012, task: "write tests", persona: "tester" },
    { pid: 9, status: "running", steps: 1, tokens: 12345, usd: 0.01, task: "refactor\nthe parser", persona: null },
    { pid: 7, status: "stopped", steps: 0, tokens: 0, usd: 0, task: "t" },
    { pid: 3, status: "interrupted", steps: 4, tokens: 50, usd: 0, task: "t" },
    { pid: 2, status: "exited", reason: "quota(tokens)", result: "stalled", steps: 9, tokens: 999, usd: 0.5, task: "t", origin: { forked: 1, steps: 2 } },
  ],
  session,
};

const pkg = JSON.parse(fs.readFileSync(path.resolve(__dirname, "..", "..", "package.json"), "utf8"));

/** Whether a `view/item/context` when-clause shows its command on a row with this contextValue. */
function shows(command: string, contextValue: string): boolean {
  const entry = pkg.contributes.menus["view/item/context"].find((m: { command: string }) => m.command === command);
  assert.ok(entry, `${command} is in view/item/context`);
  const clause: string = entry.when.replace(/^view == yool\.agents && /, "");
  const eq = /^viewItem == (\S+)$/.exec(clause);
  if (eq) return contextValue === eq[1];
  const re = /^viewItem =~ \/(.+)\/$/.exec(clause);
  assert.ok(re, `unexpected when-clause ${entry.when}`);
  return new RegExp(re[1]).test(contextValue);
}

test("live agents come first, newest first, then ended ones", () => {
  assert.deepEqual(agentNodes(ps).map((n) => n.pid), [9, 7, 5, 3, 2]);
  assert.deepEqual(agentNodes(undefined), []);
});

test("a row shows pid, persona, status, steps, tokens, USD and the exit reason", () => {
  const done = agentNode(ps.agents[0]);
  assert.equal(done.label, "5 tester");
  assert.equal(done.description, "exited: normal · 2 steps · 300 tok · $0.0012");
  assert.equal(done.id, "5");
  assert.equal(done.contextValue, "yoolAgent:exited");
  assert.deepEqual(done.icon, { id: "pass", color: "testing.iconPassed" });
  const running = agentNode(ps.agents[1]);
  assert.equal(running.label, "9 agent");
  assert.equal(running.description, "running · 1 step · 12.3k tok · $0.0100");
  assert.equal(running.icon.id, "sync~spin");
  assert.match(running.tooltip, /refactor the parser/);
  const quota = agentNode(ps.agents[4]);
  assert.equal(quota.description, "exited: quota(tokens) · 9 steps · 999 tok · $0.5000");
  assert.equal(quota.icon.id, "error");
  assert.deepEqual(
    quota.children.map((c) => [c.label, c.description]),
    [
      ["task", "t"],
      ["status", "exited"],
      ["exit reason", "quota(tokens)"],
      ["result", "stalled"],
      ["usage", "9 steps · 999 tok · $0.5000"],
      ["origin", '{"forked":1,"steps":2}'],
    ],
  );
  const ids = agentNodes(ps).flatMap((n) => [n.id, ...n.children.map((c) => c.id)]);
  assert.equal(new Set(ids).size, ids.length, "tree ids are unique");
});

test("the menus show kill on live agents, stop on running, resume on stopped and interrupted", () => {
  const table = Object.fromEntries(
    ["running", "stopped", "interrupted", "exited", "elsewhere"].map((status) => {
      const cv = CONTEXT_PREFIX + status;
      return [status, ["yool.kill", "yool.stop", "yool.resume", "yool.inspect"].filter((c) => shows(c, cv))];
    }),
  );
  assert.deepEqual(table, {
    running: ["yool.kill", "yool.stop", "yool.inspect"],
    stopped: ["yool.kill", "yool.resume", "yool.inspect"],
    interrupted: ["yool.resume", "yool.inspect"],
    exited: ["yool.inspect"],
    elsewhere: ["yool.inspect"],
  });
});

test("each action sends the request the server's operations take, or is refused", () => {
  assert.deepEqual(actionRequest("kill", { pid: 9, status: "running" }), { method: "yool/signal", params: { pid: 9, signal: "kill" } });
  assert.deepEqual(actionRequest("stop", { pid: 9, status: "running" }), { method: "yool/signal", params: { pid: 9, signal: "stop" } });
  assert.deepEqual(actionRequest("resume", { pid: 7, status: "stopped" }), { method: "yool/signal", params: { pid: 7, signal: "cont" } });
  assert.deepEqual(actionRequest("resume", { pid: 3, status: "interrupted" }), { method: "yool/resume", params: { pid: 3 } });
  const refused = actionRequest("kill", { pid: 5, status: "exited" });
  assert.ok("refused" in refused && /only a live agent/.test(refused.refused));
  assert.ok("refused" in actionRequest("stop", { pid: 7, status: "stopped" }));
  assert.ok("refused" in actionRequest("resume", { pid: 5, status: "exited" }));
});

test("an agent on another cluster node says which", () => {
  const n = agentNode({ pid: 12, status: "running", node: "n2/40" });
  assert.equal(n.label, "12 agent @n2");
  assert.match(n.tooltip, /^pid 12 · agent · on n2\/40$/m);
  assert.deepEqual(n.children.find((c) => c.label === "node")?.description, "n2/40");
});

test("exit reasons are grouped by their kind", () => {
  assert.equal(reasonKind("killed(by=1)"), "killed");
  assert.equal(reasonKind("quota(tokens)"), "quota");
  assert.equal(reasonKind(null), undefined);
  assert.equal(agentNode({ pid: 1, status: "exited", reason: "killed(by=1)" }).icon.id, "circle-slash");
  assert.equal(agentNode({ pid: 1, status: "exited", reason: "fault(ValueError)" }).icon.id, "error");
});

test("the status bar shows spend against the budget and the live agents", () => {
  const v = statusView(ps);
  assert.equal(v.text, "$(hubot) yool $0.2500 / $5.00 · 2 live");
  assert.equal(v.level, "normal");
  assert.match(v.tooltip, /^USD: \$0\.2500 used of \$5\.00 \(\$4\.75 left\)$/m);
  assert.match(v.tooltip, /^tokens: 1\.2k used of 2M \(2M left\)$/m);
  assert.match(v.tooltip, /^agents: 2 live, 5 listed$/m);
  assert.doesNotMatch(v.tooltip, /wall time/);
});

test("the status bar warns when a budget is nearly spent and errs when it is spent", () => {
  const near = statusView({ agents: [], session: { ...session, usd: 4.6, remaining: { ...session.remaining, usd: 0.4 } } });
  assert.equal(near.level, "warning");
  assert.equal(near.text, "$(hubot) yool $4.60 / $5.00");
  assert.match(near.tooltip, /budget nearly spent \(USD\)/);
  const spent = statusView({ agents: [], session: { ...session, tokens: 2_000_000, remaining: { ...session.remaining, tokens: 0 } } });
  assert.equal(spent.level, "error");
  assert.match(spent.tooltip, /budget spent \(tokens\): new agents will end with quota/);
  const unlimited = statusView({ agents: [], session: { ...session, remaining: { tokens: null, usd: null, tool_calls: null, wall_s: 65 } } });
  assert.equal(unlimited.text, "$(hubot) yool $0.2500 (no USD budget)");
  assert.equal(unlimited.level, "normal");
  assert.match(unlimited.tooltip, /^wall time left: 1m 5s$/m);
});

test("a trace line has the UTC time, seq, kind, pid and short data", () => {
  const ts = Date.UTC(2026, 0, 2, 3, 4, 5, 678) / 1000;
  assert.equal(clock(ts), "03:04:05.678");
  assert.equal(traceLine({ seq: 12, ts, kind: "spawn", pid: 7, data: { image: "yool.react", name: "agent" } }), "03:04:05.678 #12 spawn    pid 7  image=yool.react name=agent");
  assert.equal(traceLine({ seq: 13, ts, kind: "log", pid: null, data: "line one\nline two" }), "03:04:05.678 #13 log      pid -  line one line two");
  const long = traceLine({ seq: 1, ts, kind: "exit", pid: 1, data: "x".repeat(1000) });
  assert.ok(long.endsWith("…") && long.length < 400);
});

test("trace batches are shown once each, in order", () => {
  const ev = (seq: number) => ({ seq, ts: 0, kind: "log", pid: 1, data: String(seq) });
  const first = traceLines([ev(2), ev(1), ev(3)]);
  assert.equal(first.last, 3);
  assert.deepEqual(first.lines.map((l) => l.split("pid 1  ")[1]), ["1", "2", "3"]);
  const again = traceLines([ev(3), ev(4)], first.last);
  assert.deepEqual(again.lines.map((l) => l.split("pid 1  ")[1]), ["4"]);
  assert.equal(traceLines([], 4).last, 4);
});

test("events the server dropped are counted in one line", () => {
  assert.equal(droppedLine(undefined), undefined);
  assert.equal(droppedLine(0), undefined);
  assert.match(droppedLine(1) ?? "", /^… 1 event dropped by the server/);
  assert.match(droppedLine(12) ?? "", /^… 12 events dropped/);
});

test("number formats", () => {
  assert.deepEqual([950, 12_345, 2_000_000, 123_456_789].map(compactCount), ["950", "12.3k", "2M", "123M"]);
  assert.deepEqual([0, 0.0012, 1.25].map(dollars), ["$0.00", "$0.0012", "$1.25"]);
  assert.deepEqual([5, 185, 7800].map(duration), ["5s", "3m 5s", "2h 10m"]);
});
