"""Write a Triton Inference Server model repository for one artifact of a bundle.

Layout (Triton's model repository convention):

    REPO/<name>/config.pbtxt
    REPO/<name>/1/model.onnx      backend "onnxruntime"  (plus its external-data files, if any)
    REPO/<name>/1/model.plan      backend "tensorrt"

The config is protobuf text of Triton's ModelConfig (model_config.proto): tensor names, dtypes and dims
from the bundle, max_batch_size and dynamic_batching from the artifact's batch range, one instance_group.

With the keypoint pipeline (`write_pipeline_repo`) three more models make an ensemble around the network:

    REPO/<name>_preprocess/   backend "python": IMAGE + BOXES -> CROPS + TRANSFORMS   (1/model.py imports
    REPO/<name>_postprocess/  backend "python": heatmaps + TRANSFORMS -> KEYPOINTS      hrdeploy.serve.python_backend)
    REPO/<name>_pipeline/     platform "ensemble": IMAGE + BOXES -> KEYPOINTS, the three steps in order

The Python steps do not batch (max_batch_size 0, one photo and its N boxes per request); their [-1, ...]
tensors meet the network's batched dims as Triton's ensemble check allows ([-1, d...] against a batching
model's [d...]), so each request's crops reach the network as one batch and its dynamic batcher merges the
crops of several requests.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from hrdeploy.errors import UserError
from hrdeploy.serve.batching import Batching
from hrdeploy.serve.pipeline import BOXES, CROPS, IMAGE, KEYPOINTS, TRANSFORMS, PipelineConfig, pipeline_model_name
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
    return _tensor_text(t.name, t.triton_dtype, dims, last)


def _tensor_text(name: str, triton_dtype: str, dims: tuple[int, ...], last: bool) -> str:
    return "\n".join([
        "  {",
        f'    name: "{name}"',
        f"    data_type: TYPE_{triton_dtype}",
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


def docker_command(repo: str | os.PathLike, tag: str = "<yy.mm>-py3", source: str | os.PathLike | None = None) -> str:
    """The `docker run` line that serves REPO with the official tritonserver container.

    With `source` (an hrdeploy checkout or sdist, for a pipeline repository) the container first installs
    hrdeploy from it without dependencies: the Python steps need only hrdeploy, numpy and Pillow.
    """
    repo = Path(repo).resolve()
    head = f"docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v {repo}:/models"
    serve = "tritonserver --model-repository=/models"
    if source is None:
        return f"{head} nvcr.io/nvidia/tritonserver:{tag} {serve}"
    return (f"{head} -v {Path(source).resolve()}:/hrdeploy nvcr.io/nvidia/tritonserver:{tag} sh -c "
            f"'pip install -q --no-deps /hrdeploy numpy pillow && {serve}'")


# ------------------------------------------------------------------------------------------ keypoint pipeline

PIPELINE_STEPS = {"preprocess": "PreprocessModel", "postprocess": "PostprocessModel"}


def pipeline_names(name: str) -> dict[str, str]:
    """Model names of the pipeline around network `name`: preprocess, postprocess and the ensemble."""
    return {"preprocess": f"{name}_preprocess", "postprocess": f"{name}_postprocess",
            "pipeline": pipeline_model_name(name)}


def _parameters(params: dict[str, str]) -> list[str]:
    return [f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()]


def python_step_pbtxt(step: str, name: str, spec: ServeSpec, cfg: PipelineConfig, instances: int) -> str:
    """config.pbtxt of the pipeline's Python-backend `step` ("preprocess" or "postprocess")."""
    from hrdeploy.serve.python_backend import HEATMAPS_PARAMETER

    h, w = cfg.input_hw
    heatmaps = spec.outputs[0]
    if step == "preprocess":
        inputs = [(IMAGE, "STRING", (1,)), (BOXES, "FP32", (-1, 4))]
        outputs = [(CROPS, "FP32", (-1, 3, h, w)), (TRANSFORMS, "FP64", (-1, 2, 3))]
        params = cfg.to_parameters()
    else:
        inputs = [(heatmaps.name, heatmaps.triton_dtype, (-1, *heatmaps.dims)), (TRANSFORMS, "FP64", (-1, 2, 3))]
        outputs = [(KEYPOINTS, "FP32", (-1, cfg.num_keypoints, 3))]
        params = {**cfg.to_parameters(), HEATMAPS_PARAMETER: heatmaps.name}
    lines = [
        f"# hrdeploy triton-repo --pipeline: {step} of {spec.bundle.name} (hrdeploy.serve.python_backend)",
        f'name: "{name}"',
        'backend: "python"',
        "max_batch_size: 0",
        "input [",
        *(_tensor_text(n, t, d, i == len(inputs) - 1) for i, (n, t, d) in enumerate(inputs)),
        "]",
        "output [",
        *(_tensor_text(n, t, d, i == len(outputs) - 1) for i, (n, t, d) in enumerate(outputs)),
        "]",
        *_parameters(params),
        "instance_group [", "  {", f"    count: {instances}", "    kind: KIND_CPU", "  }", "]",
    ]
    return "\n".join(lines) + "\n"


def ensemble_pbtxt(name: str, network: str, spec: ServeSpec, cfg: PipelineConfig) -> str:
    """config.pbtxt of the ensemble: IMAGE + BOXES -> preprocess -> network -> postprocess -> KEYPOINTS."""
    names = pipeline_names(network)
    heatmaps = spec.outputs[0].name

    def step(model: str, inputs: dict[str, str], outputs: dict[str, str], last: bool) -> list[str]:
        return [
            "    {",
            f'      model_name: "{model}"',
            "      model_version: -1",
            *(f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()),
            *(f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()),
            "    }" if last else "    },",
        ]

    lines = [
        f"# hrdeploy triton-repo --pipeline: {spec.bundle.name} keypoints from a photo and person boxes",
        f'name: "{name}"',
        'platform: "ensemble"',
        "max_batch_size: 0",
        "input [",
        _tensor_text(IMAGE, "STRING", (1,), False),
        _tensor_text(BOXES, "FP32", (-1, 4), True),
        "]",
        "output [",
        _tensor_text(KEYPOINTS, "FP32", (-1, cfg.num_keypoints, 3), True),
        "]",
        "ensemble_scheduling {",
        "  step [",
        *step(names["preprocess"], {IMAGE: IMAGE, BOXES: BOXES}, {CROPS: "crops", TRANSFORMS: "transforms"}, False),
        *step(network, {spec.input.name: "crops"}, {heatmaps: "heatmaps"}, False),
        *step(names["postprocess"], {heatmaps: "heatmaps", TRANSFORMS: "transforms"}, {KEYPOINTS: KEYPOINTS}, True),
        "  ]",
        "}",
    ]
    return "\n".join(lines) + "\n"


def write_pipeline_repo(
    spec: ServeSpec, repo: str | os.PathLike, name: str, batching: Batching, cfg: PipelineConfig, instances: int = 1,
    device: str = "gpu", pipeline_instances: int = 1, force: bool = False,
) -> list[RepoResult]:
    """The network (`write_repo`) and, around it, the preprocess, postprocess and ensemble models.

    Every model directory is checked before anything is written; an existing one is an error unless `force`.
    """
    from hrdeploy.io import write_text

    if pipeline_instances < 1:
        raise UserError(f"--pipeline-instances {pipeline_instances}: give 1 or more")
    names = pipeline_names(check_model_name(name))
    for model in (name, *names.values()):
        if (Path(repo) / model).exists() and not force:
            raise UserError(f"{Path(repo) / model} exists; pass --force to replace the pipeline's configs and files, "
                            "or choose another -o / --name")
    results = [write_repo(spec, repo, name, batching, instances, device, force=True)]
    for step, cls in PIPELINE_STEPS.items():
        model_dir = Path(repo) / names[step]
        text = python_step_pbtxt(step, names[step], spec, cfg, pipeline_instances)
        code = model_dir / VERSION / "model.py"
        write_text(code, f'"""Triton Python backend: the keypoint pipeline\'s {step} step (hrdeploy triton-repo '
                         f'--pipeline)."""\n\nfrom hrdeploy.serve.python_backend import {cls} as TritonPythonModel  '
                         "# noqa: F401\n")
        write_text(model_dir / "config.pbtxt", text)
        results.append(RepoResult(model_dir, model_dir / "config.pbtxt", (code,), text))
    model_dir = Path(repo) / names["pipeline"]
    text = ensemble_pbtxt(names["pipeline"], name, spec, cfg)
    (model_dir / VERSION).mkdir(parents=True, exist_ok=True)  # Triton wants a version directory, empty for ensembles
    write_text(model_dir / "config.pbtxt", text)
    results.append(RepoResult(model_dir, model_dir / "config.pbtxt", (), text))
    return results
