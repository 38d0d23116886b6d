"""templates_dir(): the wheel's copy first, the checkout's second, else an error that says to reinstall."""

from __future__ import annotations

from pathlib import Path

import pytest

from nvlm_deploy import resources
from nvlm_deploy.errors import DeployError

REPO = Path(__file__).resolve().parents[1]


def _templates(root: Path) -> Path:
    marker = root / resources.TEMPLATES_MARKER
    marker.parent.mkdir(parents=True)
    marker.write_text("")
    return root


def test_source_checkout_uses_the_top_level_triton_repo():
    assert resources.templates_dir() == REPO / "triton_repo"


def test_wheel_layout_wins_over_a_checkout(tmp_path, monkeypatch):
    package = tmp_path / "site-packages" / "nvlm_deploy"
    packaged = _templates(package / "triton_repo")
    _templates(tmp_path / "site-packages" / "triton_repo")
    monkeypatch.setattr(resources, "PACKAGE_DIR", package)
    assert resources.templates_dir() == packaged


def test_a_directory_without_the_templates_does_not_count(tmp_path, monkeypatch):
    package = tmp_path / "site-packages" / "nvlm_deploy"
    (package / "triton_repo").mkdir(parents=True)
    (tmp_path / "site-packages" / "triton_repo").mkdir()
    monkeypatch.setattr(resources, "PACKAGE_DIR", package)
    with pytest.raises(DeployError, match=r"(?s)templates are missing.*Reinstall"):
        resources.templates_dir()
