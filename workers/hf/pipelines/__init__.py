"""HF pipelines: one module per pipeline type, found through registry.py."""
