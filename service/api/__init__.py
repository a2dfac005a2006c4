"""gRPC transport: servicers translate protobuf to domain calls and back;
the interceptor authenticates and turns domain errors into statuses."""
