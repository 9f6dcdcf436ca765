"""gRPC servicer, interceptors, errors and protobuf <-> domain converters."""
