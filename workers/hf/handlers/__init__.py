"""The hf pool's handler groups, one module each, mixed into workers/hf/service.py's HFService:
models (LoadModel / UnloadModel and the loaded-model lookup), text (GenerateText, ChatCompletion),
embeddings (GenerateEmbeddings), speech (Transcribe, StreamTranscribe), pipelines (Run, RunStream)."""
