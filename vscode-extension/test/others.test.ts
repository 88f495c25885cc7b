/** Other yool servers' agents (from the server's `yool/others`) added to the Agents view. */

import { test } from "node:test";
import * as assert from "node:assert/strict";

import { agentNodes } from "../src/agents";
import { parseOthers, withOthers } from "../src/others";
import { Ps } from "../src/protocol";

const ps: Ps = {
  agents: [{ pid: 10, status: "running", steps: 1, tokens: 5, usd: 0, task: "mine" }],
  session: { pid: 9, tokens: 0, usd: 0, tool_calls: 0, remaining: {} },
};

test("yool/others answers are read, and bad ones are reported", () => {
  const rows = parseOthers({
    agents: [
      { pid: 4, status: "running", steps: 2, tokens: 30, usd: 0.01, provider: "anthropic", task: "from agent mode", started: 1, ended: null },
      { pid: "x", status: "running" },
    ],
    watching: true,
  });
  assert.ok(Array.isArray(rows));
  assert.deepEqual(rows.map((r) => r.pid), [4]);
  assert.deepEqual(parseOthers(null), { problem: "yool/others: no agents list" });
  assert.deepEqual(parseOthers({}), { problem: "yool/others: no agents list" });
});

test("another server's live agent is shown as elsewhere, with inspect only; the session's rows win", () => {
  const merged = withOthers(ps, [
    { pid: 10, status: "exited", task: "stale copy of mine" },
    { pid: 9, status: "running", task: "the session process itself" },
    { pid: 4, status: "running", steps: 2, tokens: 30, usd: 0.01, task: "from agent mode" },
    { pid: 3, status: "exited", reason: "normal", task: "done elsewhere" },
  ]);
  assert.deepEqual(merged.agents.map((a) => [a.pid, a.status]), [
    [10, "running"],
    [4, "elsewhere"],
    [3, "exited"],
  ]);
  const nodes = agentNodes(merged);
  assert.deepEqual(nodes.map((n) => n.pid), [10, 4, 3]);
  const other = nodes[1];
  assert.equal(other.contextValue, "yoolAgent:elsewhere");
  assert.equal(other.description, "running under another yool server · 2 steps · 30 tok · $0.0100");
  assert.equal(withOthers(ps, []), ps);
});

test("a row the session saw running elsewhere when it started gives way to the store's newer one", () => {
  const started: Ps = {
    ...ps,
    agents: [...ps.agents, { pid: 7, status: "elsewhere", steps: 1, tokens: 5, usd: 0, task: "agent mode's" }],
  };
  const merged = withOthers(started, [{ pid: 7, status: "exited", reason: "normal", steps: 3, task: "agent mode's" }]);
  assert.deepEqual(merged.agents.map((a) => [a.pid, a.status, a.reason ?? null]), [
    [10, "running", null],
    [7, "exited", "normal"],
  ]);
  assert.equal(withOthers(started, []), started); // nothing newer: kept as it was
});
