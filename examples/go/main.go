// Command quickstart talks to Loom from Go: a streamed reply, the same thread
// continued, and the ErrorInfo reason of a failed call. Generate the client
// first (buf.gen.yaml at the repository's root writes gen/go).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	loomv1 "loom/gen/go/loom/v1"
)

// event is what the messages of both reply streams (SendMessage and
// SubmitToolOutputs) have in common: one handler serves both.
type event interface {
	GetStarted() *loomv1.ReplyStarted
	GetDelta() *loomv1.ReplyDelta
	GetCompleted() *loomv1.ReplyCompleted
	GetToolCallsRequired() *loomv1.ToolCallsRequired
}

func main() {
	conn, err := grpc.NewClient(setting("LOOM_ADDRESS", "127.0.0.1:50051"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	threads := loomv1.NewThreadServiceClient(conn)
	// Every call carries the API key in its x-api-key metadata.
	ctx := metadata.AppendToOutgoingContext(context.Background(),
		"x-api-key", setting("LOOM_API_KEY", "dev-key"))

	threadID := send(ctx, threads, "My favorite color is blue.", "")
	send(ctx, threads, "What did I just tell you?", threadID)

	// A failed call's status carries a google.rpc.ErrorInfo: branch on its reason.
	_, err = threads.GetThread(ctx, &loomv1.GetThreadRequest{ThreadId: "thread_000000000000000000000000"})
	for _, detail := range status.Convert(err).Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok {
			fmt.Println("error:", status.Code(err), info.GetReason(), info.GetMetadata()["thread_id"])
		}
	}
}

// send streams one reply and prints its text; it returns the thread's id.
func send(ctx context.Context, threads loomv1.ThreadServiceClient, content, threadID string) string {
	// The deadline bounds the whole reply, not each event.
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	stream, err := threads.SendMessage(ctx, &loomv1.SendMessageRequest{Content: content, ThreadId: threadID})
	if err != nil {
		log.Fatal(err)
	}
	for {
		response, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return threadID
		}
		if err != nil {
			log.Fatal(err)
		}
		threadID = handle(response, threadID)
	}
}

func handle(e event, threadID string) string {
	switch {
	case e.GetStarted() != nil:
		return e.GetStarted().GetThreadId()
	case e.GetDelta() != nil:
		fmt.Print(e.GetDelta().GetText())
	case e.GetCompleted() != nil:
		fmt.Println()
	case e.GetToolCallsRequired() != nil:
		fmt.Println("tools asked for:", len(e.GetToolCallsRequired().GetToolCalls()))
	}
	return threadID
}

func setting(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}
