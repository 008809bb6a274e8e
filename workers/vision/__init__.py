"""MediaPipe vision for the `ml.MediapipeService` methods: one small module per job.

frames (decoding), solutions (MediaPipe instances), faces, mesh, iris_gaze, hands + gestures,
pose + joint_angles, holistic, segmentation, tracking, autoflip, template, sequence, and
service (the handlers the vision worker registers). See docs/vision.md.
"""
