"""Peers: other servers answering the same RPCs with the same models, measured beside ours in one run.

`single_process` is the design the service's process split is judged against: one grpc.aio process that
calls the worker handler code from thread pools. `launch.start_peer()` starts it for a benchmark or test.
"""
