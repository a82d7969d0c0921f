"""Stylizers: image-to-image generators (AnimeGANv2 in torch; TFLite and ONNX graphs) and the
weight-free classical cartoon. Each is `__call__(rgb uint8) -> rgb uint8` of the same size, with
an optional `batch(list)`; each takes its runtime session from `models.sessions`.

May import: numpy, OpenCV, the runtime packages, and `models.sessions`; nothing of the job
system, the worker or the API.
"""
