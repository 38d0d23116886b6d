"""Shared by the stage commands: settle the target's limits from the flags and say what they are."""

from __future__ import annotations

from pathlib import Path


def settle_and_report(model_dir: str | Path, target_dir: str | Path, choices: dict[str, int | None], *,
                      rebuilding: str | None = None):
    """Store the target's limits (flags over the stored ones) and print them in one line."""
    from nvlm_deploy.config import NvlmConfig
    from nvlm_deploy.contracts.target import Target

    limits = Target(target_dir).settle_limits(NvlmConfig.from_hf(model_dir), model_dir=model_dir, choices=choices,
                                              rebuilding=rebuilding)
    print(f"target limits: {limits.max_images} image(s) x {limits.max_tiles_per_image} tiles "
          f"({limits.max_tiles_before_thumbnail} + thumbnail) x {limits.tokens_per_tile} tokens; "
          f"input {limits.max_input_len}, output {limits.max_output_len}, batch {limits.max_batch_size} "
          f"({Path(target_dir) / 'manifest.json'})")
    return limits
