// What a message does on a busy thread, as the client accepts it: strings
// or the generated enum.

import { OnBusy } from "./gen/loom/v1/thread.js";

/**
 * "reject" refuses it (THREAD_BUSY, the default), "enqueue" waits for the
 * running reply (bounded by the call's deadline), "interrupt" stops the
 * running reply (stored INCOMPLETE; its stream ends REPLY_INTERRUPTED).
 */
export type OnBusyOption = "reject" | "enqueue" | "interrupt" | OnBusy;

const ON_BUSY: Record<string, OnBusy> = {
  reject: OnBusy.ON_BUSY_REJECT,
  enqueue: OnBusy.ON_BUSY_ENQUEUE,
  interrupt: OnBusy.ON_BUSY_INTERRUPT,
};

/** An onBusy option as the enum (undefined: the server's default, reject). */
export function onBusy(value: OnBusyOption | undefined): OnBusy {
  if (value === undefined) return OnBusy.ON_BUSY_UNSPECIFIED;
  if (typeof value === "number") return value;
  const mode = ON_BUSY[value];
  if (mode === undefined) {
    throw new TypeError(
      `onBusy must be "reject", "enqueue" or "interrupt", not ${JSON.stringify(value)}`,
    );
  }
  return mode;
}
