"""DeploymentLimits: one meaning per field, every size derived, defaults from the model."""

import pytest

from nvlm_deploy.config import NvlmConfig
from nvlm_deploy.contracts.limits import DeploymentLimits
from nvlm_deploy.errors import DeployError


def nvlm_d(**choices):
    return DeploymentLimits(**{"tokens_per_tile": 256, "thumbnail": True, "max_images": 4,
                               "max_tiles_before_thumbnail": 6, "max_input_len": 8192, "max_output_len": 1024,
                               "max_batch_size": 8, **choices})


def test_thumbnail_counted_once_and_named():
    limits = nvlm_d()
    assert (limits.max_tiles_per_image, limits.max_tiles_per_request) == (7, 28)
    assert limits.prompt_table_rows_per_request == 28 * 256
    assert limits.max_prompt_embedding_table_size == 8 * 28 * 256
    single = nvlm_d(max_tiles_before_thumbnail=1)  # one tile: no thumbnail (HF dynamic_preprocess)
    assert single.max_tiles_per_image == 1
    assert nvlm_d(thumbnail=False).max_tiles_per_image == 6


def test_defaults_come_from_the_model(tiny_checkpoint):
    config = NvlmConfig.from_hf(tiny_checkpoint)
    limits = DeploymentLimits.for_model(config)
    assert limits.tokens_per_tile == config.tokens_per_tile
    assert limits.max_tiles_before_thumbnail == config.max_dynamic_patch
    assert limits.max_input_len == limits.prompt_table_rows_per_request + 1024


def test_covers_names_what_is_beyond():
    built = nvlm_d(max_images=1)
    assert built.covers(nvlm_d(max_images=1, max_output_len=512)) == []
    assert built.covers(nvlm_d(max_images=2)) == ["max_images 2 > 1"]


def test_storage_round_trip_and_bad_values():
    limits = nvlm_d()
    stored = limits.as_dict()
    assert stored["derived"]["max_tiles_per_request"] == 28
    assert DeploymentLimits.from_dict(stored) == limits
    with pytest.raises(DeployError, match="limits lack"):
        DeploymentLimits.from_dict({"max_images": 1})
    for field, value in (("max_images", 0), ("max_batch_size", -1), ("max_output_len", True), ("max_input_len", 1.5)):
        with pytest.raises(DeployError, match=f"{field} must be a positive integer"):
            nvlm_d(**{field: value})


@pytest.mark.parametrize("flag, value", [("max_images", 0), ("max_tiles_before_thumbnail", 0), ("max_input_len", -5),
                                         ("max_output_len", 0), ("max_batch_size", 0)])
def test_impossible_choices_are_refused_naming_the_flag(tiny_checkpoint, flag, value):
    config = NvlmConfig.from_hf(tiny_checkpoint)
    with pytest.raises(DeployError, match=flag):
        DeploymentLimits.for_model(config, **{flag: value})


def test_limits_no_request_can_reach_are_refused(tiny_checkpoint):
    with pytest.raises(DeployError, match="--max-images 100 can never be reached"):
        nvlm_d(max_images=100, max_input_len=8192)  # 100 one-tile images: 25600 tokens > 8192
    config = NvlmConfig.from_hf(tiny_checkpoint)
    with pytest.raises(DeployError, match="max_position_embeddings"):
        DeploymentLimits.for_model(config, max_output_len=config.llm.max_position_embeddings)
    fits = DeploymentLimits.for_model(config)
    assert fits.within_model(config) is fits
