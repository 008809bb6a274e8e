"""HuggingFace worker internals: the request handlers (service.py over handlers/), model resolution,
file-service client, generation, chat, embeddings, cancel tokens and memory measurement. Each module has
one job; workers/hf_worker.py connects service.py to the worker base.

Importing this package is light (no torch / transformers).
"""
