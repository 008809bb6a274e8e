"""HuggingFace worker internals: model resolution, file-service client, generation, chat,
embeddings and memory measurement. Each module has one job; workers/hf_worker.py wires them.

Importing this package is light (no torch / transformers): the facade uses `resolve` to serve
model files without pulling the ML stack.
"""
