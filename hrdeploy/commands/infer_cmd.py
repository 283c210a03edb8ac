"""`hrdeploy infer IMAGE... (DIR | --onnx FILE | --engine FILE | --model NAME)`: keypoints on images.

Per image it writes <out>/<stem>.png (skeleton drawn; eager | deployed side by side with --compare) and
<out>/<stem>.json (per person: score, box, and each keypoint's name, x, y, score in image pixels).
Decoding lives in hrdeploy/pose/ and is shared with `hrdeploy validate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from hrdeploy.errors import UserError
from hrdeploy.io import not_a_file, os_reason
from hrdeploy.limits import MAX_THREADS


@dataclass
class _Source:
    runner: Any  # hrdeploy.runtime.Runner
    cfg: Any  # hrdeploy.pose.pipeline.PoseConfig
    label: str  # "ort model.onnx", "eager", ...
    artifact: str | None
    bundle: Any  # hrdeploy.bundle.Bundle | None


def _parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise UserError(f"--bbox {text!r} is not x,y,w,h; write it as e.g. --bbox 120,20,260,480 (pixels)")
    return values  # type: ignore[return-value]


def _split_paths(paths: tuple[str, ...]) -> tuple[list[Path], list[Path]]:
    """(image files, bundle directories) from the positional arguments."""
    from hrdeploy.bundle import MANIFEST
    from hrdeploy.images import IMAGE_SUFFIXES, image_files

    images: list[Path] = []
    bundles: list[Path] = []
    for text in paths:
        p = Path(text)
        try:
            is_dir, is_bundle = p.is_dir(), (p / MANIFEST).is_file()
            has_images = is_dir and not is_bundle and any(
                c.suffix.lower() in IMAGE_SUFFIXES for c in p.iterdir() if c.is_file())
        except OSError as err:
            raise UserError(f"cannot read {p} ({os_reason(err, p)}); pass images and a bundle you can read") \
                from err
        if is_bundle:
            bundles.append(p)
        elif has_images:
            images.extend(image_files(p))
        elif is_dir:
            raise UserError(
                f"{p} is neither a bundle (no manifest.json) nor a folder of images; "
                "pass a bundle made by `hrdeploy export` or a folder of JPEG/PNG images"
            )
        elif p.is_file():
            images.append(p)
        else:
            what = "image" if p.suffix.lower() in IMAGE_SUFFIXES else "image or bundle directory"
            raise UserError(f"{what} {p} does not exist; check the path")
    return images, bundles


def _open_deployed(target: Any, threads: int | None) -> Any:
    """A runner for a bundle Artifact or a bare .onnx/.engine path."""
    from hrdeploy.runtime.factory import open_runner

    try:
        return open_runner(target, threads)
    except ImportError as err:
        from hrdeploy.errors import missing_dependency

        raise missing_dependency("tensorrt", extra="tensorrt", purpose="running TensorRT engines") from err


def _static_input_hw(runner: Any) -> tuple[int, int] | None:
    """(H, W) of an ONNX Runtime session's input when it is static, else None."""
    session = getattr(runner, "session", None)
    if session is None or not hasattr(session, "get_inputs"):
        return None
    shape = session.get_inputs()[0].shape
    if len(shape) == 4 and all(isinstance(v, int) for v in shape[2:]):
        return int(shape[2]), int(shape[3])
    return None


def _sibling_bundle(path: Path) -> Any:
    """The Bundle a file sits in (validated), or None for a file outside any bundle."""
    from hrdeploy.bundle import MANIFEST, Bundle

    return Bundle.open(path.parent) if (path.parent / MANIFEST).is_file() else None


def _override_size(cfg: Any, bundle: Any, input_size: tuple[int, int] | None) -> Any:
    if input_size is None or tuple(input_size) == tuple(cfg.input_hw):
        return cfg
    if bundle is not None and not bundle.input.dynamic_shape:
        h, w = cfg.input_hw
        raise UserError(
            f"the model was exported at a fixed {h}x{w} input; drop --input-size or re-export with --dynamic-shape"
        )
    stride = bundle.input.stride if bundle is not None else 32
    if input_size[0] % stride or input_size[1] % stride:
        raise UserError(f"--input-size {input_size[0]}x{input_size[1]} must divide by the stride {stride}")
    from hrdeploy.limits import MAX_INPUT_SIDE

    if max(input_size) > MAX_INPUT_SIDE:
        raise UserError(f"--input-size {input_size[0]}x{input_size[1]} is above {MAX_INPUT_SIDE} pixels a side")
    return replace(cfg, input_hw=tuple(input_size))


def _check_boxes(cfg: Any, has_boxes: bool) -> Any:
    if has_boxes and cfg.task == "pose_bottomup":
        raise UserError(f"{cfg.model} is bottom-up (it finds every person itself); drop --bbox")
    return cfg


def _resolve(
    bundles: list[Path], onnx: str | None, engine: str | None, model: str | None, checkpoint: str | None,
    dataset: str | None, input_size: tuple[int, int] | None, artifact: str, threads: int | None, has_boxes: bool,
) -> _Source:
    """The model the images run through, with its PoseConfig (a non-pose model is a UserError)."""
    _check_sources(bundles, onnx, engine, model)
    if bundles:
        return _bundle_source(bundles[0], input_size, artifact, threads, has_boxes)
    if onnx or engine:
        return _file_source(onnx, engine, model, dataset, input_size, threads, has_boxes)
    return _eager_source(model, checkpoint, dataset, input_size, threads, has_boxes)  # type: ignore[arg-type]


def _check_sources(bundles: list[Path], onnx: str | None, engine: str | None, model: str | None) -> None:
    """UserError unless exactly one model source is given (--model may name what a file is)."""
    given = len(bundles) + bool(onnx) + bool(engine)
    if len(bundles) > 1:
        raise UserError(f"{len(bundles)} bundle directories given ({', '.join(map(str, bundles))}); pass one")
    if given > 1:
        raise UserError("give one model source: a bundle DIR, --onnx FILE or --engine FILE")
    if given == 0 and model is None:
        raise UserError("no model given; pass a bundle DIR (from `hrdeploy export`), --onnx FILE, --engine FILE "
                        "or --model NAME")
    if bundles and model:
        raise UserError("--model is for --onnx/--engine files or eager inference; a bundle already names its model")


def _bundle_source(root: Path, input_size: tuple[int, int] | None, artifact: str, threads: int | None,
                   has_boxes: bool) -> _Source:
    """Artifact `artifact` of the bundle at `root`, configured from its manifest."""
    from hrdeploy.bundle import Bundle
    from hrdeploy.pose.pipeline import config_from_bundle

    opened = Bundle.open(root)
    cfg = _check_boxes(_override_size(config_from_bundle(opened), opened, input_size), has_boxes)
    art = opened.artifact(artifact)
    runner = _open_deployed(art, threads)
    return _Source(runner, cfg, f"{runner.name} {art.path.name}", str(art.path), opened)


def _file_source(onnx: str | None, engine: str | None, model: str | None, dataset: str | None,
                 input_size: tuple[int, int] | None, threads: int | None, has_boxes: bool) -> _Source:
    """An --onnx or --engine file; a fixed input size of the file overrides the configured one."""
    path = Path(onnx or engine)  # type: ignore[arg-type]
    if not path.is_file():
        raise UserError(f"{path} {not_a_file(path)}; pass an existing {'ONNX file' if onnx else 'TensorRT engine'}")
    sibling = _sibling_bundle(path)
    cfg = _file_config(path, bool(onnx), model, dataset, input_size, sibling)
    _check_boxes(cfg, has_boxes)
    runner = _open_deployed(path, threads)
    fixed = _static_input_hw(runner)
    if fixed is not None and fixed != tuple(cfg.input_hw):
        if input_size is not None:
            raise UserError(f"{path.name} takes a fixed {fixed[0]}x{fixed[1]} input; drop --input-size")
        cfg = replace(cfg, input_hw=fixed)
    return _Source(runner, cfg, f"{runner.name} {path.name}", str(path), sibling)


def _file_config(path: Path, is_onnx: bool, model: str | None, dataset: str | None,
                 input_size: tuple[int, int] | None, sibling: Any) -> Any:
    """A file's PoseConfig: from --model, else the bundle it sits in, else an ONNX's hrdeploy metadata."""
    from hrdeploy.pose.pipeline import config_from_bundle, config_from_onnx_metadata, config_from_spec

    if model:
        return config_from_spec(model, dataset, input_size)
    if sibling is not None:
        return _override_size(config_from_bundle(sibling), sibling, input_size)
    if is_onnx:
        from hrdeploy.bundle import load_onnx
        from hrdeploy.export.metadata import read_metadata

        return config_from_onnx_metadata(read_metadata(load_onnx(path)), input_size)
    raise UserError(f"{path} is not inside a bundle; pass --model NAME (and --dataset) to say what it is")


def _eager_source(model: str, checkpoint: str | None, dataset: str | None, input_size: tuple[int, int] | None,
                  threads: int | None, has_boxes: bool) -> _Source:
    """The registered eager model `model` (seeded weights unless a checkpoint is given)."""
    from hrdeploy.pose.pipeline import config_from_spec
    from hrdeploy.registry import get_spec
    from hrdeploy.runtime.factory import eager_runner
    from hrdeploy.zoo import build_model

    cfg = _check_boxes(config_from_spec(model, dataset, input_size), has_boxes)
    net = build_model(model, dataset=cfg.dataset, checkpoint=checkpoint)
    return _Source(eager_runner(net, get_spec(model).output_names, threads), cfg, "eager", None, None)


def _eager_reference(src: _Source, model: str | None, checkpoint: str | None, threads: int | None) -> Any:
    from hrdeploy.runtime.factory import eager_runner

    if src.artifact is None:
        raise UserError("--compare needs a deployed model to compare with eager: pass a bundle DIR, --onnx or --engine")
    if model:
        from hrdeploy.zoo import build_model

        net = build_model(model, dataset=src.cfg.dataset, checkpoint=checkpoint)
    elif src.bundle is not None:
        net = src.bundle.eager_model()
    else:
        raise UserError(
            "--compare with a file outside a bundle needs --model NAME [--checkpoint FILE] for the eager model"
        )
    return eager_runner(net, src.cfg.output_names, threads)


def _finite(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 4)


@click.command("infer")
@click.argument("paths", nargs=-1, required=True, metavar="IMAGE... [DIR]")
@click.option("--onnx", type=click.Path(dir_okay=False), help="Run this ONNX file (ONNX Runtime, CPU).")
@click.option("--engine", type=click.Path(dir_okay=False), help="Run this TensorRT engine.")
@click.option("--model", help="Registered model NAME: eager inference, or what an --onnx/--engine file is.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Weights for --model (default: seeded).")
@click.option("--dataset", type=click.Choice(["coco", "mpii"]), help="Keypoint set for --model.")
@click.option("--input-size", metavar="HxW", help="Model input height x width [default: the bundle's / model's].")
@click.option("--artifact", default="onnx", show_default=True,
              help="Bundle artifact to run (onnx, fp16, int8, engine_fp16, ...).")
@click.option("--bbox", "bboxes", multiple=True, metavar="x,y,w,h",
              help="Person box in image pixels (repeat for several people); top-down only [default: whole image].")
@click.option("--flip-test", is_flag=True, help="Average with the horizontally flipped input (dataset flip pairs).")
@click.option("--dark", is_flag=True, help="DARK sub-pixel refinement instead of the quarter-pixel shift (top-down).")
@click.option("--compare", is_flag=True, help="Also run the eager model; draw both and print their keypoint distance.")
@click.option("--kpt-thr", type=float, default=0.3, show_default=True, help="Draw keypoints scoring above this.")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), help="CPU threads for the runners.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="pred", show_default=True,
              help="Folder for the PNG and JSON files.")
def infer_cmd(
    paths: tuple[str, ...], onnx: str | None, engine: str | None, model: str | None, checkpoint: str | None,
    dataset: str | None, input_size: str | None, artifact: str, bboxes: tuple[str, ...], flip_test: bool,
    dark: bool, compare: bool, kpt_thr: float, threads: int | None, out_dir: str,
) -> None:
    """Detect keypoints on IMAGE files or folders with a bundle DIR, an ONNX/engine file or an eager model.

    Top-down models crop each --bbox (or the whole image) at the model's aspect ratio with 1.25 padding;
    HigherHRNet (bottom-up) finds and groups all people. Writes <out>/<image>.png and <out>/<image>.json.
    """
    from hrdeploy.export.options import parse_size
    from hrdeploy.io import check_writable

    check_writable(Path(out_dir), "--out")
    images, bundles = _split_paths(paths)
    if not images:
        raise UserError("no images given; pass image files or folders before the model")
    boxes = [_parse_box(b) for b in bboxes]
    size = parse_size(input_size) if input_size else None
    if compare and not (bundles or onnx or engine):
        raise UserError("--compare needs a deployed model to compare with eager: pass a bundle DIR, --onnx or --engine")
    src = _resolve(bundles, onnx, engine, model, checkpoint, dataset, size, artifact, threads, bool(boxes))
    click.get_current_context().call_on_close(src.runner.close)
    reference = _eager_reference(src, model, checkpoint, threads) if compare else None
    run = _Run(src, reference, boxes, flip_test, "dark" if dark else "default", kpt_thr, Path(out_dir))
    h, w = src.cfg.input_hw
    header = f"{src.cfg.model} ({src.cfg.task.replace('pose_', '')}, {src.cfg.dataset}, input {h}x{w}) on {src.label}"
    used: set[str] = set()
    distances: list[dict[str, Any]] = []
    for path in images:
        dist = _infer_image(run, path, _unique_stem(path, used), header)
        header = ""  # printed once the first image went through, so a bad first image gives one error line
        if dist is not None:
            distances.append(dist)
    if len(distances) > 1:
        means = [d["mean_px"] for d in distances if math.isfinite(d["mean_px"])]
        if means:
            click.echo(f"mean keypoint distance over {len(means)} images: {sum(means) / len(means):.4f} px")


@dataclass
class _Run:
    """What every image of one `infer` call goes through."""

    src: _Source
    reference: Any  # the eager runner of --compare, or None
    boxes: list[tuple[float, float, float, float]]
    flip_test: bool
    post_process: str  # "dark" | "default"
    kpt_thr: float
    out: Path


def _unique_stem(path: Path, used: set[str]) -> str:
    """`path`'s stem, with _1, _2, ... when an earlier image of the same name took it."""
    stem = path.stem
    i = 1
    while stem in used:
        stem, i = f"{path.stem}_{i}", i + 1
    used.add(stem)
    return stem


def _infer_image(run: _Run, path: Path, stem: str, header: str) -> dict[str, Any] | None:
    """Predict, draw and write one image's PNG and JSON, print its line; the distance to eager with --compare."""
    from hrdeploy.images import read_image
    from hrdeploy.io import write_json
    from hrdeploy.pose.draw import draw_people
    from hrdeploy.pose.preprocess import check_box

    src, cfg = run.src, run.src.cfg
    image = read_image(path)
    for box in run.boxes:
        check_box(box, image.shape[:2])
    people = _predict(run, src.runner, image)
    record = _record(run, path, image, people)
    drawn = draw_people(image, people, cfg.keypoint_names, cfg.skeleton, run.kpt_thr,
                        title=src.label if run.reference else None)
    dist = None
    if run.reference is not None:
        dist, record["compare"], drawn = _compare(run, image, people, drawn)
    png, js = run.out / f"{stem}.png", run.out / f"{stem}.json"
    _save_png(drawn, png)
    write_json(js, record)
    n = len(people)
    if header:
        click.echo(header)
    click.echo(f"{path.name}: {n} {'person' if n == 1 else 'people'} -> {png}, {js}")
    if dist is not None:
        click.echo(f"  mean keypoint distance eager vs {src.runner.name}: {dist['mean_px']:.4f} px "
                   f"(max {dist['max_px']:.4f} px, {dist['pairs']} people paired)")
    return dist


def _predict(run: _Run, runner: Any, image: Any) -> list[Any]:
    """The people `runner` finds in `image` with the run's boxes, flip test and post-processing."""
    from hrdeploy.pose.pipeline import predict

    return predict(runner, image, run.src.cfg, run.boxes or [None], flip_test=run.flip_test,
                   post_process=run.post_process)


def _record(run: _Run, path: Path, image: Any, people: list[Any]) -> dict[str, Any]:
    """The image's JSON: the image, the model and how it ran, and each person's keypoints."""
    cfg = run.src.cfg
    return {
        "image": str(path), "width": int(image.shape[1]), "height": int(image.shape[0]),
        "model": cfg.model, "task": cfg.task, "dataset": cfg.dataset, "backend": run.src.runner.name,
        "artifact": run.src.artifact, "input_size": list(cfg.input_hw), "flip_test": run.flip_test,
        "post_process": run.post_process if cfg.task == "pose_topdown" else "associative_embedding",
        "people": [p.to_json(cfg.keypoint_names) for p in people],
    }


def _compare(run: _Run, image: Any, people: list[Any], drawn: Any) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Run the eager reference on `image`: (keypoint distance, the JSON's "compare" entry, eager | deployed)."""
    from hrdeploy.pose.draw import draw_people, side_by_side
    from hrdeploy.pose.pipeline import keypoint_distance

    cfg = run.src.cfg
    ref_people = _predict(run, run.reference, image)
    dist = keypoint_distance(ref_people, people, in_order=cfg.task == "pose_topdown")
    entry = {
        "reference": "eager", "people": [p.to_json(cfg.keypoint_names) for p in ref_people],
        "mean_keypoint_distance_px": _finite(dist["mean_px"]),
        "max_keypoint_distance_px": _finite(dist["max_px"]),
        "paired_people": dist["pairs"], "unpaired_people": dist["unpaired"],
    }
    ref_drawn = draw_people(image, ref_people, cfg.keypoint_names, cfg.skeleton, run.kpt_thr, title="eager")
    return dist, entry, side_by_side([ref_drawn, drawn])


def _save_png(img: Any, path: Path) -> None:
    from hrdeploy.io import atomic_path

    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
