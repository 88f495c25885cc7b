/** Settings to YOOL_* variables: names from policy.py, checked values, package.json in step. */

import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";

import { ENV_SETTINGS, settingsEnv } from "../src/settings";

const get = (values: Record<string, unknown>) => (key: string) => values[key];
const root = path.resolve(__dirname, "..", "..");

test("settings left at their defaults add no variable", () => {
  const out = settingsEnv(get({ home: "", provider: "", model: "", "budget.usd": null, tools: [], env: {} }));
  assert.deepEqual(out, { env: {}, problems: [] });
});

test("each setting becomes its YOOL_* variable", () => {
  const out = settingsEnv(
    get({
      home: " /tmp/yh ",
      provider: "Anthropic",
      model: "claude-x",
      "budget.tokens": 1000,
      "budget.usd": 0.5,
      "budget.toolCalls": "unlimited",
      "budget.wallSeconds": 90,
      tools: ["memory", "agents", "agents"],
      "sandbox.level": 3,
      "sandbox.timeoutSeconds": 2.5,
      "sandbox.memoryMb": 256,
    }),
  );
  assert.deepEqual(out.problems, []);
  assert.deepEqual(out.env, {
    YOOL_HOME: "/tmp/yh",
    YOOL_PROVIDER: "anthropic",
    YOOL_MODEL: "claude-x",
    YOOL_BUDGET_TOKENS: "1000",
    YOOL_BUDGET_USD: "0.5",
    YOOL_BUDGET_TOOL_CALLS: "unlimited",
    YOOL_BUDGET_WALL_S: "90",
    YOOL_TOOLS: "agents,memory",
    YOOL_SANDBOX_LEVEL: "3",
    YOOL_SANDBOX_TIMEOUT_S: "2.5",
    YOOL_SANDBOX_MEMORY_MB: "256",
  });
});

test("a big whole budget is written in plain digits, as Python's int() reads it", () => {
  assert.equal(settingsEnv(get({ "budget.tokens": 1e21 })).env.YOOL_BUDGET_TOKENS, "1000000000000000000000");
});

test("'all' among the tool groups switches every group on", () => {
  assert.equal(settingsEnv(get({ tools: ["code", "all"] })).env.YOOL_TOOLS, "all");
});

test("a bad value is left out and named with the setting and what is accepted", () => {
  const out = settingsEnv(
    get({
      provider: "gpt",
      "budget.tokens": -1,
      "budget.toolCalls": 2.5,
      "budget.wallSeconds": 0,
      tools: ["agents", "nonsense"],
      "sandbox.level": 7,
      "sandbox.timeoutSeconds": 0,
      "sandbox.memoryMb": 63,
      "budget.usd": 1,
    }),
  );
  assert.deepEqual(out.env, { YOOL_BUDGET_USD: "1" });
  const text = out.problems.join("\n");
  assert.equal(out.problems.length, 8);
  assert.match(text, /^yool\.provider: expected one of scripted, anthropic, openai, sampling, got "gpt"$/m);
  assert.match(text, /^yool\.budget\.tokens: expected a whole number >= 0, "unlimited", or null for yool's default, got -1$/m);
  assert.match(text, /^yool\.budget\.toolCalls: .*got 2\.5$/m);
  assert.match(text, /^yool\.budget\.wallSeconds: expected a number > 0/m);
  assert.match(text, /^yool\.tools: unknown tool group "nonsense"; known: agents, code/m);
  assert.match(text, /^yool\.sandbox\.level: expected a whole number from 0 to 6, got 7$/m);
  assert.match(text, /^yool\.sandbox\.timeoutSeconds: expected a number above 0 and at most 600, got 0$/m);
  assert.match(text, /^yool\.sandbox\.memoryMb: expected a whole number from 64 to 65536, got 63$/m);
});

test("yool.env passes YOOL_* knobs, refuses other names (API keys) and named settings win", () => {
  const out = settingsEnv(
    get({
      env: { YOOL_API_MAX_RETRIES: 5, YOOL_FAST_LANE: false, YOOL_PROVIDER: "openai", ANTHROPIC_API_KEY: "sk-x", YOOL_X: { a: 1 } },
      provider: "scripted",
    }),
  );
  assert.deepEqual(out.env, { YOOL_API_MAX_RETRIES: "5", YOOL_FAST_LANE: "false", YOOL_PROVIDER: "scripted" });
  assert.equal(out.problems.length, 2);
  assert.match(out.problems[0], /^yool\.env: ANTHROPIC_API_KEY is not a YOOL_\* variable/);
  assert.ok(!out.problems.join("").includes("sk-x"), "a secret's value is never echoed");
  assert.match(out.problems[1], /^yool\.env: YOOL_X must be text, a number or true\/false/);
});

test("every mapped variable is a knob of src/yool/policy.py", () => {
  const policy = fs.readFileSync(path.join(root, "..", "src", "yool", "policy.py"), "utf8");
  for (const s of ENV_SETTINGS) {
    const knob = s.env.replace(/^YOOL_/, "");
    assert.ok(policy.includes(`"${knob}"`), `${s.env} (yool.${s.key}) is not declared in policy.py`);
  }
});

test("package.json declares exactly the mapped settings, plus path, env and trace.follow", () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8"));
  const declared = Object.keys(pkg.contributes.configuration.properties).sort();
  const expected = [...ENV_SETTINGS.map((s) => `yool.${s.key}`), "yool.path", "yool.env", "yool.trace.follow"].sort();
  assert.deepEqual(declared, expected);
  for (const s of ENV_SETTINGS) {
    const desc: string = pkg.contributes.configuration.properties[`yool.${s.key}`].markdownDescription;
    assert.ok(desc.includes(s.env), `yool.${s.key}'s description names ${s.env}`);
  }
});
