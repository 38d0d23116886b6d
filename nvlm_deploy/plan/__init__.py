"""Deployment planning: which GPUs, tp x pp and recipe serve NVLM-D, and how fast, before building.

Modules: `gpus` (THE registry of GPU types, datasheet figures with sources), `recipes` (bytes per
weight and the SM each decoder recipe needs), `params` (parameter counts from config.json, checked
against the safetensors headers when present), `memory` (bytes per rank), `roofline` (speed
bounds), `planner` (the search), `render` (the table). Importing this package loads no torch.
"""

from nvlm_deploy.plan.gpus import GPUS, GpuSpec, gpu_spec, match_gpu

__all__ = ["GPUS", "GpuSpec", "gpu_spec", "match_gpu"]
