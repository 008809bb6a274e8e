"""KServe v2 / Open Inference Protocol (inference.GRPCInferenceService), generated from grpc_service.proto."""
