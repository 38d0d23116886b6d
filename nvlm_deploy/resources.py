"""Files the package ships besides its modules: the Triton model templates.

A wheel carries them as `nvlm_deploy/triton_repo/` (pyproject's force-include); a source checkout
(editable install, or running from the repository) has them at the top level as `triton_repo/`.
"""

from __future__ import annotations

from pathlib import Path

from nvlm_deploy.errors import DeployError

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES_NAME = "triton_repo"
# one file every complete copy has; a bare directory of that name (say in site-packages) is not one
TEMPLATES_MARKER = Path("ensemble") / "config.pbtxt.template"


def templates_dir() -> Path:
    """The Triton templates: the wheel's `nvlm_deploy/triton_repo/`, else the checkout's `triton_repo/`."""
    packaged = PACKAGE_DIR / TEMPLATES_NAME  # wheel install
    checkout = PACKAGE_DIR.parent / TEMPLATES_NAME  # editable install or the repository itself
    for candidate in (packaged, checkout):
        if (candidate / TEMPLATES_MARKER).is_file():
            return candidate
    raise DeployError(
        f"the Triton model templates are missing: neither {packaged / TEMPLATES_MARKER} (installed wheel) nor "
        f"{checkout / TEMPLATES_MARKER} (source checkout) exists, so this nvlm-deploy installation is "
        "incomplete. Reinstall it: `pip install --force-reinstall --no-deps nvlm-deploy` (from a checkout: "
        "`pip install .`, or `pip install -e .` to keep editing, with triton_repo/ at the repository's top level)."
    )
