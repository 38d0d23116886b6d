"""Upstream facts the packaged configs depend on, kept as data with their source (file, commit, version).

`TENSORRTLLM_BACKEND`: tensorrtllm_backend's C++ backend in the TensorRT-LLM 1.2 line (read from
its source; never run here). Tests check the generated GPU configs against it.
"""

from __future__ import annotations

import json
from pathlib import Path

TENSORRTLLM_BACKEND = json.loads((Path(__file__).parent / "tensorrtllm_backend_1.2.json").read_text(encoding="utf-8"))
