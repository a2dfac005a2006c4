// The client against a real Loom: LOOM_ADDRESS and LOOM_API_KEY name it (the
// repository's tests/test_other_languages.py starts one with a scripted model
// that answers "You said: <message>", asks for get_weather when a message
// mentions the weather and tools are offered, is slow for "[slow]" (answers
// after the call's deadline) and streams for 6 s for "[paced]").

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";

import { status } from "@grpc/grpc-js";

import {
  Loom,
  LoomError,
  MemoryMode,
  MessageStatus,
  OnBusy,
  ReasoningEffort,
  Role,
} from "../src/index.js";
import type { Reply, ReplyEvent } from "../src/index.js";

const address = process.env.LOOM_ADDRESS ?? "127.0.0.1:50051";
const apiKey = process.env.LOOM_API_KEY ?? "dev-key";
const loom = new Loom({ address, apiKey, timeoutMs: 30_000 });
after(() => loom.close());

async function all<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

async function rejection(promise: Promise<unknown>): Promise<LoomError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof LoomError, `not a LoomError: ${String(error)}`);
    return error;
  }
  throw new Error("the call succeeded");
}

describe("seed scenarios", () => {
  test("a thread remembers the conversation", async () => {
    const kinds: string[] = [];
    const stream = loom.sendMessage("My favorite color is blue.");
    for await (const event of stream) kinds.push(event.$case);
    const first = await stream.finalReply();
    assert.equal(kinds[0], "started");
    assert.equal(kinds.at(-1), "completed");
    assert.ok(kinds.includes("delta"));
    assert.ok(first.threadCreated);
    assert.match(first.threadId, /^thread_/);
    assert.equal(first.content, "You said: My favorite color is blue.");
    assert.equal(first.message?.status, MessageStatus.MESSAGE_STATUS_COMPLETE);

    const second = await loom
      .sendMessage("What did I just tell you?", { threadId: first.threadId })
      .finalReply();
    assert.equal(second.threadId, first.threadId);
    assert.equal(second.threadCreated, false);
    const history = await all(loom.threads.messages(first.threadId, { pageSize: 1 }));
    assert.deepEqual(
      history.map((m) => [m.role, m.content]),
      [
        [Role.ROLE_USER, "My favorite color is blue."],
        [Role.ROLE_ASSISTANT, "You said: My favorite color is blue."],
        [Role.ROLE_USER, "What did I just tell you?"],
        [Role.ROLE_ASSISTANT, "You said: What did I just tell you?"],
      ],
    );
    const newest = await all(loom.threads.messages(first.threadId, { order: "desc" }));
    assert.equal(newest[0]?.sequence, 3);
  });

  test("one assistant, a thread per end user", async () => {
    const support = await loom.assistants.create({
      name: "Support",
      instructions: "You are a concise support agent.",
    });
    const alice = await loom
      .sendMessage("My order #123 is late.", { assistantId: support.assistantId, userId: "alice" })
      .finalReply();
    const bob = await loom
      .sendMessage("I need an invoice.", { assistantId: support.assistantId, userId: "bob" })
      .finalReply();
    assert.notEqual(alice.threadId, bob.threadId);
    const alices = await all(loom.threads.list({ assistantId: support.assistantId, userId: "alice" }));
    assert.deepEqual(
      alices.map((t) => t.threadId),
      [alice.threadId],
    );
    const everyone = await all(loom.threads.list({ assistantId: support.assistantId, pageSize: 1 }));
    assert.equal(everyone.length, 2);
    const said = (await all(loom.threads.messages(alice.threadId))).map((m) => m.content).join(" ");
    assert.ok(!said.includes("invoice"), "a user's thread holds only that user's messages");
  });
});

describe("resources", () => {
  test("assistants: create, get, list, update, delete", async () => {
    const created = await loom.assistants.create({ name: "Chef", memoryMode: "auto" });
    assert.equal(created.memoryMode, MemoryMode.MEMORY_MODE_AUTO);
    assert.equal((await loom.assistants.get(created.assistantId)).name, "Chef");
    const listed = await all(loom.assistants.list({ pageSize: 1 }));
    assert.ok(listed.some((a) => a.assistantId === created.assistantId));
    const updated = await loom.assistants.update(created.assistantId, { instructions: "Be brief." });
    assert.equal(updated.instructions, "Be brief.");
    assert.equal(updated.name, "Chef", "only the given fields change");
    await loom.assistants.delete(created.assistantId);
    const gone = await rejection(loom.assistants.get(created.assistantId));
    assert.equal(gone.reason, "ASSISTANT_NOT_FOUND");
  });

  test("generation settings: the assistant's defaults, a message's override, schema_error", async () => {
    const assistant = await loom.assistants.create({
      name: "Extractor",
      generation: { temperature: 0, reasoningEffort: ReasoningEffort.REASONING_EFFORT_LOW },
    });
    assert.equal(assistant.generation?.temperature, 0);
    assert.equal(assistant.generation?.reasoningEffort, ReasoningEffort.REASONING_EFFORT_LOW);
    const schema = { type: "object", required: ["name"], properties: { name: { type: "string" } } };
    const reply = await loom
      .sendMessage("node generation settings", {
        assistantId: assistant.assistantId,
        generation: {
          maxOutputTokens: 57,
          responseFormat: { format: { $case: "jsonSchema", value: { name: "person", schema, strict: false } } },
        },
      })
      .finalReply();
    // The scripted model answers in prose: stored, and flagged.
    assert.equal(reply.message?.status, MessageStatus.MESSAGE_STATUS_COMPLETE);
    assert.match(reply.message?.schemaError ?? "", /the reply is not JSON/);
  });

  test("threads: create, get, delete", async () => {
    const thread = await loom.threads.create({ userId: "carol", metadata: { plan: "pro" } });
    assert.deepEqual((await loom.threads.get(thread.threadId)).metadata, { plan: "pro" });
    assert.equal(await loom.threads.delete(thread.threadId), 0);
    const gone = await rejection(loom.threads.get(thread.threadId));
    assert.equal(gone.code, status.NOT_FOUND);
    assert.equal(gone.reason, "THREAD_NOT_FOUND");
    assert.equal(gone.metadata.thread_id, thread.threadId);
  });

  test("memories: create, get, list, search, update, delete, recalled in a reply", async () => {
    const chef = await loom.assistants.create({ name: "Chef", memoryMode: "readonly" });
    const a = chef.assistantId;
    const memory = await loom.memories.create({
      assistantId: a,
      content: "The user is allergic to peanuts.",
      userId: "u1",
    });
    assert.equal((await loom.memories.get(a, memory.memoryId)).userId, "u1");
    assert.equal((await all(loom.memories.list(a, { userId: "u1" }))).length, 1);
    const found = await loom.memories.search(a, "peanut allergy", { userId: "u1" });
    assert.equal(found[0]?.memory?.memoryId, memory.memoryId);

    const reply = await loom
      .sendMessage("Any dietary restrictions?", { assistantId: a, userId: "u1" })
      .finalReply();
    assert.deepEqual(
      reply.memories.map((m) => m.content),
      ["The user is allergic to peanuts."],
    );

    const updated = await loom.memories.update(a, memory.memoryId, {
      content: "The user is allergic to tree nuts.",
    });
    assert.equal(updated.content, "The user is allergic to tree nuts.");
    await loom.memories.delete(a, memory.memoryId);
    const gone = await rejection(loom.memories.get(a, memory.memoryId));
    assert.equal(gone.reason, "MEMORY_NOT_FOUND");
  });
});

describe("tools, errors and deadlines", () => {
  test("one event handler serves SendMessage and SubmitToolOutputs", async () => {
    const weather = await loom.assistants.create({
      name: "Weather",
      tools: [
        {
          type: "function",
          function: {
            name: "get_weather",
            description: "Current weather in a city.",
            parameters: { type: "object", properties: { city: { type: "string" } } },
          },
        },
      ],
    });
    const seen: string[] = [];
    const handle = (event: ReplyEvent): void => {
      seen.push(event.$case);
    };
    const asking = loom.sendMessage("What's the weather in Paris?", {
      assistantId: weather.assistantId,
    });
    for await (const event of asking) handle(event);
    const required: Reply = await asking.finalReply();
    assert.equal(required.status, "toolCallsRequired");
    assert.equal(required.toolCalls[0]?.name, "get_weather");
    assert.deepEqual(JSON.parse(required.toolCalls[0]?.arguments ?? ""), { city: "Paris" });

    const outputs = required.toolCalls.map((call) => ({
      toolCallId: call.toolCallId,
      output: JSON.stringify({ forecast: "sunny" }),
    }));
    const answering = loom.submitToolOutputs(required.threadId, required.runId, outputs);
    for await (const event of answering) handle(event);
    const done = await answering.finalReply();
    assert.equal(done.status, "completed");
    assert.match(done.content, /sunny/);
    assert.equal(seen.filter((kind) => kind === "started").length, 2);
    assert.equal(seen.at(-1), "completed");
  });

  test("onBusy: a second message waits for the running reply, or interrupts it", async () => {
    const first = await loom.sendMessage("hello").finalReply();
    const threadId = first.threadId;
    const paced = loom.sendMessage("[paced] one", { threadId })[Symbol.asyncIterator]();
    assert.equal((await paced.next()).value?.$case, "started");
    const queued = await loom.sendMessage("two", { threadId, onBusy: "enqueue" }).finalReply();
    assert.equal(queued.content, "You said: two");
    const ended = [];
    for (let next = await paced.next(); !next.done; next = await paced.next()) ended.push(next.value);
    assert.equal(ended.at(-1)?.$case, "completed");

    const stopping = loom.sendMessage("[paced] three", { threadId })[Symbol.asyncIterator]();
    assert.equal((await stopping.next()).value?.$case, "started");
    const newer = await loom
      .sendMessage("four", { threadId, onBusy: OnBusy.ON_BUSY_INTERRUPT })
      .finalReply();
    assert.equal(newer.content, "You said: four");
    let stopped: LoomError | undefined;
    try {
      while (!(await stopping.next()).done) {
        // the deltas that arrived before the interrupt
      }
    } catch (error) {
      assert.ok(error instanceof LoomError);
      stopped = error;
    }
    assert.equal(stopped?.reason, "REPLY_INTERRUPTED");
    const history = await all(loom.threads.messages(threadId));
    assert.deepEqual(
      history.slice(2).map((m) => [m.role, m.status]),
      [
        [Role.ROLE_USER, MessageStatus.MESSAGE_STATUS_COMPLETE],
        [Role.ROLE_ASSISTANT, MessageStatus.MESSAGE_STATUS_COMPLETE],
        [Role.ROLE_USER, MessageStatus.MESSAGE_STATUS_COMPLETE],
        [Role.ROLE_ASSISTANT, MessageStatus.MESSAGE_STATUS_COMPLETE],
        [Role.ROLE_USER, MessageStatus.MESSAGE_STATUS_COMPLETE],
        [Role.ROLE_ASSISTANT, MessageStatus.MESSAGE_STATUS_INCOMPLETE],
        [Role.ROLE_USER, MessageStatus.MESSAGE_STATUS_COMPLETE],
        [Role.ROLE_ASSISTANT, MessageStatus.MESSAGE_STATUS_COMPLETE],
      ],
    );
    assert.deepEqual(
      history.filter((m) => m.role === Role.ROLE_USER).map((m) => m.content),
      ["hello", "[paced] one", "two", "[paced] three", "four"],
    );
    assert.throws(() => loom.sendMessage("hi", { onBusy: "wait" as never }), /onBusy must be/);
  });

  test("a snake_case option is refused, not silently dropped", () => {
    assert.throws(
      () => loom.sendMessage("hi", { thread_id: "thread_1" } as never),
      /unknown option "thread_id" \(did you mean "threadId"\?\)/,
    );
    assert.throws(() => loom.sendMessage("hi", { memory: "always" as never }), /memory must be/);
  });

  test("errors carry the ErrorInfo reason", async () => {
    const stranger = new Loom({ address, apiKey: "not-a-key" });
    try {
      const denied = await rejection(loom.threads.get("thread_0"));
      assert.equal(denied.codeName, "INVALID_ARGUMENT");
      const unknown = await rejection(stranger.assistants.get("asst_0123456789abcdef01234567"));
      assert.equal(unknown.code, status.UNAUTHENTICATED);
      assert.equal(unknown.reason, "API_KEY_INVALID");
      assert.equal(unknown.domain, "loom.v1");
      const empty = await rejection(loom.sendMessage("").finalReply());
      assert.equal(empty.reason, "INVALID_ARGUMENT");
      assert.equal(empty.metadata.field, "content");
    } finally {
      stranger.close();
    }
  });

  test("an AbortSignal cancels the reply", async () => {
    const controller = new AbortController();
    const stream = loom.sendMessage("[slow] hello", { signal: controller.signal });
    setTimeout(() => controller.abort(), 200);
    const cancelled = await rejection(stream.finalReply());
    assert.equal(cancelled.code, status.CANCELLED);
  });

  test("a deadline ends the call with DEADLINE_EXCEEDED", async () => {
    const late = await rejection(loom.sendMessage("[slow] hello", { timeoutMs: 300 }).finalReply());
    assert.equal(late.code, status.DEADLINE_EXCEEDED);
    assert.equal(late.reason, "");
  });
});
