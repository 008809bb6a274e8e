"""The broker: wire protocol, routing/flow control (router.py), process supervision, metrics."""
