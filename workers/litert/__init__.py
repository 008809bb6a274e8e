"""LiteRT (.tflite) serving for the litert worker pool.

One module per job:
- common/litert_catalogue.py (shared with the facade): built-in aliases, the .tflite files that ship
                 inside installed wheels (mediapipe, and pymicro-wakeword when present), by file stem,
                 e.g. ``face_detection_short_range``.
- loader.py      turns a LoadModel request into model bytes: uploaded bytes, local path, alias,
                 model folder, or the orchestrator's GetModelFile stream (file_client.py).
- interpreter.py one ai_edge_litert Interpreter per model behind a lock: XNNPACK threads / off switch,
                 GPU delegate attempt with CPU fallback, signatures, resource-variable state reset.
- tensors.py     KServe v2 datatypes <-> numpy, raw and typed contents, input validation, quantisation.
- errors.py      LiteRT exceptions -> WorkerError with a precise gRPC status and an actionable message.
- service.py     the request handlers (KServe ModelInfer/ModelMetadata/ModelReady, ml LoadModel/UnloadModel),
                 independent of the worker process plumbing so they can be tested in-process.
"""
