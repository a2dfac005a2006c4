// The client: one channel, the API key on every call, a deadline per call,
// `sendMessage` streaming a reply, and assistants, threads and memories as
// resources.

import { randomUUID } from "node:crypto";

import { ChannelCredentials, credentials } from "@grpc/grpc-js";

import { CALL_SETTINGS, Caller, checkOptions } from "./calls.js";
import type { CallSettings } from "./calls.js";
import { AssistantServiceClient } from "./gen/loom/v1/assistant.js";
import { MemoryServiceClient } from "./gen/loom/v1/memory.js";
import {
  CancelRunRequest,
  type Message,
  SendMessageRequest,
  SubmitToolOutputsRequest,
  ThreadServiceClient,
} from "./gen/loom/v1/thread.js";
import type { Tool } from "./gen/loom/v1/tools.js";
import { type OnBusyOption, onBusy } from "./busy.js";
import { type MemoryOption, memoryMode } from "./memory.js";
import { Assistants, type Generation, Memories, Threads } from "./resources.js";
import { ReplyStream } from "./stream.js";

export interface LoomOptions {
  /** host:port of Loom; default "127.0.0.1:50051". */
  address?: string;
  /** The tenant's key, sent as `x-api-key` metadata on every call. */
  apiKey?: string;
  /** true for TLS with the system's roots, or credentials of your own. */
  tls?: boolean | ChannelCredentials;
  /** Default deadline of every call in ms (a stream: the whole reply); 0: none. */
  timeoutMs?: number;
}

export interface SendOptions extends CallSettings {
  /** The thread to continue; without it a new thread is created. */
  threadId?: string;
  /** The assistant of a new thread (default: the tenant's default assistant). */
  assistantId?: string;
  /** The end user of a new thread. */
  userId?: string;
  memory?: MemoryOption;
  /** Model for this reply only. */
  model?: string;
  /** Idempotency key; the client makes one per call when not given. */
  requestId?: string;
  metadata?: Record<string, string>;
  /** Tools for this message only (OpenAI format), replacing the assistant's. */
  tools?: Tool[];
  /** "auto", "none", "required" or a tool's name. */
  toolChoice?: string;
  /**
   * Generation settings for this reply, over the assistant's: each field
   * given replaces the assistant's (e.g. `{ temperature: 0, responseFormat:
   * { format: { $case: "jsonObject", value: {} } } }`).
   */
  generation?: Generation;
  /** When another reply streams on the thread: "reject" (default), "enqueue" or "interrupt". */
  onBusy?: OnBusyOption;
}

const SEND_OPTIONS = [
  "threadId",
  "assistantId",
  "userId",
  "memory",
  "model",
  "requestId",
  "metadata",
  "tools",
  "toolChoice",
  "generation",
  "onBusy",
  ...CALL_SETTINGS,
] as const;

export class Loom {
  readonly assistants: Assistants;
  readonly threads: Threads;
  readonly memories: Memories;
  readonly #threadService: ThreadServiceClient;
  readonly #caller: Caller;

  constructor(options: LoomOptions = {}) {
    checkOptions("Loom", options, ["address", "apiKey", "tls", "timeoutMs"]);
    const address = options.address ?? "127.0.0.1:50051";
    const creds =
      options.tls instanceof ChannelCredentials
        ? options.tls
        : options.tls
          ? credentials.createSsl()
          : credentials.createInsecure();
    const assistantService = new AssistantServiceClient(address, creds);
    const channelOverride = assistantService.getChannel();
    this.#threadService = new ThreadServiceClient(address, creds, { channelOverride });
    const memoryService = new MemoryServiceClient(address, creds, { channelOverride });
    this.#caller = new Caller(options.apiKey, options.timeoutMs ?? 60_000);
    this.assistants = new Assistants(assistantService, this.#caller);
    this.threads = new Threads(this.#threadService, this.#caller);
    this.memories = new Memories(memoryService, this.#caller);
  }

  /**
   * Send a message and stream the reply: iterate the result for events, or
   * `await loom.sendMessage(...).finalReply()`.
   */
  sendMessage(content: string, options: SendOptions = {}): ReplyStream {
    checkOptions("sendMessage", options, SEND_OPTIONS);
    const request = SendMessageRequest.fromPartial({
      content,
      threadId: options.threadId ?? "",
      assistantId: options.assistantId ?? "",
      userId: options.userId ?? "",
      memory: memoryMode(options.memory),
      model: options.model ?? "",
      requestId: options.requestId ?? randomUUID(),
      metadata: options.metadata ?? {},
      tools: options.tools ?? [],
      toolChoice: options.toolChoice ?? "",
      generation: options.generation,
      onBusy: onBusy(options.onBusy),
    });
    const svc = this.#threadService;
    return new ReplyStream(this.#caller.stream(svc.sendMessage.bind(svc), request, options));
  }

  /** Answer every tool call of a run's round; streams the rest of the reply. */
  submitToolOutputs(
    threadId: string,
    runId: string,
    outputs: { toolCallId: string; output: string }[],
    settings?: CallSettings,
  ): ReplyStream {
    checkOptions("submitToolOutputs", settings, CALL_SETTINGS);
    const request = SubmitToolOutputsRequest.fromPartial({
      threadId,
      runId,
      toolOutputs: outputs,
    });
    const svc = this.#threadService;
    return new ReplyStream(this.#caller.stream(svc.submitToolOutputs.bind(svc), request, settings));
  }

  /** Cancel a run that waits for tool outputs; returns its message. */
  async cancelRun(threadId: string, runId: string, settings?: CallSettings): Promise<Message> {
    const svc = this.#threadService;
    const request = CancelRunRequest.fromPartial({ threadId, runId });
    const done = await this.#caller.unary(svc.cancelRun.bind(svc), request, settings);
    if (!done.message) throw new Error("CancelRun returned no message");
    return done.message;
  }

  /** Close the channel. */
  close(): void {
    this.#threadService.close();
  }
}
