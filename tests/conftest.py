"""Shared fixtures. Model weights are seeded (no downloads); exports use small inputs."""

from __future__ import annotations

import pytest
from click.testing import CliRunner


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
