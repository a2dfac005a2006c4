// Loom's OpenAI-shaped HTTP door from Node, with the official `openai`
// package unchanged: a conversation, two turns in it (the second answers from
// the first), the same streamed, and the conversation's items. The
// repository's tests/test_other_languages.py starts Loom with a scripted model
// that answers "You said: <message>", and "You told me: <the user's previous
// message>" to "What did I ...", and sets LOOM_OPENAI_BASE_URL and
// LOOM_API_KEY; without them this test is skipped.

import assert from "node:assert/strict";
import { test } from "node:test";

import OpenAI from "openai";

const baseURL = process.env.LOOM_OPENAI_BASE_URL;
const model = "scripted-model";

test(
  "a conversation that remembers, through the openai package",
  { skip: baseURL ? false : "LOOM_OPENAI_BASE_URL is not set: no Loom HTTP door to call" },
  async () => {
    const client = new OpenAI({ baseURL, apiKey: process.env.LOOM_API_KEY, maxRetries: 0 });
    const conversation = await client.conversations.create({ metadata: { topic: "colors" } });
    assert.deepEqual(conversation.metadata, { topic: "colors" });

    const first = await client.responses.create({
      model,
      input: "My favorite color is blue.",
      conversation: conversation.id,
    });
    assert.equal(first.output_text, "You said: My favorite color is blue.");
    const second = await client.responses.create({
      model,
      input: "What did I just tell you?",
      conversation: conversation.id,
    });
    assert.equal(second.output_text, "You told me: My favorite color is blue.");

    const stream = await client.responses.create({
      model,
      input: "What did I say?",
      conversation: conversation.id,
      stream: true,
    });
    let text = "";
    const kinds: string[] = [];
    for await (const event of stream) {
      kinds.push(event.type);
      if (event.type === "response.output_text.delta") text += event.delta;
    }
    assert.equal(text, "You told me: What did I just tell you?");
    assert.equal(kinds[0], "response.created");
    assert.equal(kinds.at(-1), "response.completed");

    const items = await client.conversations.items.list(conversation.id, { order: "asc" });
    const roles = items.data.map((item) => (item.type === "message" ? item.role : item.type));
    assert.deepEqual(roles, ["user", "assistant", "user", "assistant", "user", "assistant"]);

    await assert.rejects(
      client.conversations.retrieve("thread_000000000000000000000000"),
      (error) => error instanceof OpenAI.NotFoundError,
    );
  },
);
