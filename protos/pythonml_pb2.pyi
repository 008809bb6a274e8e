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
    __slots__ = ("pid", "pool", "device", "state", "rss_mb", "uss_mb", "pss_mb", "cuda_allocated_mb", "cuda_reserved_mb", "inflight", "queue_depth", "restarts", "uptime_s", "models", "capacity", "requests_served", "worker_id")
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
    def __init__(self, pid: _Optional[int] = ..., pool: _Optional[str] = ..., device: _Optional[str] = ..., state: _Optional[str] = ..., rss_mb: _Optional[float] = ..., uss_mb: _Optional[float] = ..., pss_mb: _Optional[float] = ..., cuda_allocated_mb: _Optional[float] = ..., cuda_reserved_mb: _Optional[float] = ..., inflight: _Optional[int] = ..., queue_depth: _Optional[int] = ..., restarts: _Optional[int] = ..., uptime_s: _Optional[float] = ..., models: _Optional[_Iterable[_Union[ModelStats, _Mapping]]] = ..., capacity: _Optional[int] = ..., requests_served: _Optional[int] = ..., worker_id: _Optional[str] = ...) -> None: ...

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
