// Loom's Node client: `new Loom({ apiKey })`, then `loom.sendMessage(...)`,
// `loom.assistants`, `loom.threads`, `loom.memories`.

export { Loom } from "./client.js";
export type { LoomOptions, SendOptions } from "./client.js";
export type { CallSettings } from "./calls.js";
export { LoomError, errorInfo } from "./errors.js";
export { onBusy } from "./busy.js";
export type { OnBusyOption } from "./busy.js";
export { memoryMode } from "./memory.js";
export type { MemoryOption } from "./memory.js";
export type { AssistantFields, Generation } from "./resources.js";
export { ReplyStream } from "./stream.js";
export type { Reply, ReplyEvent } from "./stream.js";
export type { Assistant } from "./gen/loom/v1/assistant.js";
export { ContextStrategy } from "./gen/loom/v1/assistant.js";
export { MemoryMode } from "./gen/loom/v1/common.js";
export type { GenerationSettings, ResponseFormat } from "./gen/loom/v1/generation.js";
export { ReasoningEffort } from "./gen/loom/v1/generation.js";
export type { Memory, MemoryOperation, ScoredMemory } from "./gen/loom/v1/memory.js";
export { MemoryOperation_State } from "./gen/loom/v1/memory.js";
export type { Message, RecalledMemory, Thread } from "./gen/loom/v1/thread.js";
export { MessageStatus, OnBusy, Role } from "./gen/loom/v1/thread.js";
export type { Tool, ToolCall } from "./gen/loom/v1/tools.js";
