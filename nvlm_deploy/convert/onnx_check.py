"""Every export checks itself: the ONNX graph under ONNX Runtime against the torch reference.

For each tile count T the same random pixel values go through both; each output's max absolute
and relative difference is reported against the tolerance of the export dtype. A shape mismatch
is an error, as is a difference over tolerance.

Relative difference is `max|onnx - torch| / max|torch|` (the error relative to the output's
scale). The element-wise ratio is reported too (`max_elementwise_rel`, with a floor of 1e-3 x
the output scale in the denominator) but not judged: near-zero outputs make it meaningless.
Polygraphy's Comparator would do the same comparison, but its runners hand arrays over as numpy,
which has no bf16; the bf16 graph's I/O therefore goes through `OnnxVisionEncoder`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from nvlm_deploy.contracts.precision import Tolerance, precision
from nvlm_deploy.contracts.vision_io import OUTPUT_NAME
from nvlm_deploy.errors import DeployError

if TYPE_CHECKING:
    import torch

CHECK_TILES = (1, 3, 7)


# Same-dtype comparison (graph in precision P vs torch in P); tolerances are the precision
# registry's (contracts.precision.Precision.tolerance).


@dataclass(frozen=True)
class OutputDiff:
    tiles: int
    output: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    max_elementwise_rel: float
    passed: bool


@dataclass(frozen=True)
class CheckReport:
    dtype: str
    tolerance: Tolerance
    diffs: tuple[OutputDiff, ...]
    seconds: float

    @property
    def passed(self) -> bool:
        return all(d.passed for d in self.diffs)

    def as_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed}

    @classmethod
    def from_dict(cls, data: dict) -> "CheckReport":
        diffs = tuple(OutputDiff(**{**d, "shape": tuple(d["shape"])}) for d in data["diffs"])
        return cls(data["dtype"], Tolerance(**data["tolerance"]), diffs, data["seconds"])

    def table(self) -> str:
        rows = [f"| T | output | shape | max abs | max rel | limit ({self.dtype}) | ok |", "|---|---|---|---|---|---|---|"]
        for d in self.diffs:
            rows.append(f"| {d.tiles} | {d.output} | {list(d.shape)} | {d.max_abs:.3g} | {d.max_rel:.3g} | "
                        f"abs {self.tolerance.atol:g} or rel {self.tolerance.rtol:g} | {'yes' if d.passed else 'NO'} |")
        return "\n".join(rows)


def compare_output(actual: np.ndarray, expected: np.ndarray, *, tiles: int, output: str,
                   tolerance: Tolerance) -> OutputDiff:
    """One output's differences; passes when max abs <= atol or max rel <= rtol."""
    if actual.shape != expected.shape:
        raise DeployError(f"ONNX output {output!r} has shape {list(actual.shape)} at T={tiles}, torch "
                          f"gives {list(expected.shape)}: the export is wrong (re-export; report a bug if it persists).")
    actual, expected = actual.astype(np.float64), expected.astype(np.float64)
    err = np.abs(actual - expected)
    scale = float(np.abs(expected).max()) or 1.0
    max_abs = float(err.max())
    max_rel = max_abs / scale
    elementwise = float((err / (np.abs(expected) + 1e-3 * scale)).max())
    finite = bool(np.isfinite(actual).all())
    passed = finite and (max_abs <= tolerance.atol or max_rel <= tolerance.rtol)
    return OutputDiff(tiles, output, tuple(actual.shape), max_abs, max_rel, elementwise, passed)


def check_against_torch(onnx_path, reference: "torch.nn.Module", *, dtype: str,
                        tiles: tuple[int, ...] = CHECK_TILES, seed: int = 0, threads: int | None = None) -> CheckReport:
    """Run the graph and `reference` on the same pixel values for each T; return the diffs.

    Args:
        onnx_path: the exported graph (file or onnx/ directory).
        reference: module mapping pixel_values [T,3,S,S] (in its parameters' dtype) to embeddings.
        dtype: "fp32" | "fp16" | "bf16": picks the tolerance.
        tiles: tile counts to run.
    """
    import torch

    from nvlm_deploy.progress import progress
    from nvlm_deploy.runtime.vision import OnnxVisionEncoder

    start = time.perf_counter()
    encoder = OnnxVisionEncoder(onnx_path, threads=threads)
    param_dtype = next(reference.parameters()).dtype
    tolerance = precision(dtype).tolerance
    rng = np.random.default_rng(seed)
    diffs = []
    for t in progress(tiles, desc="check ONNX Runtime vs torch", unit="run"):
        pixels = rng.standard_normal((t, 3, encoder.image_size, encoder.image_size), dtype=np.float32)
        actual = encoder.encode(pixels)
        with torch.inference_mode():
            expected = reference(torch.from_numpy(pixels).to(param_dtype)).float().numpy()
        diffs.append(compare_output(actual, expected, tiles=t, output=OUTPUT_NAME, tolerance=tolerance))
    return CheckReport(dtype, tolerance, tuple(diffs), time.perf_counter() - start)


def require_passed(report: CheckReport, *, where: str) -> CheckReport:
    if not report.passed:
        raise DeployError(f"{where}: ONNX Runtime disagrees with the torch reference beyond the {report.dtype} "
                          f"tolerance:\n{report.table()}\nThe export is wrong; do not deploy it.")
    return report
