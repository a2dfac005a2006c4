// Errors from Loom as one class, with the google.rpc.ErrorInfo reason and
// metadata decoded from the `grpc-status-details-bin` trailer.

import { Metadata, status as Status } from "@grpc/grpc-js";
import type { ServiceError } from "@grpc/grpc-js";

import { ErrorInfo } from "./gen/google/rpc/error_details.js";
import { Status as RpcStatus } from "./gen/google/rpc/status.js";

const ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo";

/**
 * A failed call. `reason` is Loom's machine-readable reason (THREAD_BUSY,
 * THREAD_NOT_FOUND, ...: the README lists them all); branch on it, not on
 * `message`. Statuses that gRPC produces itself (DEADLINE_EXCEEDED,
 * CANCELLED, UNAVAILABLE when Loom cannot be reached) have an empty reason.
 */
export class LoomError extends Error {
  override readonly name = "LoomError";

  constructor(
    /** The gRPC status code (`status.NOT_FOUND`, ...). */
    readonly code: Status,
    /** What went wrong and what to do, as Loom wrote it. */
    readonly details: string,
    /** ErrorInfo.reason, e.g. "THREAD_BUSY"; empty without ErrorInfo. */
    readonly reason: string,
    /** ErrorInfo.metadata: the ids involved, e.g. { thread_id: "thread_..." }. */
    readonly metadata: Record<string, string>,
    /** ErrorInfo.domain: "loom.v1" for Loom's errors. */
    readonly domain: string,
  ) {
    super(`${Status[code] ?? code}${reason ? ` (${reason})` : ""}: ${details}`);
  }

  /** The status code's name, e.g. "NOT_FOUND". */
  get codeName(): string {
    return Status[this.code] ?? String(this.code);
  }
}

function isServiceError(error: unknown): error is ServiceError {
  return error instanceof Error && typeof (error as ServiceError).code === "number";
}

/** The ErrorInfo carried by a call's trailers, if any. */
export function errorInfo(trailers: Metadata | undefined): ErrorInfo | undefined {
  const raw = trailers?.get("grpc-status-details-bin")[0];
  if (!(raw instanceof Buffer)) return undefined;
  const status = RpcStatus.decode(raw);
  const detail = status.details.find((any) => any.typeUrl === ERROR_INFO);
  return detail ? ErrorInfo.decode(detail.value) : undefined;
}

/** `error` as a LoomError when it is a gRPC error; anything else unchanged. */
export function toLoomError(error: unknown): unknown {
  if (error instanceof LoomError || !isServiceError(error)) return error;
  const info = errorInfo(error.metadata);
  return new LoomError(
    error.code,
    error.details,
    info?.reason ?? "",
    info?.metadata ?? {},
    info?.domain ?? "",
  );
}
