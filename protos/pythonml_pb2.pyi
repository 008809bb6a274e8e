from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("workers", "pools", "uptime_s", "malformed_frames", "shm_slots_total", "shm_slots_free", "dropped_stream_frames", "worker_crashes", "worker_hangs", "shm_inline_fallbacks")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    MALFORMED_FRAMES_FIELD_NUMBER: _ClassVar[int]
    SHM_SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SHM_SLOTS_FREE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_STREAM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    WORKER_CRASHES_FIELD_NUMBER: _ClassVar[int]
    WORKER_HANGS_FIELD_NUMBER: _ClassVar[int]
    SHM_INLINE_FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStats]
    pools: _containers.RepeatedCompositeFieldContainer[PoolStats]
    uptime_s: float
    malformed_frames: int
    shm_slots_total: int
    shm_slots_free: int
    dropped_stream_frames: int
    worker_crashes: int
    worker_hangs: int
    shm_inline_fallbacks: int
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerStats, _Mapping]]] = ..., pools: _Optional[_Iterable[_Union[PoolStats, _Mapping]]] = ..., uptime_s: _Optional[float] = ..., malformed_frames: _Optional[int] = ..., shm_slots_total: _Optional[int] = ..., shm_slots_free: _Optional[int] = ..., dropped_stream_frames: _Optional[int] = ..., worker_crashes: _Optional[int] = ..., worker_hangs: _Optional[int] = ..., shm_inline_fallbacks: _Optional[int] = ...) -> None: ...

class PoolStats(_message.Message):
    __slots__ = ("pool", "device", "live_workers", "queue_depth", "queue_limit", "rejected", "expired")
    POOL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LIVE_WORKERS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    pool: str
    device: str
    live_workers: int
    queue_depth: int
    queue_limit: int
    rejected: int
    expired: int
    def __init__(self, pool: _Optional[str] = ..., device: _Optional[str] = ..., live_workers: _Optional[int] = ..., queue_depth: _Optional[int] = ..., queue_limit: _Optional[int] = ..., rejected: _Optional[int] = ..., expired: _Optional[int] = ...) -> None: ...

class WorkerStats(_message.Message):
    __slots__ = ("pid", "pool", "device", "state", "rss_mb", "uss_mb", "pss_mb", "cuda_allocated_mb", "cuda_reserved_mb", "inflight", "queue_depth", "restarts", "uptime_s", "models", "capacity", "requests_served", "worker_id", "cpus", "nice", "threads", "placement", "node", "node_ip", "sched")
    PID_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RSS_MB_FIELD_NUMBER: _ClassVar[int]
    USS_MB_FIELD_NUMBER: _ClassVar[int]
    PSS_MB_FIELD_NUMBER: _ClassVar[int]
    CUDA_ALLOCATED_MB_FIELD_NUMBER: _ClassVar[int]
    CUDA_RESERVED_MB_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_SERVED_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    NICE_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    NODE_IP_FIELD_NUMBER: _ClassVar[int]
    SCHED_FIELD_NUMBER: _ClassVar[int]
    pid: int
    pool: str
    device: str
    state: str
    rss_mb: float
    uss_mb: float
    pss_mb: float
    cuda_allocated_mb: float
    cuda_reserved_mb: float
    inflight: int
    queue_depth: int
    restarts: int
    uptime_s: float
    models: _containers.RepeatedCompositeFieldContainer[ModelStats]
    capacity: int
    requests_served: int
    worker_id: str
    cpus: str
    nice: int
    threads: int
    placement: str
    node: str
    node_ip: str
    sched: str
    def __init__(self, pid: _Optional[int] = ..., pool: _Optional[str] = ..., device: _Optional[str] = ..., state: _Optional[str] = ..., rss_mb: _Optional[float] = ..., uss_mb: _Optional[float] = ..., pss_mb: _Optional[float] = ..., cuda_allocated_mb: _Optional[float] = ..., cuda_reserved_mb: _Optional[float] = ..., inflight: _Optional[int] = ..., queue_depth: _Optional[int] = ..., restarts: _Optional[int] = ..., uptime_s: _Optional[float] = ..., models: _Optional[_Iterable[_Union[ModelStats, _Mapping]]] = ..., capacity: _Optional[int] = ..., requests_served: _Optional[int] = ..., worker_id: _Optional[str] = ..., cpus: _Optional[str] = ..., nice: _Optional[int] = ..., threads: _Optional[int] = ..., placement: _Optional[str] = ..., node: _Optional[str] = ..., node_ip: _Optional[str] = ..., sched: _Optional[str] = ...) -> None: ...

class ModelStats(_message.Message):
    __slots__ = ("model_id", "pipeline_type", "ram_mb", "vram_mb", "loaded_at")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RAM_MB_FIELD_NUMBER: _ClassVar[int]
    VRAM_MB_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    pipeline_type: str
    ram_mb: float
    vram_mb: float
    loaded_at: int
    def __init__(self, model_id: _Optional[str] = ..., pipeline_type: _Optional[str] = ..., ram_mb: _Optional[float] = ..., vram_mb: _Optional[float] = ..., loaded_at: _Optional[int] = ...) -> None: ...

class EchoRequest(_message.Message):
    __slots__ = ("pool", "device", "action", "payload", "sleep_ms", "parts", "model", "grow_mb")
    POOL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SLEEP_MS_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GROW_MB_FIELD_NUMBER: _ClassVar[int]
    pool: str
    device: str
    action: str
    payload: bytes
    sleep_ms: int
    parts: int
    model: str
    grow_mb: int
    def __init__(self, pool: _Optional[str] = ..., device: _Optional[str] = ..., action: _Optional[str] = ..., payload: _Optional[bytes] = ..., sleep_ms: _Optional[int] = ..., parts: _Optional[int] = ..., model: _Optional[str] = ..., grow_mb: _Optional[int] = ...) -> None: ...

class EchoReply(_message.Message):
    __slots__ = ("payload", "part", "pid", "worker_id", "sha256")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    part: int
    pid: int
    worker_id: str
    sha256: str
    def __init__(self, payload: _Optional[bytes] = ..., part: _Optional[int] = ..., pid: _Optional[int] = ..., worker_id: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class TranscribeRequest(_message.Message):
    __slots__ = ("model", "audio", "encoding", "sample_rate", "channels", "language", "task", "beam_size", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    BEAM_SIZE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    audio: bytes
    encoding: str
    sample_rate: int
    channels: int
    language: str
    task: str
    beam_size: int
    options: _containers.ScalarMap[str, str]
    def __init__(self, model: _Optional[str] = ..., audio: _Optional[bytes] = ..., encoding: _Optional[str] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ..., language: _Optional[str] = ..., task: _Optional[str] = ..., beam_size: _Optional[int] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TranscriptSegment(_message.Message):
    __slots__ = ("start_s", "end_s", "text", "avg_logprob", "no_speech_prob")
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AVG_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    NO_SPEECH_PROB_FIELD_NUMBER: _ClassVar[int]
    start_s: float
    end_s: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    def __init__(self, start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., text: _Optional[str] = ..., avg_logprob: _Optional[float] = ..., no_speech_prob: _Optional[float] = ...) -> None: ...

class TranscribeResponse(_message.Message):
    __slots__ = ("text", "segments", "language", "language_probability", "duration_s", "processing_s", "model", "backend")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    text: str
    segments: _containers.RepeatedCompositeFieldContainer[TranscriptSegment]
    language: str
    language_probability: float
    duration_s: float
    processing_s: float
    model: str
    backend: str
    def __init__(self, text: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[TranscriptSegment, _Mapping]]] = ..., language: _Optional[str] = ..., language_probability: _Optional[float] = ..., duration_s: _Optional[float] = ..., processing_s: _Optional[float] = ..., model: _Optional[str] = ..., backend: _Optional[str] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("model", "pcm", "encoding", "sample_rate", "channels", "language", "end", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    model: str
    pcm: bytes
    encoding: str
    sample_rate: int
    channels: int
    language: str
    end: bool
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, model: _Optional[str] = ..., pcm: _Optional[bytes] = ..., encoding: _Optional[str] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ..., language: _Optional[str] = ..., end: bool = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TranscriptUpdate(_message.Message):
    __slots__ = ("is_final", "text", "segments", "language", "chunk_index", "audio_received_s", "processing_s", "partial_text")
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    AUDIO_RECEIVED_S_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_S_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_TEXT_FIELD_NUMBER: _ClassVar[int]
    is_final: bool
    text: str
    segments: _containers.RepeatedCompositeFieldContainer[TranscriptSegment]
    language: str
    chunk_index: int
    audio_received_s: float
    processing_s: float
    partial_text: str
    def __init__(self, is_final: bool = ..., text: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[TranscriptSegment, _Mapping]]] = ..., language: _Optional[str] = ..., chunk_index: _Optional[int] = ..., audio_received_s: _Optional[float] = ..., processing_s: _Optional[float] = ..., partial_text: _Optional[str] = ...) -> None: ...

class BlobRef(_message.Message):
    __slots__ = ("offset", "length")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    offset: int
    length: int
    def __init__(self, offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class PipelineInput(_message.Message):
    __slots__ = ("text", "image", "audio", "encoding", "sample_rate", "role", "image_ref", "audio_ref")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_REF_FIELD_NUMBER: _ClassVar[int]
    AUDIO_REF_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: bytes
    audio: bytes
    encoding: str
    sample_rate: int
    role: str
    image_ref: BlobRef
    audio_ref: BlobRef
    def __init__(self, text: _Optional[str] = ..., image: _Optional[bytes] = ..., audio: _Optional[bytes] = ..., encoding: _Optional[str] = ..., sample_rate: _Optional[int] = ..., role: _Optional[str] = ..., image_ref: _Optional[_Union[BlobRef, _Mapping]] = ..., audio_ref: _Optional[_Union[BlobRef, _Mapping]] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class PipelineOutput(_message.Message):
    __slots__ = ("labels", "embedding", "text", "audio", "sample_rate", "token_ids", "tokens", "scores", "kind", "offsets", "entities", "encoding", "boxes", "quad_boxes", "polygons", "task", "finish_reason", "tokens_generated")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    QUAD_BOXES_FIELD_NUMBER: _ClassVar[int]
    POLYGONS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TOKENS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    embedding: _containers.RepeatedScalarFieldContainer[float]
    text: str
    audio: bytes
    sample_rate: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.RepeatedScalarFieldContainer[float]
    kind: str
    offsets: _containers.RepeatedScalarFieldContainer[int]
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    encoding: str
    boxes: _containers.RepeatedCompositeFieldContainer[Box]
    quad_boxes: _containers.RepeatedCompositeFieldContainer[Polygon]
    polygons: _containers.RepeatedCompositeFieldContainer[Polygon]
    task: str
    finish_reason: str
    tokens_generated: int
    def __init__(self, labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ..., embedding: _Optional[_Iterable[float]] = ..., text: _Optional[str] = ..., audio: _Optional[bytes] = ..., sample_rate: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[float]] = ..., kind: _Optional[str] = ..., offsets: _Optional[_Iterable[int]] = ..., entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ..., encoding: _Optional[str] = ..., boxes: _Optional[_Iterable[_Union[Box, _Mapping]]] = ..., quad_boxes: _Optional[_Iterable[_Union[Polygon, _Mapping]]] = ..., polygons: _Optional[_Iterable[_Union[Polygon, _Mapping]]] = ..., task: _Optional[str] = ..., finish_reason: _Optional[str] = ..., tokens_generated: _Optional[int] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x_min", "y_min", "x_max", "y_max", "label", "score")
    X_MIN_FIELD_NUMBER: _ClassVar[int]
    Y_MIN_FIELD_NUMBER: _ClassVar[int]
    X_MAX_FIELD_NUMBER: _ClassVar[int]
    Y_MAX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    label: str
    score: float
    def __init__(self, x_min: _Optional[float] = ..., y_min: _Optional[float] = ..., x_max: _Optional[float] = ..., y_max: _Optional[float] = ..., label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Polygon(_message.Message):
    __slots__ = ("label", "points")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    label: str
    points: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, label: _Optional[str] = ..., points: _Optional[_Iterable[float]] = ...) -> None: ...

class Entity(_message.Message):
    __slots__ = ("label", "score", "start", "end", "text")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    start: int
    end: int
    text: str
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class PipelineResponse(_message.Message):
    __slots__ = ("model", "pipeline_type", "outputs", "processing_s", "delta", "output_index", "done")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_TYPE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_S_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    model: str
    pipeline_type: str
    outputs: _containers.RepeatedCompositeFieldContainer[PipelineOutput]
    processing_s: float
    delta: str
    output_index: int
    done: bool
    def __init__(self, model: _Optional[str] = ..., pipeline_type: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[PipelineOutput, _Mapping]]] = ..., processing_s: _Optional[float] = ..., delta: _Optional[str] = ..., output_index: _Optional[int] = ..., done: bool = ...) -> None: ...

class PipelineRequest(_message.Message):
    __slots__ = ("model", "pipeline_type", "inputs", "options", "candidate_labels")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_TYPE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_LABELS_FIELD_NUMBER: _ClassVar[int]
    model: str
    pipeline_type: str
    inputs: _containers.RepeatedCompositeFieldContainer[PipelineInput]
    options: _containers.ScalarMap[str, str]
    candidate_labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., pipeline_type: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[PipelineInput, _Mapping]]] = ..., options: _Optional[_Mapping[str, str]] = ..., candidate_labels: _Optional[_Iterable[str]] = ...) -> None: ...
