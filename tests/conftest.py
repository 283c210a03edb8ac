"""Shared fixtures. Model weights are seeded (no downloads); exports use small inputs."""

from __future__ import annotations

import os

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
