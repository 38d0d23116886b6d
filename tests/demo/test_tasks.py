"""Synthetic demo tasks: seeded, split-separated generators; the tiling task needs the tiles."""

import numpy as np
import pytest
from PIL import Image

from nvlm_deploy.demo.ask import SAMPLES, SAMPLES_DIR, write_samples
from nvlm_deploy.demo.tasks import TASKS, draw_striped, make_sample, task_names
from nvlm_deploy.errors import DeployError
from nvlm_deploy.preprocess.tiling import dynamic_tiles


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("task", list(TASKS))
def test_samples_are_a_pure_function_of_task_split_seed_index(task):
    a = make_sample(task, split="train", seed=3, index=7)
    b = make_sample(task, split="train", seed=3, index=7)
    assert np.array_equal(pixels(a.image), pixels(b.image)) and a.answer == b.answer
    other_split = make_sample(task, split="eval", seed=3, index=7)
    other_seed = make_sample(task, split="train", seed=4, index=7)
    assert not np.array_equal(pixels(a.image), pixels(other_split.image))
    assert not np.array_equal(pixels(a.image), pixels(other_seed.image))


@pytest.mark.parametrize("task", list(TASKS))
def test_answers_are_one_of_the_options_and_all_options_occur(task):
    spec = TASKS[task]
    answers = [make_sample(task, split="eval", seed=0, index=i) for i in range(120)]
    assert all(s.answer in s.options and set(s.options) <= set(spec.answers) for s in answers)
    assert {s.answer for s in answers} == set(spec.answers)
    assert all(s.question == spec.question for s in answers)


def test_task_names_validates():
    assert task_names(None) == list(TASKS) == task_names("all")
    assert task_names("color,striped") == ["color", "striped"]
    with pytest.raises(DeployError, match="unknown demo task"):
        task_names("colour")


def test_striped_images_tile_into_2_or_3_tiles_plus_thumbnail():
    for index, tiles, options in ((0, 3, ("left", "right")), (1, 4, ("left", "middle", "right"))):
        sample = make_sample("striped", split="eval", seed=0, index=index)
        cut = dynamic_tiles(sample.image, image_size=112, min_num=1, max_num=6, use_thumbnail=True)
        assert len(cut) == tiles and sample.options == options


def _stripe_energy(image: Image.Image) -> float:
    """Mean absolute difference between horizontally adjacent pixels (1-px stripes light it up)."""
    return float(np.abs(np.diff(pixels(image), axis=1)).mean())


@pytest.mark.parametrize("index", range(6))
def test_stripes_show_in_their_tile_and_vanish_from_the_thumbnail(index):
    striped, answer, options = draw_striped(np.random.default_rng(index), index)
    solid, _, _ = draw_striped(np.random.default_rng(index), index, stripes=False)
    cut = dynamic_tiles(striped, image_size=112, min_num=1, max_num=6, use_thumbnail=True)
    plain = dynamic_tiles(solid, image_size=112, min_num=1, max_num=6, use_thumbnail=True)
    energy = [_stripe_energy(t) - _stripe_energy(p) for t, p in zip(cut[:-1], plain[:-1])]
    assert int(np.argmax(energy)) == options.index(answer) and max(energy) > 10
    thumb_diff = np.abs(pixels(cut[-1]) - pixels(plain[-1]))
    assert thumb_diff.mean() < 0.5  # the thumbnail barely changes: stripes average to the solid color


def test_bundled_samples_are_regenerated_bit_for_bit(tmp_path):
    for path in write_samples(tmp_path):
        assert np.array_equal(pixels(Image.open(path)), pixels(Image.open(SAMPLES_DIR / path.name)))
    assert {p.name for p in SAMPLES_DIR.glob("*.png")} == {s.file for s in SAMPLES}
