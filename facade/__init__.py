"""The gRPC facade process: servicers, pass-through routing to pools, health, auth."""
