"""Shared fixtures. Model weights are seeded (no downloads); exports use small inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs `-n 2`) each worker gets one torch thread: two workers on
    two cores, not two workers fighting over four threads."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the `slow` tests (the whole-model exports) first, so two xdist workers finish together
    instead of one of them starting a 3-minute export at the end (`make test` uses `--dist worksteal`,
    so an idle worker takes queued tests from the busy one)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def cli_runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def lite18_bundle(tmp_path_factory: pytest.TempPathFactory):
    """lite_hrnet_18 exported once per session with a dynamic batch at 128x96 (shared by stage tests)."""
    from hrdeploy.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "lite_hrnet_18"
    export_bundle("lite_hrnet_18", out, input_size=(128, 96), dynamic_batch=True)
    return out


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (trained weights, COCO and MPII photos); the test skips, saying why, when it is absent."""
    if not (SHARED_DATA / "weights" / "pp_tinypose_128x96.safetensors").is_file():
        pytest.skip(f"{SHARED_DATA} is absent: the trained PP-TinyPose weights and the COCO/MPII photos are needed")
    return SHARED_DATA


@pytest.fixture(scope="session")
def trained_128_bundle(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained PP-TinyPose wider_naive_lite_hrnet_18 at 128x96, exported once per session (dynamic batch)."""
    from hrdeploy.export import export_bundle

    out = tmp_path_factory.mktemp("trained") / "tp128"
    export_bundle("wider_naive_lite_hrnet_18", out, input_size=(128, 96), dynamic_batch=True,
                  checkpoint=str(shared_data / "weights" / "pp_tinypose_128x96.safetensors"))
    return out
