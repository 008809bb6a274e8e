"""Every gRPC method the service serves, by name: the one spelling of each path that handler tables,
routes and the broker share (`service/Method`, no leading slash). Generated from protos/ once; no imports."""
from __future__ import annotations

MANAGEMENT = "ml.ModelManagementService"
TRANSFORMERS = "ml.TransformersService"
MEDIAPIPE = "ml.MediapipeService"
STATS = "pythonml.v1.Stats"
DIAGNOSTICS = "pythonml.v1.Diagnostics"
SPEECH = "pythonml.v1.Speech"
PIPELINES = "pythonml.v1.Pipelines"
KSERVE = "inference.GRPCInferenceService"

# ml.ModelManagementService
LOAD_MODEL = f"{MANAGEMENT}/LoadModel"
UNLOAD_MODEL = f"{MANAGEMENT}/UnloadModel"
GET_MODEL_FILE = f"{MANAGEMENT}/GetModelFile"
GET_LOADED_MODELS = f"{MANAGEMENT}/GetLoadedModels"

# ml.TransformersService
GENERATE_TEXT = f"{TRANSFORMERS}/GenerateText"
GENERATE_EMBEDDINGS = f"{TRANSFORMERS}/GenerateEmbeddings"
CHAT_COMPLETION = f"{TRANSFORMERS}/ChatCompletion"

# ml.MediapipeService
DETECT_FACES = f"{MEDIAPIPE}/DetectFaces"
DETECT_HANDS = f"{MEDIAPIPE}/DetectHands"
DETECT_POSE = f"{MEDIAPIPE}/DetectPose"
STREAM_FACE_DETECTION = f"{MEDIAPIPE}/StreamFaceDetection"
STREAM_HAND_TRACKING = f"{MEDIAPIPE}/StreamHandTracking"
STREAM_POSE_TRACKING = f"{MEDIAPIPE}/StreamPoseTracking"
STREAM_HOLISTIC_TRACKING = f"{MEDIAPIPE}/StreamHolisticTracking"
STREAM_FACE_MESH = f"{MEDIAPIPE}/StreamFaceMesh"
STREAM_IRIS_TRACKING = f"{MEDIAPIPE}/StreamIrisTracking"
STREAM_OBJECT_DETECTION = f"{MEDIAPIPE}/StreamObjectDetection"
STREAM_OBJECT_TRACKING = f"{MEDIAPIPE}/StreamObjectTracking"
STREAM_OBJECT_DETECTION3D = f"{MEDIAPIPE}/StreamObjectDetection3D"
STREAM_SELFIE_SEGMENTATION = f"{MEDIAPIPE}/StreamSelfieSegmentation"
STREAM_HAIR_SEGMENTATION = f"{MEDIAPIPE}/StreamHairSegmentation"
STREAM_TEMPLATE_MATCHING = f"{MEDIAPIPE}/StreamTemplateMatching"
STREAM_AUTO_FLIP = f"{MEDIAPIPE}/StreamAutoFlip"
PROCESS_MEDIA_SEQUENCE = f"{MEDIAPIPE}/ProcessMediaSequence"

# pythonml.v1.Stats
GET_STATS = f"{STATS}/GetStats"

# pythonml.v1.Diagnostics
ECHO = f"{DIAGNOSTICS}/Echo"

# pythonml.v1.Speech
TRANSCRIBE = f"{SPEECH}/Transcribe"
STREAM_TRANSCRIBE = f"{SPEECH}/StreamTranscribe"

# pythonml.v1.Pipelines
PIPELINES_RUN = f"{PIPELINES}/Run"
PIPELINES_RUN_STREAM = f"{PIPELINES}/RunStream"

# inference.GRPCInferenceService
KSERVE_SERVER_LIVE = f"{KSERVE}/ServerLive"
KSERVE_SERVER_READY = f"{KSERVE}/ServerReady"
KSERVE_MODEL_READY = f"{KSERVE}/ModelReady"
KSERVE_SERVER_METADATA = f"{KSERVE}/ServerMetadata"
KSERVE_MODEL_METADATA = f"{KSERVE}/ModelMetadata"
KSERVE_MODEL_INFER = f"{KSERVE}/ModelInfer"
KSERVE_REPOSITORY_INDEX = f"{KSERVE}/RepositoryIndex"
KSERVE_REPOSITORY_MODEL_LOAD = f"{KSERVE}/RepositoryModelLoad"
KSERVE_REPOSITORY_MODEL_UNLOAD = f"{KSERVE}/RepositoryModelUnload"


def method_name(path: str) -> str:
    """'ml.MediapipeService/DetectFaces' (or with a leading slash) -> 'DetectFaces'."""
    return path.rsplit("/", 1)[-1]
