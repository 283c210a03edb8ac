"""TensorRT engines: build plan, trtexec lines, compatibility lint, builder (10.x and 11.x), engine metadata.

- `plan`: `describe_source` + `make_plan` -> `BuildPlan` (pure; both generations; no TensorRT needed)
- `trtexec`: the equivalent trtexec command of a plan
- `operators` / `compat`: the TensorRT ONNX parser's operator table and the `hrdeploy doctor` lint
- `builder`: applies a plan with TensorRT through Polygraphy's loaders; writes the engine + engine.json
- `engine_info`: engine.json and the version / GPU check before loading an engine
- `device`, `version`: CUDA device discovery and TensorRT version / generation, imported lazily

Nothing here imports tensorrt at module import time; the runner lives in hrdeploy/runtime/tensorrt.py.
"""
