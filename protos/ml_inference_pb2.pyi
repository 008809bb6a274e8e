from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoadModelRequest(_message.Message):
    __slots__ = ("model_id", "pipeline_type", "architecture", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_TYPE_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    pipeline_type: str
    architecture: str
    options: _containers.ScalarMap[str, str]
    def __init__(self, model_id: _Optional[str] = ..., pipeline_type: _Optional[str] = ..., architecture: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("success", "message", "vram_allocated_mb", "ram_allocated_mb")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VRAM_ALLOCATED_MB_FIELD_NUMBER: _ClassVar[int]
    RAM_ALLOCATED_MB_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    vram_allocated_mb: int
    ram_allocated_mb: int
    def __init__(self, success: bool = ..., message: _Optional[str] = ..., vram_allocated_mb: _Optional[int] = ..., ram_allocated_mb: _Optional[int] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class ModelFileRequest(_message.Message):
    __slots__ = ("model_id", "file_path")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_PATH_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    file_path: str
    def __init__(self, model_id: _Optional[str] = ..., file_path: _Optional[str] = ...) -> None: ...

class ModelFileChunk(_message.Message):
    __slots__ = ("data", "offset", "total_size", "is_last")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    IS_LAST_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    total_size: int
    is_last: bool
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_size: _Optional[int] = ..., is_last: bool = ...) -> None: ...

class EmptyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadedModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[LoadedModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[LoadedModelInfo, _Mapping]]] = ...) -> None: ...

class LoadedModelInfo(_message.Message):
    __slots__ = ("model_id", "pipeline_type", "vram_mb", "ram_mb", "loaded_at")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_TYPE_FIELD_NUMBER: _ClassVar[int]
    VRAM_MB_FIELD_NUMBER: _ClassVar[int]
    RAM_MB_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    pipeline_type: str
    vram_mb: int
    ram_mb: int
    loaded_at: int
    def __init__(self, model_id: _Optional[str] = ..., pipeline_type: _Optional[str] = ..., vram_mb: _Optional[int] = ..., ram_mb: _Optional[int] = ..., loaded_at: _Optional[int] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: bool = ..., message: _Optional[str] = ...) -> None: ...

class TextRequest(_message.Message):
    __slots__ = ("prompt", "model", "max_length", "temperature", "top_p", "top_k")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    model: str
    max_length: int
    temperature: float
    top_p: float
    top_k: int
    def __init__(self, prompt: _Optional[str] = ..., model: _Optional[str] = ..., max_length: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ...) -> None: ...

class TextResponse(_message.Message):
    __slots__ = ("text", "done", "tokens_generated", "prompt_tokens")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    text: str
    done: bool
    tokens_generated: int
    prompt_tokens: int
    def __init__(self, text: _Optional[str] = ..., done: bool = ..., tokens_generated: _Optional[int] = ..., prompt_tokens: _Optional[int] = ...) -> None: ...

class GenerateEmbeddingsRequest(_message.Message):
    __slots__ = ("texts", "model")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    model: str
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ...) -> None: ...

class GeneratedEmbeddingsResponse(_message.Message):
    __slots__ = ("embeddings", "prompt_tokens")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[GeneratedEmbedding]
    prompt_tokens: int
    def __init__(self, embeddings: _Optional[_Iterable[_Union[GeneratedEmbedding, _Mapping]]] = ..., prompt_tokens: _Optional[int] = ...) -> None: ...

class GeneratedEmbedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class ChatRequest(_message.Message):
    __slots__ = ("messages", "model", "temperature", "max_length", "top_p", "top_k")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    model: str
    temperature: float
    max_length: int
    top_p: float
    top_k: int
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., model: _Optional[str] = ..., temperature: _Optional[float] = ..., max_length: _Optional[int] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ChatResponse(_message.Message):
    __slots__ = ("content", "done", "finish_reason", "tokens_generated", "prompt_tokens")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TOKENS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    content: str
    done: bool
    finish_reason: str
    tokens_generated: int
    prompt_tokens: int
    def __init__(self, content: _Optional[str] = ..., done: bool = ..., finish_reason: _Optional[str] = ..., tokens_generated: _Optional[int] = ..., prompt_tokens: _Optional[int] = ...) -> None: ...

class ImageRequest(_message.Message):
    __slots__ = ("image_data", "format", "width", "height", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_DATA_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    image_data: bytes
    format: str
    width: int
    height: int
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, image_data: _Optional[bytes] = ..., format: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class VideoFrame(_message.Message):
    __slots__ = ("frame_data", "format", "width", "height", "timestamp_ms", "frame_number", "metadata", "background_image")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FRAME_DATA_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_NUMBER_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_IMAGE_FIELD_NUMBER: _ClassVar[int]
    frame_data: bytes
    format: str
    width: int
    height: int
    timestamp_ms: int
    frame_number: int
    metadata: _containers.ScalarMap[str, str]
    background_image: bytes
    def __init__(self, frame_data: _Optional[bytes] = ..., format: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., timestamp_ms: _Optional[int] = ..., frame_number: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., background_image: _Optional[bytes] = ...) -> None: ...

class MediaSequenceFrame(_message.Message):
    __slots__ = ("frame_data", "timestamp_ms", "frame_number", "features", "format", "width", "height")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    FRAME_DATA_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_NUMBER_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    frame_data: bytes
    timestamp_ms: int
    frame_number: int
    features: _containers.ScalarMap[str, float]
    format: str
    width: int
    height: int
    def __init__(self, frame_data: _Optional[bytes] = ..., timestamp_ms: _Optional[int] = ..., frame_number: _Optional[int] = ..., features: _Optional[_Mapping[str, float]] = ..., format: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class MediaSequenceResponse(_message.Message):
    __slots__ = ("labels", "features", "total_frames")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FRAMES_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[SequenceLabel]
    features: _containers.ScalarMap[str, float]
    total_frames: int
    def __init__(self, labels: _Optional[_Iterable[_Union[SequenceLabel, _Mapping]]] = ..., features: _Optional[_Mapping[str, float]] = ..., total_frames: _Optional[int] = ...) -> None: ...

class SequenceLabel(_message.Message):
    __slots__ = ("label", "confidence", "start_frame", "end_frame")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    START_FRAME_FIELD_NUMBER: _ClassVar[int]
    END_FRAME_FIELD_NUMBER: _ClassVar[int]
    label: str
    confidence: float
    start_frame: int
    end_frame: int
    def __init__(self, label: _Optional[str] = ..., confidence: _Optional[float] = ..., start_frame: _Optional[int] = ..., end_frame: _Optional[int] = ...) -> None: ...

class FaceDetectionResponse(_message.Message):
    __slots__ = ("faces", "timestamp_ms", "frame_number")
    FACES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_NUMBER_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[FaceDetection]
    timestamp_ms: int
    frame_number: int
    def __init__(self, faces: _Optional[_Iterable[_Union[FaceDetection, _Mapping]]] = ..., timestamp_ms: _Optional[int] = ..., frame_number: _Optional[int] = ...) -> None: ...

class FaceDetection(_message.Message):
    __slots__ = ("x", "y", "width", "height", "confidence", "keypoints")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    KEYPOINTS_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    width: float
    height: float
    confidence: float
    keypoints: _containers.RepeatedCompositeFieldContainer[KeyPoint]
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., width: _Optional[float] = ..., height: _Optional[float] = ..., confidence: _Optional[float] = ..., keypoints: _Optional[_Iterable[_Union[KeyPoint, _Mapping]]] = ...) -> None: ...

class KeyPoint(_message.Message):
    __slots__ = ("x", "y", "confidence", "name")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    confidence: float
    name: str
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., confidence: _Optional[float] = ..., name: _Optional[str] = ...) -> None: ...

class FaceMeshResponse(_message.Message):
    __slots__ = ("faces", "timestamp_ms", "frame_number")
    FACES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_NUMBER_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[FaceMesh]
    timestamp_ms: int
    frame_number: int
    def __init__(self, faces: _Optional[_Iterable[_Union[FaceMesh, _Mapping]]] = ..., timestamp_ms: _Optional[int] = ..., frame_number: _Optional[int] = ...) -> None: ...

class FaceMesh(_message.Message):
    __slots__ = ("landmarks", "contours", "confidence", "track_id")
    LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    CONTOURS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    landmarks: _containers.RepeatedCompositeFieldContainer[Landmark]
    contours: _containers.RepeatedScalarFieldContainer[int]
    confidence: float
    track_id: int
    def __init__(self, landmarks: _Optional[_Iterable[_Union[Landmark, _Mapping]]] = ..., contours: _Optional[_Iterable[int]] = ..., confidence: _Optional[float] = ..., track_id: _Optional[int] = ...) -> None: ...

class IrisTrackingResponse(_message.Message):
    __slots__ = ("eyes", "timestamp_ms", "frame_number", "combined_gaze", "head_pose", "track_id", "more_faces")
    EYES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_NUMBER_FIELD_NUMBER: _ClassVar[int]
    COMBINED_GAZE_FIELD_NUMBER: _ClassVar[int]
    HEAD_POSE_FIELD_NUMBER: _ClassVar[int]
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    MORE_FACES_FIELD_NUMBER: _ClassVar[int]
    eyes: _containers.RepeatedCompositeFieldContainer[IrisTracking]
    timestamp_ms: int
    frame_number: int
    combined_gaze: GazeDirection
    head_pose: Pose3D
    track_id: int
    more_faces: _containers.RepeatedCompositeFieldContainer[IrisFace]
    def __init__(self, eyes: _Optional[_Iterable[_Union[IrisTracking, _Mapping]]] = ..., timestamp_ms: _Optional[int] = ..., frame_number: _Optional[int] = ..., combined_gaze: _Optional[_Union[GazeDirection, _Mapping]] = ..., head_pose: _Optional[_Union[Pose3D, _Mapping]] = ..., track_id: _Optional[int] = ..., more_faces: _Optional[_Iterable[_Union[IrisFace, _Mapping]]] = ...) -> None: ...

class IrisFace(_message.Message):
    __slots__ = ("track_id", "eyes", "combined_gaze", "head_pose")
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    EYES_FIELD_NUMBER: _ClassVar[int]
    COMBINED_GAZE_FIELD_NUMBER: _ClassVar[int]
    HEAD_POSE_FIELD_NUMBER: _ClassVar[int]
    track_id: int
    eyes: _containers.RepeatedCompositeFieldContainer[IrisTracking]
    combined_gaze: GazeDirection
    head_pose: Pose3D
    def __init__(self, track_id: _Optional[int] = ..., eyes: _Optional[_Iterable[_Union[IrisTracking, _Mapping]]] = ..., combined_gaze: _Optional[_Union[GazeDirection, _Mapping]] = ..., head_pose: _Optional[_Union[Pose3D, _Mapping]] = ...) -> None: ...

class IrisTracking(_message.Message):
    __slots__ = ("iris_landmarks", "eye_landmarks", "eye", "confidence", "gaze")
    IRIS_LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    EYE_LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    EYE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    GAZE_FIELD_NUMBER: _ClassVar[int]
    iris_landmarks: _containers.RepeatedCompositeFieldContainer[Landmark]
    eye_landmarks: _containers.RepeatedCompositeFieldContainer[Landmark]
    eye: str
    confidence: float
    gaze: GazeDirection
    def __init__(self, iris_landmarks: _Optional[_Iterable[_Union[Landmark, _Mapping]]] = ..., eye_landmarks: _Optional[_Iterable[_Union[Landmark, _Mapping]]] = ..., eye: _Optional[str] = ..., confidence: _Optional[float] = ..., gaze: _Optional[_Union[GazeDirection, _Mapping]] = ...) -> None: ...

class HandDetectionResponse(_message.Message):
    __slots__ = ("hands", "timestamp_ms", "frame_number")
    HANDS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_NUMBER_FIELD_NUMBER: _ClassVar[int]
    hands: _containers.RepeatedCompositeFieldContainer[HandDetection]
    timestamp_ms: int
    frame_number: int
    def __init__(self, hands: _Optional[_Iterable[_Union[HandDetection, _Mapping]]] = ..., timestamp_ms: _Optional[int] = ..., frame_number: _Optional[int] = ...) -> None: ...

class HandDetection(_message.Message):
    __slots__ = ("landmarks", "handedness", "confidence", "gestures", "world_landmarks")
    LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    HANDEDNESS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    GESTURES_FIELD_NUMBER: _ClassVar[int]
    WORLD_LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    landmarks: _containers.RepeatedCompositeFieldContainer[Landmark]
    handedness: str
    confidence: float
    gestures: _containers.RepeatedCompositeFieldContainer[Gesture]
    world_landmarks: _containers.RepeatedCompositeFieldContainer[Landmark]
    def __init__(self, landmarks: _Optional[_Iterable[_Union[Landmark, _Mapping]]] = ..., handedness: _Optional[str] = ..., confidence: _Optional[float] = ..., gestures: _Optional[_Iterable[_Union[Gesture, _Mapping]]] = ..., world_landmarks: _Optional[_Iterable[_Union[Landmark, _Mapping]]] = ...) -> None: ...

class Gesture(_message.Message):
    __slots__ = ("name", "confidence")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    confidence: float
    def __init__(self, name: _Optional[str] = ..., confidence: _Optional[float] = ...) -> None: ...

class PoseDetectionResponse(_message.Message):
    __slots__ = ("poses", "timestamp_ms", "frame_number")
    POSES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_NUMBER_FIELD_NUMBER: _ClassVar[int]
    poses: _containers.RepeatedCompositeFieldContainer[PoseDetection]
    timestamp_ms: int
    frame_number: int
    def __init__(self, poses: _Optional[_Iterable[_Union[PoseDetection, _Mapping]]] = ..., timestamp_ms: _Optional[int] = ..., frame_number: _Optional[int] = ...) -> None: ...

class PoseDetection(_message.Message):
    __slots__ = ("landmarks", "confidence", "world_landmarks", "joint_angles", "track_id", "box")
    LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    WORLD_LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    JOINT_ANGLES_FIELD_NUMBER: _ClassVar[int]
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    landmarks: _containers.RepeatedCompositeFieldContainer[Landmark]
    confidence: float
    world_landmarks: _containers.RepeatedCompositeFieldContainer[Landmark]
    joint_angles: _containers.RepeatedCompositeFieldContainer[JointAngle]
    track_id: int
    box: BoundingBox
    def __init__(self, landmarks: _Optional[_Iterable[_Union[Landmark, _Mapping]]] = ..., confidence: _Optional[float] = ..., world_landmarks: _Optional[_Iterable[_Union[Landmark, _Mapping]]] = ..., joint_angles: _Optional[_Iterable[_Union[JointAngle, _Mapping]]] = ..., track_id: _Optional[int] = ..., box: _Optional[_Union[BoundingBox, _Mapping]] = ...) -> None: ...

class HolisticTrackingResponse(_message.Message):
    __slots__ = ("face", "pose", "hands", "timestamp_ms", "frame_number", "people")
    FACE_FIELD_NUMBER: _ClassVar[int]
    POSE_FIELD_NUMBER: _ClassVar[int]
    HANDS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PEOPLE_FIELD_NUMBER: _ClassVar[int]
    face: FaceMesh
    pose: PoseDetection
    hands: _containers.RepeatedCompositeFieldContainer[HandDetection]
    timestamp_ms: int
    frame_number: int
    people: _containers.RepeatedCompositeFieldContainer[HolisticPerson]
    def __init__(self, face: _Optional[_Union[FaceMesh, _Mapping]] = ..., pose: _Optional[_Union[PoseDetection, _Mapping]] = ..., hands: _Optional[_Iterable[_Union[HandDetection, _Mapping]]] = ..., timestamp_ms: _Optional[int] = ..., frame_number: _Optional[int] = ..., people: _Optional[_Iterable[_Union[HolisticPerson, _Mapping]]] = ...) -> None: ...

class ObjectDetectionResponse(_message.Message):
    __slots__ = ("objects", "timestamp_ms", "frame_number")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_NUMBER_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectDetection]
    timestamp_ms: int
    frame_number: int
    def __init__(self, objects: _Optional[_Iterable[_Union[ObjectDetection, _Mapping]]] = ..., timestamp_ms: _Optional[int] = ..., frame_number: _Optional[int] = ...) -> None: ...

class ObjectDetection(_message.Message):
    __slots__ = ("label", "confidence", "bbox", "track_id")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    label: str
    confidence: float
    bbox: BoundingBox
    track_id: int
    def __init__(self, label: _Optional[str] = ..., confidence: _Optional[float] = ..., bbox: _Optional[_Union[BoundingBox, _Mapping]] = ..., track_id: _Optional[int] = ...) -> None: ...

class BoundingBox(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    width: float
    height: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., width: _Optional[float] = ..., height: _Optional[float] = ...) -> None: ...

class ObjectTrackingResponse(_message.Message):
    __slots__ = ("objects", "timestamp_ms", "frame_number")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_NUMBER_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[TrackedObject]
    timestamp_ms: int
    frame_number: int
    def __init__(self, objects: _Optional[_Iterable[_Union[TrackedObject, _Mapping]]] = ..., timestamp_ms: _Optional[int] = ..., frame_number: _Optional[int] = ...) -> None: ...

class TrackedObject(_message.Message):
    __slots__ = ("track_id", "label", "bbox", "confidence", "trajectory")
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    track_id: int
    label: str
    bbox: BoundingBox
    confidence: float
    trajectory: _containers.RepeatedCompositeFieldContainer[BoundingBox]
    def __init__(self, track_id: _Optional[int] = ..., label: _Optional[str] = ..., bbox: _Optional[_Union[BoundingBox, _Mapping]] = ..., confidence: _Optional[float] = ..., trajectory: _Optional[_Iterable[_Union[BoundingBox, _Mapping]]] = ...) -> None: ...

class ObjectDetection3DResponse(_message.Message):
    __slots__ = ("objects", "timestamp_ms", "frame_number")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_NUMBER_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[Object3D]
    timestamp_ms: int
    frame_number: int
    def __init__(self, objects: _Optional[_Iterable[_Union[Object3D, _Mapping]]] = ..., timestamp_ms: _Optional[int] = ..., frame_number: _Optional[int] = ...) -> None: ...

class Object3D(_message.Message):
    __slots__ = ("label", "confidence", "bbox", "pose", "keypoints_3d")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    POSE_FIELD_NUMBER: _ClassVar[int]
    KEYPOINTS_3D_FIELD_NUMBER: _ClassVar[int]
    label: str
    confidence: float
    bbox: BoundingBox
    pose: Pose3D
    keypoints_3d: _containers.RepeatedCompositeFieldContainer[Landmark]
    def __init__(self, label: _Optional[str] = ..., confidence: _Optional[float] = ..., bbox: _Optional[_Union[BoundingBox, _Mapping]] = ..., pose: _Optional[_Union[Pose3D, _Mapping]] = ..., keypoints_3d: _Optional[_Iterable[_Union[Landmark, _Mapping]]] = ...) -> None: ...

class Pose3D(_message.Message):
    __slots__ = ("x", "y", "z", "roll", "pitch", "yaw")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    ROLL_FIELD_NUMBER: _ClassVar[int]
    PITCH_FIELD_NUMBER: _ClassVar[int]
    YAW_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    z: float
    roll: float
    pitch: float
    yaw: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., z: _Optional[float] = ..., roll: _Optional[float] = ..., pitch: _Optional[float] = ..., yaw: _Optional[float] = ...) -> None: ...

class SegmentationResponse(_message.Message):
    __slots__ = ("mask", "width", "height", "format", "timestamp_ms", "frame_number", "frame_data", "frame_width", "frame_height", "frame_format", "coverage", "output")
    MASK_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_NUMBER_FIELD_NUMBER: _ClassVar[int]
    FRAME_DATA_FIELD_NUMBER: _ClassVar[int]
    FRAME_WIDTH_FIELD_NUMBER: _ClassVar[int]
    FRAME_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FRAME_FORMAT_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    mask: bytes
    width: int
    height: int
    format: str
    timestamp_ms: int
    frame_number: int
    frame_data: bytes
    frame_width: int
    frame_height: int
    frame_format: str
    coverage: float
    output: str
    def __init__(self, mask: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., format: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., frame_number: _Optional[int] = ..., frame_data: _Optional[bytes] = ..., frame_width: _Optional[int] = ..., frame_height: _Optional[int] = ..., frame_format: _Optional[str] = ..., coverage: _Optional[float] = ..., output: _Optional[str] = ...) -> None: ...

class TemplateMatchingRequest(_message.Message):
    __slots__ = ("frame_data", "template_data", "frame_width", "frame_height", "template_width", "template_height", "threshold", "frame_format", "template_format", "timestamp_ms", "frame_number", "max_matches", "max_overlap")
    FRAME_DATA_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_DATA_FIELD_NUMBER: _ClassVar[int]
    FRAME_WIDTH_FIELD_NUMBER: _ClassVar[int]
    FRAME_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FRAME_FORMAT_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_NUMBER_FIELD_NUMBER: _ClassVar[int]
    MAX_MATCHES_FIELD_NUMBER: _ClassVar[int]
    MAX_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    frame_data: bytes
    template_data: bytes
    frame_width: int
    frame_height: int
    template_width: int
    template_height: int
    threshold: float
    frame_format: str
    template_format: str
    timestamp_ms: int
    frame_number: int
    max_matches: int
    max_overlap: float
    def __init__(self, frame_data: _Optional[bytes] = ..., template_data: _Optional[bytes] = ..., frame_width: _Optional[int] = ..., frame_height: _Optional[int] = ..., template_width: _Optional[int] = ..., template_height: _Optional[int] = ..., threshold: _Optional[float] = ..., frame_format: _Optional[str] = ..., template_format: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., frame_number: _Optional[int] = ..., max_matches: _Optional[int] = ..., max_overlap: _Optional[float] = ...) -> None: ...

class TemplateMatchingResponse(_message.Message):
    __slots__ = ("matches", "timestamp_ms", "frame_number")
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_NUMBER_FIELD_NUMBER: _ClassVar[int]
    matches: _containers.RepeatedCompositeFieldContainer[TemplateMatch]
    timestamp_ms: int
    frame_number: int
    def __init__(self, matches: _Optional[_Iterable[_Union[TemplateMatch, _Mapping]]] = ..., timestamp_ms: _Optional[int] = ..., frame_number: _Optional[int] = ...) -> None: ...

class TemplateMatch(_message.Message):
    __slots__ = ("x", "y", "confidence", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    confidence: float
    width: float
    height: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., confidence: _Optional[float] = ..., width: _Optional[float] = ..., height: _Optional[float] = ...) -> None: ...

class Landmark(_message.Message):
    __slots__ = ("x", "y", "z", "visibility", "presence")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    z: float
    visibility: float
    presence: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., z: _Optional[float] = ..., visibility: _Optional[float] = ..., presence: _Optional[float] = ...) -> None: ...

class GazeDirection(_message.Message):
    __slots__ = ("x", "y", "z", "yaw", "pitch", "confidence")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    YAW_FIELD_NUMBER: _ClassVar[int]
    PITCH_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    z: float
    yaw: float
    pitch: float
    confidence: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., z: _Optional[float] = ..., yaw: _Optional[float] = ..., pitch: _Optional[float] = ..., confidence: _Optional[float] = ...) -> None: ...

class JointAngle(_message.Message):
    __slots__ = ("name", "degrees", "confidence")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEGREES_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    degrees: float
    confidence: float
    def __init__(self, name: _Optional[str] = ..., degrees: _Optional[float] = ..., confidence: _Optional[float] = ...) -> None: ...

class HolisticPerson(_message.Message):
    __slots__ = ("track_id", "pose", "face", "hands")
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    POSE_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    HANDS_FIELD_NUMBER: _ClassVar[int]
    track_id: int
    pose: PoseDetection
    face: FaceMesh
    hands: _containers.RepeatedCompositeFieldContainer[HandDetection]
    def __init__(self, track_id: _Optional[int] = ..., pose: _Optional[_Union[PoseDetection, _Mapping]] = ..., face: _Optional[_Union[FaceMesh, _Mapping]] = ..., hands: _Optional[_Iterable[_Union[HandDetection, _Mapping]]] = ...) -> None: ...
