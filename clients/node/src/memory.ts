// Memory modes as the client accepts them: strings or the generated enum.

import { MemoryMode } from "./gen/loom/v1/common.js";

/** "auto" recalls and writes, "readonly" recalls, "off" does neither. */
export type MemoryOption = "auto" | "readonly" | "off" | MemoryMode;

const MEMORY_MODES: Record<string, MemoryMode> = {
  auto: MemoryMode.MEMORY_MODE_AUTO,
  readonly: MemoryMode.MEMORY_MODE_READONLY,
  off: MemoryMode.MEMORY_MODE_OFF,
};

/** A memory option as the enum (undefined: the assistant's default). */
export function memoryMode(value: MemoryOption | undefined): MemoryMode {
  if (value === undefined) return MemoryMode.MEMORY_MODE_UNSPECIFIED;
  if (typeof value === "number") return value;
  const mode = MEMORY_MODES[value];
  if (mode === undefined) {
    throw new TypeError(`memory must be "auto", "readonly" or "off", not ${JSON.stringify(value)}`);
  }
  return mode;
}

