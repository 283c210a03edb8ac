"""Write a Triton Inference Server model repository for one artifact of a bundle.

Layout (Triton's model repository convention):

    REPO/<name>/config.pbtxt
    REPO/<name>/1/model.onnx      backend "onnxruntime"  (plus its external-data files, if any)
    REPO/<name>/1/model.plan      backend "tensorrt"

The config is protobuf text of Triton's ModelConfig (model_config.proto): tensor names, dtypes and dims
from the bundle, max_batch_size and dynamic_batching from the artifact's batch range, one instance_group.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from hrdeploy.errors import UserError
from hrdeploy.serve.batching import Batching
from hrdeploy.serve.spec import ServeSpec, TensorSpec

BACKENDS = {"onnx": ("onnxruntime", "model.onnx"), "engine": ("tensorrt", "model.plan")}
VERSION = "1"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class RepoResult:
    model_dir: Path
    config: Path
    files: tuple[Path, ...]  # the model file and its external data, in the version directory
    text: str


def default_model_name(spec: ServeSpec) -> str:
    """The bundle's model name, suffixed with the artifact key unless it is the fp32 ONNX."""
    return spec.model if spec.key == "onnx" else f"{spec.model}_{spec.key}"


def check_model_name(name: str) -> str:
    if not _NAME.match(name) or name in (".", ".."):
        raise UserError(f"--name {name!r}: a Triton model name is a directory name; use letters, digits, '_', '.', '-'")
    return name


def config_pbtxt(spec: ServeSpec, name: str, batching: Batching, instances: int, device: str) -> str:
    """config.pbtxt text for `spec` served as `name` (device "gpu" or "cpu")."""
    backend, filename = BACKENDS[spec.kind]
    kind = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}[device]
    lines = [
        f"# hrdeploy triton-repo: {spec.bundle.name} artifact {spec.key!r} ({spec.precision}, {spec.path.name})",
        f'name: "{name}"',
        f'backend: "{backend}"',
        f'default_model_filename: "{filename}"',
        f"max_batch_size: {batching.max_batch_size}",
        "input [",
        _tensor(spec.input, spec, batching, last=True),
        "]",
        "output [",
        *(_tensor(t, spec, batching, last=i == len(spec.outputs) - 1) for i, t in enumerate(spec.outputs)),
        "]",
    ]
    if batching.max_batch_size > 0:
        lines.append("dynamic_batching {")
        if batching.preferred:
            lines.append(f"  preferred_batch_size: [ {', '.join(map(str, batching.preferred))} ]")
        lines += [f"  max_queue_delay_microseconds: {batching.max_queue_delay_us}", "}"]
    lines += ["instance_group [", "  {", f"    count: {instances}", f"    kind: {kind}", "  }", "]"]
    return "\n".join(lines) + "\n"


def _tensor(t: TensorSpec, spec: ServeSpec, batching: Batching, last: bool) -> str:
    dims = t.dims if batching.max_batch_size > 0 else spec.whole_shape(t)
    return "\n".join([
        "  {",
        f'    name: "{t.name}"',
        f"    data_type: TYPE_{t.triton_dtype}",
        f"    dims: [ {', '.join(map(str, dims))} ]",
        "  }" if last else "  },",
    ])


def write_repo(
    spec: ServeSpec, repo: str | os.PathLike, name: str, batching: Batching, instances: int = 1, device: str = "gpu",
    force: bool = False,
) -> RepoResult:
    """Write REPO/<name>/config.pbtxt and REPO/<name>/1/<model file>, each atomically.

    An existing REPO/<name> is an error unless `force`; then only the files written here are replaced.
    """
    from hrdeploy.io import atomic_path, write_text

    if instances < 1:
        raise UserError(f"--instances {instances}: give 1 or more")
    if spec.kind == "engine" and device == "cpu":
        raise UserError("a TensorRT engine runs on a GPU only; drop --device cpu or pick an ONNX --artifact")
    model_dir = Path(repo) / check_model_name(name)
    if model_dir.exists() and not force:
        raise UserError(f"{model_dir} exists; pass --force to replace its config.pbtxt and model file, "
                        "or choose another -o / --name")
    text = config_pbtxt(spec, name, batching, instances, device)
    _, filename = BACKENDS[spec.kind]
    version_dir = model_dir / VERSION
    copies = [(spec.path, version_dir / filename)]
    copies += [(spec.path.parent / rel, version_dir / rel) for rel in _external_data(spec)]
    for src, dst in copies:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    config = model_dir / "config.pbtxt"
    write_text(config, text)
    return RepoResult(model_dir=model_dir, config=config, files=tuple(dst for _, dst in copies), text=text)


def _external_data(spec: ServeSpec) -> list[str]:
    """Bundle-relative external-data files an ONNX artifact refers to (none for engines), confined to the bundle."""
    if spec.kind != "onnx":
        return []
    from hrdeploy.bundle import confine, load_onnx

    graph = load_onnx(spec.path).graph
    files = sorted({e.value for t in graph.initializer for e in t.external_data if e.key == "location"})
    for rel in files:
        if not confine(spec.path.parent, rel, "external data").is_file():
            raise UserError(f"{spec.path} refers to external data {rel!r}, which is missing; re-export the bundle")
    return files


def docker_command(repo: str | os.PathLike, tag: str = "<yy.mm>-py3") -> str:
    """The `docker run` line that serves REPO with the official tritonserver container."""
    repo = Path(repo).resolve()
    return (f"docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v {repo}:/models "
            f"nvcr.io/nvidia/tritonserver:{tag} tritonserver --model-repository=/models")
