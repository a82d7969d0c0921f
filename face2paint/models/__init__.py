"""The face2paint pipeline as a library: numpy images in, numpy images and plain data out.

Owns: the model registry (registry.py: ids, files, licences, where weights come from), how each
runtime is created (sessions.py: ONNX Runtime, LiteRT, torch, OpenCV; threads, device and
precision from Settings), building a model's wrapper (loaders.py) and keeping it loaded once
per process (cache.py, keyed by model id and runtime options), the networks' wrappers
(detect.py, parse.py, generators/), the face round trip (face.py: align, work size, paste mask,
paste back, seam matching), refinement (refine.py), keeping the person through a face model
(keep.py: skin tone, glasses, beard), the style presets (presets.py: data, no runtime), image
I/O (image_io.py), and the pipeline over them
(pipeline.py: one method per stage, models taken lazily by stage, parameters per call).

May import: numpy, Pillow, OpenCV and the runtime packages (lazily, where a model runs),
httpx (model downloads) and face2paint.settings. Never the job system (jobs/), the worker, the
API or the command line: it knows nothing of queues, databases or HTTP.
"""
