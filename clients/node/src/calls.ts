// One place for what every call carries: the API key, a deadline, an
// AbortSignal; unary calls as promises, option objects checked by name.

import { Metadata } from "@grpc/grpc-js";
import type {
  CallOptions,
  ClientReadableStream,
  ClientUnaryCall,
  ServiceError,
} from "@grpc/grpc-js";

import { toLoomError } from "./errors.js";

/** Per-call options, accepted by every method as its last argument. */
export interface CallSettings {
  /** Milliseconds the whole call may take (a stream: the whole reply). */
  timeoutMs?: number;
  /** Cancels the call; a cancelled reply is stored INCOMPLETE by Loom. */
  signal?: AbortSignal;
}

export const CALL_SETTINGS = ["timeoutMs", "signal"] as const;

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

type StreamMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
) => ClientReadableStream<Res>;

/**
 * Refuses option names the method does not know, so that a snake_case name
 * (`thread_id`, as in the proto and grpcurl examples) fails loudly instead
 * of being dropped: a dropped thread id silently starts a new thread.
 */
export function checkOptions(
  method: string,
  given: object | undefined,
  allowed: readonly string[],
): void {
  for (const key of Object.keys(given ?? {})) {
    if (!allowed.includes(key)) {
      const camel = key.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
      const hint = allowed.includes(camel) ? ` (did you mean "${camel}"?)` : "";
      throw new TypeError(`${method}: unknown option "${key}"${hint}`);
    }
  }
}

/** Calls with one API key and one default deadline. */
export class Caller {
  readonly #metadata = new Metadata();

  constructor(
    apiKey: string | undefined,
    private readonly defaultTimeoutMs: number,
  ) {
    if (apiKey) this.#metadata.set("x-api-key", apiKey);
  }

  #options(settings: CallSettings | undefined): Partial<CallOptions> {
    const timeout = settings?.timeoutMs ?? this.defaultTimeoutMs;
    return timeout > 0 ? { deadline: new Date(Date.now() + timeout) } : {};
  }

  /** A unary call as a promise; failures are LoomErrors. */
  unary<Req, Res>(
    method: UnaryMethod<Req, Res>,
    request: Req,
    settings?: CallSettings,
  ): Promise<Res> {
    const signal = settings?.signal;
    return new Promise<Res>((resolve, reject) => {
      const cancel = (): void => call.cancel();
      const call = method(request, this.#metadata, this.#options(settings), (error, response) => {
        signal?.removeEventListener("abort", cancel);
        if (error) reject(toLoomError(error));
        else resolve(response);
      });
      signal?.addEventListener("abort", cancel, { once: true });
    });
  }

  /** A server stream, cancelled when `settings.signal` aborts. */
  stream<Req, Res>(
    method: StreamMethod<Req, Res>,
    request: Req,
    settings?: CallSettings,
  ): ClientReadableStream<Res> {
    const call = method(request, this.#metadata, this.#options(settings));
    const signal = settings?.signal;
    if (signal) {
      const cancel = (): void => call.cancel();
      signal.addEventListener("abort", cancel, { once: true });
      call.on("close", () => signal.removeEventListener("abort", cancel));
    }
    return call;
  }
}

/** Every item of a paginated list, one page at a time, lazily. */
export async function* pages<T>(
  fetch: (pageToken: string) => Promise<{ items: T[]; nextPageToken: string }>,
): AsyncGenerator<T, void, undefined> {
  let token = "";
  do {
    const page = await fetch(token);
    yield* page.items;
    token = page.nextPageToken;
  } while (token);
}
