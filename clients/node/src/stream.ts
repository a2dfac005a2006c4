// A reply as it streams: an async iterable of events that also gathers the
// final reply (SendMessage and SubmitToolOutputs alike).

import type { ClientReadableStream } from "@grpc/grpc-js";

import { toLoomError } from "./errors.js";
import type { Usage } from "./gen/loom/v1/common.js";
import type { Message, RecalledMemory, SendMessageResponse } from "./gen/loom/v1/thread.js";
import type { ToolCall } from "./gen/loom/v1/tools.js";

/**
 * One event of a reply: `{ $case: "started" | "memory" | "delta" |
 * "completed" | "toolCallsRequired", value }`. Both streams use these types,
 * so one `switch (event.$case)` handles either.
 */
export type ReplyEvent = NonNullable<SendMessageResponse["event"]>;

/** A finished reply, gathered from its events. */
export interface Reply {
  threadId: string;
  threadCreated: boolean;
  assistantId: string;
  model: string;
  userMessageId: string;
  /** The assistant message the reply is stored as. */
  messageId: string;
  /** The reply's text. */
  content: string;
  /** "completed", or "toolCallsRequired": answer with submitToolOutputs. */
  status: "completed" | "toolCallsRequired";
  /** The stored message (after `completed`). */
  message: Message | undefined;
  usage: Usage | undefined;
  /** The memories recalled for the reply. */
  memories: RecalledMemory[];
  /** With "toolCallsRequired": the run to continue and the calls to answer. */
  runId: string;
  toolCalls: ToolCall[];
  /** With memory "auto": the background write (see memories.wait). */
  memoryOperationId: string;
}

function emptyReply(): Reply {
  return {
    threadId: "",
    threadCreated: false,
    assistantId: "",
    model: "",
    userMessageId: "",
    messageId: "",
    content: "",
    status: "completed",
    message: undefined,
    usage: undefined,
    memories: [],
    runId: "",
    toolCalls: [],
    memoryOperationId: "",
  };
}

function gather(reply: Reply, event: ReplyEvent): void {
  switch (event.$case) {
    case "started":
      Object.assign(reply, {
        threadId: event.value.threadId,
        threadCreated: event.value.threadCreated,
        assistantId: event.value.assistantId,
        model: event.value.model,
        userMessageId: event.value.userMessageId,
        messageId: event.value.assistantMessageId,
      });
      break;
    case "memory":
      reply.memories.push(...event.value.memories);
      break;
    case "delta":
      reply.content += event.value.text;
      break;
    case "completed":
      reply.status = "completed";
      reply.message = event.value.message;
      reply.content = event.value.message?.content ?? reply.content;
      reply.usage = event.value.message?.usage;
      reply.memoryOperationId = event.value.memoryOperationId;
      break;
    case "toolCallsRequired":
      reply.status = "toolCallsRequired";
      reply.runId = event.value.runId;
      reply.toolCalls = event.value.toolCalls;
      break;
    default: {
      const unknown: never = event;
      void unknown; // a kind this client was not built with: skipped
    }
  }
}

/**
 * Iterate it for events as they arrive, or await `finalReply()` for the
 * whole reply (it reads whatever has not been read). Readable once; leaving
 * the loop early cancels the call (Loom stores the reply INCOMPLETE).
 */
export class ReplyStream implements AsyncIterable<ReplyEvent> {
  readonly #call: ClientReadableStream<{ event?: ReplyEvent | undefined }>;
  readonly #reply = emptyReply();
  #read = false;
  #done = false;

  constructor(call: ClientReadableStream<{ event?: ReplyEvent | undefined }>) {
    this.#call = call;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<ReplyEvent, void, undefined> {
    if (this.#read) throw new Error("a reply stream can be read only once");
    this.#read = true;
    try {
      for await (const response of this.#call) {
        const event = (response as { event?: ReplyEvent }).event;
        if (event === undefined) continue; // an event kind newer than this client
        gather(this.#reply, event);
        yield event;
      }
      this.#done = true;
    } catch (error) {
      throw toLoomError(error);
    } finally {
      if (!this.#done) this.#call.cancel();
    }
  }

  /** The reply, once the stream has ended. */
  async finalReply(): Promise<Reply> {
    if (!this.#read) {
      for await (const _ of this) {
        // gathering
      }
    }
    if (!this.#done) throw new Error("the reply stream was left before it ended");
    return this.#reply;
  }
}
