// Assistants, threads and memories: each a few methods over its service,
// with lists as lazy async iterables over every page.

import { CALL_SETTINGS, Caller, checkOptions, pages } from "./calls.js";
import type { CallSettings } from "./calls.js";
import {
  type Assistant,
  type AssistantServiceClient,
  ContextStrategy,
  CreateAssistantRequest,
  DeleteAssistantRequest,
  GetAssistantRequest,
  ListAssistantsRequest,
  UpdateAssistantRequest,
} from "./gen/loom/v1/assistant.js";
import type { GenerationSettings } from "./gen/loom/v1/generation.js";
import {
  CreateMemoryRequest,
  DeleteMemoryRequest,
  GetMemoryOperationRequest,
  GetMemoryRequest,
  ListMemoriesRequest,
  type Memory,
  MemoryOperation_State,
  type MemoryOperation,
  type MemoryServiceClient,
  type ScoredMemory,
  SearchMemoriesRequest,
  UpdateMemoryRequest,
} from "./gen/loom/v1/memory.js";
import {
  CreateThreadRequest,
  DeleteThreadRequest,
  GetThreadRequest,
  ListMessagesRequest,
  ListThreadsRequest,
  type Message,
  type Thread,
  type ThreadServiceClient,
} from "./gen/loom/v1/thread.js";
import type { Tool } from "./gen/loom/v1/tools.js";
import { type MemoryOption, memoryMode } from "./memory.js";

/** Generation settings: only the fields given are set (see GenerationSettings). */
export type Generation = Partial<GenerationSettings>;

/** The fields of an assistant a caller sets. */
export interface AssistantFields {
  name?: string;
  instructions?: string;
  model?: string;
  memoryMode?: MemoryOption;
  metadata?: Record<string, string>;
  contextWindow?: number;
  contextStrategy?: ContextStrategy;
  tools?: Tool[];
  memoryFromToolOutputs?: boolean;
  /** Default generation settings of its replies. */
  generation?: Generation;
}

const ASSISTANT_FIELDS = [
  "name",
  "instructions",
  "model",
  "memoryMode",
  "metadata",
  "contextWindow",
  "contextStrategy",
  "tools",
  "memoryFromToolOutputs",
  "generation",
] as const;

/** camelCase option names as the proto's field paths (update masks). */
function fieldPaths(fields: object): string[] {
  return Object.keys(fields).map((k) => k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`));
}

function assistantOf(
  fields: AssistantFields,
  assistantId = "",
): Omit<Partial<Assistant>, "generation"> & Pick<AssistantFields, "generation"> {
  checkOptions("assistant", fields, ASSISTANT_FIELDS);
  const { memoryMode: mode, ...rest } = fields;
  return { ...rest, assistantId, ...(mode === undefined ? {} : { memoryMode: memoryMode(mode) }) };
}

function present<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`Loom's answer has no ${what}`);
  return value;
}

export class Assistants {
  constructor(
    private readonly svc: AssistantServiceClient,
    private readonly caller: Caller,
  ) {}

  async create(fields: AssistantFields, settings?: CallSettings): Promise<Assistant> {
    const request = CreateAssistantRequest.fromPartial({ assistant: assistantOf(fields) });
    const done = await this.caller.unary(this.svc.createAssistant.bind(this.svc), request, settings);
    return present(done.assistant, "assistant");
  }

  async get(assistantId: string, settings?: CallSettings): Promise<Assistant> {
    const request = GetAssistantRequest.fromPartial({ assistantId });
    const done = await this.caller.unary(this.svc.getAssistant.bind(this.svc), request, settings);
    return present(done.assistant, "assistant");
  }

  list(options: { pageSize?: number } & CallSettings = {}): AsyncIterable<Assistant> {
    checkOptions("assistants.list", options, ["pageSize", ...CALL_SETTINGS]);
    const list = this.svc.listAssistants.bind(this.svc);
    return pages(async (pageToken) => {
      const request = ListAssistantsRequest.fromPartial({ pageSize: options.pageSize, pageToken });
      const page = await this.caller.unary(list, request, options);
      return { items: page.assistants, nextPageToken: page.nextPageToken };
    });
  }

  /** Change the given fields only (they make the update mask). */
  async update(
    assistantId: string,
    fields: AssistantFields,
    settings?: CallSettings,
  ): Promise<Assistant> {
    const request = UpdateAssistantRequest.fromPartial({
      assistant: assistantOf(fields, assistantId),
      updateMask: fieldPaths(fields),
    });
    const done = await this.caller.unary(this.svc.updateAssistant.bind(this.svc), request, settings);
    return present(done.assistant, "assistant");
  }

  /** Delete an assistant with its threads; returns how many threads went. */
  async delete(assistantId: string, settings?: CallSettings): Promise<number> {
    const request = DeleteAssistantRequest.fromPartial({ assistantId });
    const done = await this.caller.unary(this.svc.deleteAssistant.bind(this.svc), request, settings);
    return done.deletedThreadCount;
  }
}

export class Threads {
  constructor(
    private readonly svc: ThreadServiceClient,
    private readonly caller: Caller,
  ) {}

  async create(
    options: { assistantId?: string; userId?: string; metadata?: Record<string, string> } = {},
    settings?: CallSettings,
  ): Promise<Thread> {
    checkOptions("threads.create", options, ["assistantId", "userId", "metadata"]);
    const request = CreateThreadRequest.fromPartial({ thread: options });
    const done = await this.caller.unary(this.svc.createThread.bind(this.svc), request, settings);
    return present(done.thread, "thread");
  }

  async get(threadId: string, settings?: CallSettings): Promise<Thread> {
    const request = GetThreadRequest.fromPartial({ threadId });
    const done = await this.caller.unary(this.svc.getThread.bind(this.svc), request, settings);
    return present(done.thread, "thread");
  }

  /** Threads, newest first, optionally one assistant's or one user's. */
  list(
    options: { assistantId?: string; userId?: string; pageSize?: number } & CallSettings = {},
  ): AsyncIterable<Thread> {
    checkOptions("threads.list", options, ["assistantId", "userId", "pageSize", ...CALL_SETTINGS]);
    const { assistantId, userId, pageSize } = options;
    const list = this.svc.listThreads.bind(this.svc);
    return pages(async (pageToken) => {
      const request = ListThreadsRequest.fromPartial({ assistantId, userId, pageSize, pageToken });
      const page = await this.caller.unary(list, request, options);
      return { items: page.threads, nextPageToken: page.nextPageToken };
    });
  }

  /** Delete a thread (and, with deleteMemories, what was learnt in it). */
  async delete(
    threadId: string,
    options: { deleteMemories?: boolean } & CallSettings = {},
  ): Promise<number> {
    checkOptions("threads.delete", options, ["deleteMemories", ...CALL_SETTINGS]);
    const request = DeleteThreadRequest.fromPartial({
      threadId,
      deleteMemories: options.deleteMemories ?? false,
    });
    const done = await this.caller.unary(this.svc.deleteThread.bind(this.svc), request, options);
    return done.deletedMessageCount;
  }

  /** A thread's messages, oldest first (or newest first with order "desc"). */
  messages(
    threadId: string,
    options: { order?: "asc" | "desc"; pageSize?: number } & CallSettings = {},
  ): AsyncIterable<Message> {
    checkOptions("threads.messages", options, ["order", "pageSize", ...CALL_SETTINGS]);
    const orderBy = options.order === "desc" ? "sequence desc" : "";
    const list = this.svc.listMessages.bind(this.svc);
    return pages(async (pageToken) => {
      const request = ListMessagesRequest.fromPartial({
        threadId,
        orderBy,
        pageSize: options.pageSize,
        pageToken,
      });
      const page = await this.caller.unary(list, request, options);
      return { items: page.messages, nextPageToken: page.nextPageToken };
    });
  }
}

export class Memories {
  constructor(
    private readonly svc: MemoryServiceClient,
    private readonly caller: Caller,
  ) {}

  /** Remember a fact; without userId it is assistant-wide. */
  async create(
    fields: { assistantId: string; content: string; userId?: string; metadata?: Record<string, string> },
    settings?: CallSettings,
  ): Promise<Memory> {
    checkOptions("memories.create", fields, ["assistantId", "content", "userId", "metadata"]);
    const request = CreateMemoryRequest.fromPartial({ memory: fields });
    const done = await this.caller.unary(this.svc.createMemory.bind(this.svc), request, settings);
    return present(done.memory, "memory");
  }

  async get(assistantId: string, memoryId: string, settings?: CallSettings): Promise<Memory> {
    const request = GetMemoryRequest.fromPartial({ assistantId, memoryId });
    const done = await this.caller.unary(this.svc.getMemory.bind(this.svc), request, settings);
    return present(done.memory, "memory");
  }

  list(
    assistantId: string,
    options: { userId?: string; assistantWideOnly?: boolean; pageSize?: number } & CallSettings = {},
  ): AsyncIterable<Memory> {
    checkOptions("memories.list", options, [
      "userId",
      "assistantWideOnly",
      "pageSize",
      ...CALL_SETTINGS,
    ]);
    const { userId, assistantWideOnly, pageSize } = options;
    const list = this.svc.listMemories.bind(this.svc);
    return pages(async (pageToken) => {
      const request = ListMemoriesRequest.fromPartial({
        assistantId,
        userId,
        assistantWideOnly,
        pageSize,
        pageToken,
      });
      const page = await this.caller.unary(list, request, options);
      return { items: page.memories, nextPageToken: page.nextPageToken };
    });
  }

  /** The memories most relevant to `query`, best first. */
  async search(
    assistantId: string,
    query: string,
    options: { userId?: string; limit?: number; minScore?: number } & CallSettings = {},
  ): Promise<ScoredMemory[]> {
    checkOptions("memories.search", options, ["userId", "limit", "minScore", ...CALL_SETTINGS]);
    const { userId, limit, minScore } = options;
    const request = SearchMemoriesRequest.fromPartial({ assistantId, query, userId, limit, minScore });
    const done = await this.caller.unary(this.svc.searchMemories.bind(this.svc), request, options);
    return done.results;
  }

  /** Change a memory's content and/or metadata (the given fields only). */
  async update(
    assistantId: string,
    memoryId: string,
    fields: { content?: string; metadata?: Record<string, string> },
    settings?: CallSettings,
  ): Promise<Memory> {
    checkOptions("memories.update", fields, ["content", "metadata"]);
    const request = UpdateMemoryRequest.fromPartial({
      memory: { ...fields, assistantId, memoryId },
      updateMask: fieldPaths(fields),
    });
    const done = await this.caller.unary(this.svc.updateMemory.bind(this.svc), request, settings);
    return present(done.memory, "memory");
  }

  async delete(assistantId: string, memoryId: string, settings?: CallSettings): Promise<void> {
    const request = DeleteMemoryRequest.fromPartial({ assistantId, memoryId });
    await this.caller.unary(this.svc.deleteMemory.bind(this.svc), request, settings);
  }

  async operation(operationId: string, settings?: CallSettings): Promise<MemoryOperation> {
    const request = GetMemoryOperationRequest.fromPartial({ operationId });
    const done = await this.caller.unary(this.svc.getMemoryOperation.bind(this.svc), request, settings);
    return present(done.operation, "operation");
  }

  /** Poll a memory operation until it has succeeded or failed. */
  async wait(
    operationId: string,
    options: { timeoutMs?: number; intervalMs?: number } = {},
  ): Promise<MemoryOperation> {
    checkOptions("memories.wait", options, ["timeoutMs", "intervalMs"]);
    const deadline = Date.now() + (options.timeoutMs ?? 60_000);
    for (;;) {
      const op = await this.operation(operationId);
      if (
        op.state === MemoryOperation_State.STATE_SUCCEEDED ||
        op.state === MemoryOperation_State.STATE_FAILED
      ) {
        return op;
      }
      if (Date.now() > deadline) {
        throw new Error(`memory operation ${operationId} has not finished in time`);
      }
      await new Promise((resolve) => setTimeout(resolve, options.intervalMs ?? 100));
    }
  }
}
