"""Demo training: the batch layout, a short run that learns, and the checkpoint it writes."""

import dataclasses
import json

import pytest
import torch

from nvlm_deploy.demo.tasks import make_sample
from nvlm_deploy.demo.train import (TrainSettings, build_tokenizer, answer_loss_sum, batch_logits, build_model,
                                    buckets, collate, encode_example, step_examples, train)
from nvlm_deploy.model.tiny import preset_config


def small_config():
    """The demo preset with one layer each side: same layout, fast steps."""
    config = preset_config("demo")
    return dataclasses.replace(config, vision=dataclasses.replace(config.vision, num_hidden_layers=1),
                               llm=dataclasses.replace(config.llm, num_hidden_layers=1))


@pytest.fixture(scope="module")
def setup():
    from nvlm_deploy.preprocess.request import Preprocessor

    settings = TrainSettings(steps=1, batch_size=8)
    model = build_model(settings, small_config())
    tokenizer = build_tokenizer(model.config)
    return settings, model, Preprocessor(model.config, tokenizer)


def test_examples_use_the_nvlm_d_prompt_layout(setup):
    _, model, pre = setup
    sample = make_sample("striped", split="train", seed=0, index=1)  # 3 tiles + thumbnail
    ex = encode_example(pre, sample)
    text = pre.tokenizer.decode([i for i in ex.input_ids if i < model.vocab_size], skip_special_tokens=False)
    assert "<Image><tile_1><tile_2><tile_3><tile_global_thumbnail></Image>" in text
    assert text.endswith(f"<|im_start|>assistant\n{sample.answer}<|im_end|>")
    slots = [i - model.vocab_size for i in ex.input_ids if i >= model.vocab_size]
    assert slots == list(range(4 * model.config.tokens_per_tile)) and ex.pixel_values.shape == (4, 3, 112, 112)


def test_collate_offsets_image_slots_and_masks_all_but_the_answer(setup):
    settings, model, pre = setup
    examples = step_examples(pre, settings, 0)
    batch = collate(examples, vocab_size=model.vocab_size, tokens_per_tile=16, pad_id=pre.tokenizer.pad_id)
    tiles = [len(e.pixel_values) for e in examples]
    assert batch.pixel_values.shape[0] == sum(tiles)
    for b, e in enumerate(examples):
        slots = batch.input_ids[b][batch.input_ids[b] >= model.vocab_size] - model.vocab_size
        assert int(slots.min()) == 16 * sum(tiles[:b]) and int(slots.max()) == 16 * sum(tiles[:b + 1]) - 1
        targets = batch.labels[b][batch.labels[b] != -100].tolist()
        assert targets == e.input_ids[e.answer_start:]  # answer word + <|im_end|>
        assert int(batch.attention_mask[b].sum()) == len(e.input_ids)


def test_answer_only_loss_matches_full_logits(setup):
    settings, model, pre = setup
    batch = collate(step_examples(pre, settings, 0), vocab_size=model.vocab_size, tokens_per_tile=16,
                    pad_id=pre.tokenizer.pad_id)
    with torch.no_grad():
        total, count = answer_loss_sum(model, batch)
        full = torch.nn.functional.cross_entropy(batch_logits(model, batch).flatten(0, 1), batch.labels.flatten())
    torch.testing.assert_close(total / count, full, rtol=1e-4, atol=1e-4)


def test_buckets_keep_single_and_multi_tile_samples_apart(setup):
    settings, _, pre = setup
    groups = buckets(step_examples(pre, dataclasses.replace(settings, batch_size=16), 0))
    assert [sorted({len(e.pixel_values) for e in g}) for g in groups] == [[1], [3, 4]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    settings = TrainSettings(steps=12, batch_size=8, warmup=0, lr=2e-3, log_every=1)
    out = tmp_path_factory.mktemp("demo") / "ckpt"
    return settings, out, train(settings, out=out, config=small_config(), log=lambda line: None)


def test_a_short_run_lowers_the_loss(trained):
    _, _, summary = trained
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < 0.7 * losses[0]


def test_checkpoint_has_the_nvlm_d_layout_and_loads(trained):
    from nvlm_deploy.model.nvlm import NvlmModel
    from nvlm_deploy.preprocess.request import Preprocessor

    settings, out, summary = trained
    raw = json.loads((out / "config.json").read_text())
    assert raw["architectures"] == ["NVLM_D"] and raw["force_image_size"] == 112
    assert raw["vision_config"]["image_size"] == 112 and raw["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
    for name in ("model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "TRAINING.md"):
        assert (out / name).is_file(), name
    assert settings.command(out) in (out / "TRAINING.md").read_text()
    model = NvlmModel.from_pretrained(out, dtype="fp32")
    pre = Preprocessor.from_model_dir(out)
    prepared = pre.prepare("What color is the shape?", [make_sample("color", split="eval", seed=0, index=0).image])
    feats = model.extract_feature(torch.from_numpy(prepared.pixel_values))
    assert feats.shape == (1, 16, model.config.llm.hidden_size)
    qkv = model.vision_model.encoder.layers[0].attn.qkv.weight  # dummy heads stay exactly zero
    inner, real = qkv.shape[0] // 3, model.config.vision.hidden_size
    assert not qkv[real:inner].any()


def test_same_seed_same_weights(tmp_path):
    settings = TrainSettings(steps=2, batch_size=8, warmup=0)
    a = train(settings, out=tmp_path / "a", config=small_config(), log=lambda line: None)
    b = train(settings, out=tmp_path / "b", config=small_config(), log=lambda line: None)
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    for shard in sorted((tmp_path / "a").glob("*.safetensors")):
        assert shard.read_bytes() == (tmp_path / "b" / shard.name).read_bytes()


def test_task_weights_fill_the_batch_by_a_fixed_slot_pattern(setup):
    from collections import Counter

    _, _, pre = setup
    settings = TrainSettings(batch_size=16, task_weights=(1, 1, 3, 3))
    first, second = step_examples(pre, settings, 0), step_examples(pre, settings, 1)
    tiles = [len(e.pixel_values) for e in first]
    assert Counter(tiles) == Counter({1: 10, 3: 3, 4: 3}) == Counter(len(e.pixel_values) for e in second)
    # step 1's striped samples are indices 6..11 of the task: the first one equals make_sample's
    striped = make_sample("striped", split="train", seed=0, index=6)
    expected = encode_example(pre, striped)
    assert [e.input_ids for e in second if len(e.pixel_values) > 1][0] == expected.input_ids
    assert "--task-weights 1,1,3,3" in settings.command("out")
    with pytest.raises(Exception, match="multiple of the task weights"):
        TrainSettings(batch_size=12, task_weights=(1, 1, 3, 3)).slot_pattern()


def test_equal_weights_interleave_tasks(setup):
    _, _, pre = setup
    settings = TrainSettings(batch_size=8)
    examples = step_examples(pre, settings, 2)
    for j, e in enumerate(examples):
        task = settings.tasks[j % 4]
        sample = make_sample(task, split="train", seed=0, index=(2 * 8 + j) // 4)
        assert e.input_ids == encode_example(pre, sample).input_ids
