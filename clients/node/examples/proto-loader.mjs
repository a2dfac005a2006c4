// Loom from Node with @grpc/grpc-js and @grpc/proto-loader, no generated
// code: a streamed reply, the same thread continued, a failed call's ErrorInfo.
import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { getProtoPath } from "google-proto-files";
import protobuf from "protobufjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const googleProtos = getProtoPath(".."); // google/rpc/*.proto, for error details
// keepCase keeps the proto's field names (thread_id, as in the README): with
// proto-loader's default (camelCase) a thread_id you send is silently
// dropped, and every message starts a new thread.
const definition = protoLoader.loadSync("loom/v1/thread.proto", {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [path.join(here, "../../../proto"), googleProtos],
});
const { ThreadService } = grpc.loadPackageDefinition(definition).loom.v1;
const threads = new ThreadService(
  process.env.LOOM_ADDRESS ?? "127.0.0.1:50051",
  grpc.credentials.createInsecure(),
);
const metadata = new grpc.Metadata();
metadata.set("x-api-key", process.env.LOOM_API_KEY ?? "dev-key"); // on every call

async function send(content, thread_id = "") {
  // The deadline bounds the whole reply, not each event.
  const call = threads.SendMessage({ content, thread_id }, metadata, {
    deadline: Date.now() + 60_000,
  });
  for await (const response of call) {
    // With oneofs: true, `event` names the kind that is set.
    if (response.event === "started") thread_id = response.started.thread_id;
    if (response.event === "delta") process.stdout.write(response.delta.text);
  }
  process.stdout.write("\n");
  return thread_id;
}

const thread_id = await send("My favorite color is blue.");
await send("What did I just tell you?", thread_id);

// A failed call's grpc-status-details-bin trailer is a google.rpc.Status
// whose details hold an ErrorInfo: branch on its reason.
const rpc = new protobuf.Root();
rpc.resolvePath = (_origin, target) => path.join(googleProtos, target);
rpc.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
threads.GetThread({ thread_id: "thread_000000000000000000000000" }, metadata, (error) => {
  const [details] = error.metadata.get("grpc-status-details-bin");
  for (const any of rpc.lookupType("google.rpc.Status").decode(details).details) {
    if (any.type_url === "type.googleapis.com/google.rpc.ErrorInfo") {
      const info = rpc.lookupType("google.rpc.ErrorInfo").decode(any.value);
      console.log("error:", grpc.status[error.code], info.reason, info.metadata.thread_id);
    }
  }
  threads.close();
});
