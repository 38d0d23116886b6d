"""The vision encoder's TensorRT engine: `<target>/vision/model.plan` + `config.json`.

Thin over the TensorRT 10 Python API (imported lazily; nothing here runs without it): parse the
ONNX graph from its file (so external data is found), one optimization profile over the tile axis
T, precision from the export dtype, a timing cache loaded before and saved after every build.
Everything TensorRT-free (profile shapes, flags, config.json content) is plain data and functions.
The tile profile comes from the target's DeploymentLimits: one call takes every tile of up to
`requests_per_call` requests at their limits.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from nvlm_deploy.contracts.limits import DeploymentLimits
from nvlm_deploy.contracts.manifest import OnnxManifest
from nvlm_deploy.contracts.precision import PRECISIONS, precision
from nvlm_deploy.contracts.vision_io import ENGINE_CONFIG_FILE, INPUT_NAME, ONNX_FILE, OUTPUT_NAME, PLAN_FILE
from nvlm_deploy.errors import DeployError

TIMING_CACHE_FILE = "vision.timing_cache"  # next to vision/, so rebuilding vision/ keeps it
TENSORRT_INSTALL = ("pip install 'tensorrt-cu12>=10.1,<11' (NVIDIA's wheel; or use the TensorRT-LLM "
                    "container, which ships it) on a machine with an NVIDIA GPU")
NO_TENSORRT_NOTE = ("Without TensorRT, the CPU runtime serves the same model repository: the vision "
                    "encoder then runs this ONNX graph with ONNX Runtime (`--runtime cpu`).")

# --hardware-compat -> (trt.HardwareCompatibilityLevel member, lowest compute capability it runs on).
# TensorRT 10 (NvInfer.h, 10.13/10.14): AMPERE_PLUS "Ampere and newer GPUs", i.e. SM >= 8.0; NONE:
# the build GPU's SM only. launch.engine_mismatches reads the minimum.
HARDWARE_COMPAT: dict[str, tuple[str, str | None]] = {"none": ("NONE", None), "ampere+": ("AMPERE_PLUS", "8.0")}


@dataclass(frozen=True)
class TileProfile:
    """The optimization profile over T (the tile axis): min 1, opt one image, max a full batch."""

    min: int
    opt: int
    max: int

    def shapes(self, image_size: int) -> dict[str, list[int]]:
        return {k: [t, 3, image_size, image_size] for k, t in asdict(self).items()}


def tile_profile(limits: DeploymentLimits, *, requests_per_call: int = 1) -> TileProfile:
    """min 1 tile; opt one image at its most tiles; max every tile of `requests_per_call` full requests.

    Args:
        limits: the target's limits (images per request, tiles per image).
        requests_per_call: requests whose tiles one engine call takes together.
    """
    if requests_per_call < 1:
        raise DeployError(f"--requests-per-call {requests_per_call} must be >= 1 (requests per vision-engine call).")
    return TileProfile(min=1, opt=limits.max_tiles_per_image, max=limits.max_tiles_per_request * requests_per_call)


def require_tensorrt(*, purpose: str):
    """`import tensorrt`, or a DeployError naming the wheel and the CPU runtime alternative."""
    from nvlm_deploy.lazy import require

    try:
        return require("tensorrt", install=TENSORRT_INSTALL, purpose=purpose)
    except DeployError as exc:
        raise DeployError(f"{exc}\n{NO_TENSORRT_NOTE}") from None


def engine_config(onnx: OnnxManifest, *, profile: TileProfile, hardware_compat: str, tensorrt_version: str,
                  gpu: dict, build_seconds: float | None = None, timing_cache: dict | None = None) -> dict:
    """The content of vision/config.json: I/O, precision, profile, TensorRT version, GPU and SM."""
    prec = precision(onnx.precision)
    size = onnx.image_size
    return {
        "plan": PLAN_FILE,
        "inputs": [{"name": INPUT_NAME, "dtype": prec.trtllm, "shape": ["num_tiles", 3, size, size]}],
        "outputs": [{"name": OUTPUT_NAME, "dtype": prec.trtllm,
                     "shape": ["num_tiles", onnx.tokens_per_tile, onnx.hidden_size]}],
        "precision": prec.name,
        "builder_flags": [prec.tensorrt_flag] if prec.tensorrt_flag else [],
        "profile": {"axis": "num_tiles", **asdict(profile), "shapes": {INPUT_NAME: profile.shapes(size)}},
        "hardware_compatibility": hardware_compat,
        "tensorrt_version": tensorrt_version,
        "gpu": {"name": gpu.get("name"), "compute_capability": gpu.get("compute_capability")},
        "build_seconds": build_seconds,
        "timing_cache": timing_cache,
    }


def build_vision_engine(onnx_dir: str | Path, out_dir: str | Path, *, requests_per_call: int = 1,
                        hardware_compat: str = "none", timing_cache: str | Path | None = None,
                        workspace_gib: float | None = None, force: bool = False,
                        limits: dict[str, int | None] | None = None) -> Path:
    """Build `<out_dir>/vision/` from the exported graph. Needs TensorRT and an NVIDIA GPU.

    Args:
        onnx_dir: the onnx/ directory of `convert vision` (or the target directory holding it).
        out_dir: the target directory; this stage owns `vision/`.
        requests_per_call: requests whose tiles one engine call takes (the profile's max T is
            max tiles per request x this).
        hardware_compat: "none" (this GPU's SM only) or "ampere+" (any SM >= 8.0, somewhat slower).
        timing_cache: timing cache file, read if present and rewritten after the build;
            None means `<out_dir>/vision.timing_cache`.
        workspace_gib: builder workspace limit; None lets TensorRT use what the GPU has.
        force: replace an existing `<out_dir>/vision`.
        limits: limit choices to settle on the target first (None: the target's).
    Returns:
        the vision/ directory.
    """
    from nvlm_deploy.artifacts import atomic_output_dir, write_recorded
    from nvlm_deploy.build.gpu import describe_local_gpu
    from nvlm_deploy.config import NvlmConfig
    from nvlm_deploy.contracts.manifest import VisionEngineManifest, tool_versions, write_manifest
    from nvlm_deploy.contracts.target import Target

    source = Target.of(onnx_dir, stage="onnx")
    onnx = source.manifest("onnx")
    if hardware_compat not in HARDWARE_COMPAT:
        raise DeployError(f"--hardware-compat {hardware_compat!r} is not one of {sorted(HARDWARE_COMPAT)}.")
    target = Target(out_dir)
    settled = target.settle_limits(NvlmConfig.from_hf(onnx.model_dir), model_dir=onnx.model_dir,
                                   choices=limits or {}, rebuilding="vision", store=False)
    profile = tile_profile(settled, requests_per_call=requests_per_call)
    stage_dir = target.dir("vision")
    if stage_dir.exists() and not force:
        raise DeployError(f"{stage_dir} already exists; pass --force to replace it, or choose another --out.")
    trt = require_tensorrt(purpose="building the vision engine")
    gpu = describe_local_gpu()
    if gpu.name is None:
        raise DeployError(f"no NVIDIA GPU is visible (nvidia-smi found none): TensorRT engines are built on "
                          f"the GPU type they will run on. {NO_TENSORRT_NOTE}")
    cache_path = Path(timing_cache) if timing_cache else target.root / TIMING_CACHE_FILE
    start = time.perf_counter()
    plan, io, cache_info = _build_plan(trt, source.dir("onnx") / ONNX_FILE, precision_name=onnx.precision,
                                       shapes=profile.shapes(onnx.image_size), hardware_compat=hardware_compat,
                                       cache_path=cache_path, workspace_gib=workspace_gib)
    seconds = round(time.perf_counter() - start, 1)
    config = engine_config(onnx, profile=profile, hardware_compat=hardware_compat, tensorrt_version=trt.__version__,
                           gpu=gpu.as_dict(), build_seconds=seconds, timing_cache=cache_info)
    config["network_io"] = io
    with atomic_output_dir(stage_dir, force=force) as tmp:
        write_recorded(tmp / PLAN_FILE, plan)  # hashed on the way, for the manifest's file records
        (tmp / ENGINE_CONFIG_FILE).write_text(json.dumps(config, indent=2))
        write_manifest(tmp, VisionEngineManifest(
            onnx_dir=str(source.dir("onnx").resolve()), onnx_created=onnx.created, precision=onnx.precision,
            hardware_compat=hardware_compat, requests_per_call=requests_per_call, profile=asdict(profile),
            plan_bytes=len(plan), gpu=gpu.as_dict(), build_seconds=seconds, tools=tool_versions("tensorrt")))
    target.store_limits(settled, model_dir=onnx.model_dir)
    return stage_dir


def _build_plan(trt, onnx_path: Path, *, precision_name: str, shapes: dict[str, list[int]], hardware_compat: str,
                cache_path: Path, workspace_gib: float | None) -> tuple[bytes, list[dict], dict]:
    """Parse, configure, build. Returns (serialized plan, network I/O, timing-cache facts)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(parser.get_error(i).desc() for i in range(parser.num_errors))
        raise DeployError(f"TensorRT {trt.__version__} could not parse {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    flag = precision(precision_name).tensorrt_flag
    if flag:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, HARDWARE_COMPAT[hardware_compat][0])
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(network.get_input(0).name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(trt_profile)
    loaded = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(loaded)
    if not config.set_timing_cache(cache, False):  # False: refuse a cache of another GPU / TensorRT version
        raise DeployError(f"timing cache {cache_path} was written for another GPU or TensorRT version; delete it "
                          "or pass --timing-cache with a new file.")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DeployError(f"TensorRT {trt.__version__} failed to build the engine from {onnx_path} "
                          "(its log above says why; a smaller --max-batch or --workspace-gib may help).")
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    io = [{"name": t.name, "dtype": str(t.dtype), "shape": list(t.shape), "mode": mode}
          for mode, count, get in (("input", network.num_inputs, network.get_input),
                                   ("output", network.num_outputs, network.get_output))
          for t in (get(i) for i in range(count))]
    return bytes(serialized), io, {"path": str(cache_path), "loaded_bytes": len(loaded)}


def run_engine(plan_path: str | Path, pixel_values, *, device: str = "cuda"):
    """Run a built plan once on `pixel_values` (torch tensor [T,3,S,S]); returns the output tensor.

    For tests and checks; serving goes through Triton's TensorRT backend.
    """
    import torch

    trt = require_tensorrt(purpose="running the vision engine")
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(plan_path).read_bytes())
    context = engine.create_execution_context()
    torch_dtypes = {getattr(trt, p.tensorrt): p.torch_dtype() for p in PRECISIONS.values()}
    x = pixel_values.to(device=device, dtype=torch_dtypes[engine.get_tensor_dtype(INPUT_NAME)]).contiguous()
    context.set_input_shape(INPUT_NAME, tuple(x.shape))
    out = torch.empty(tuple(context.get_tensor_shape(OUTPUT_NAME)), device=device,
                      dtype=torch_dtypes[engine.get_tensor_dtype(OUTPUT_NAME)])
    context.set_tensor_address(INPUT_NAME, x.data_ptr())
    context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
    stream = torch.cuda.current_stream(device)
    if not context.execute_async_v3(stream.cuda_stream):
        raise DeployError(f"TensorRT failed to run {plan_path} on input {list(x.shape)}.")
    stream.synchronize()
    return out
