"""triton_repo/preprocessing/1/model.py in-process (pb_utils stand-in) on the packaged CPU repository."""

import numpy as np
import pytest

from nvlm_deploy.client.tensors import image_arrays
from tests.serving import LIMITS
from tests.triton_repo.in_process import error_message, load_model, outputs, request


@pytest.fixture(scope="module")
def model(cpu_repo):
    return load_model(cpu_repo, "preprocessing")


@pytest.fixture(scope="module")
def preprocessor(tiny_checkpoint):
    """The library's Preprocessor with the repository's limits: what the model must reproduce."""
    from nvlm_deploy.preprocess.request import Preprocessor

    return Preprocessor.from_model_dir(tiny_checkpoint, max_tiles=LIMITS["max_tiles_before_thumbnail"],
                                       max_images=LIMITS["max_images"])


def query(prompt: str, images=(), *, max_tokens: int = 16, **extra: np.ndarray):
    arrays = {"QUERY": np.array([[prompt.encode()]], dtype=object),
              "REQUEST_OUTPUT_LEN": np.array([[max_tokens]], np.int32), **extra}
    if images:
        arrays["IMAGE_FILES"], arrays["IMAGE_FILES_LENGTHS"] = image_arrays(images)
    return request(**arrays)


@pytest.mark.parametrize("prompt, n", [("Hello, how are you?", 0), ("What is in the picture?", 1),
                                       ("<image> and <image>: which shape is on the left?", 2)])
def test_ids_and_tiles_equal_the_preprocessor(model, preprocessor, images, prompt, n):
    (response,) = model.execute([query(prompt, images[:n])])
    got = {name: t.as_numpy() for name, t in outputs(response).items()}
    want = preprocessor.prepare(prompt, images[:n])
    assert got["INPUT_ID"].dtype == np.int32 and got["INPUT_ID"].tolist() == [want.input_ids]
    assert got["REQUEST_INPUT_LEN"].tolist() == [[len(want.input_ids)]]
    assert got["REQUEST_OUTPUT_LEN"].tolist() == [[16]]
    assert got["PIXEL_VALUES"].dtype == np.float32  # the config's pixel_values_data_type (TYPE_FP32)
    np.testing.assert_array_equal(got["PIXEL_VALUES"], want.pixel_values[None])  # [1, T, 3, S, S]
    assert got["PIXEL_VALUES"].shape[1] == sum(want.tiles_per_image)
    assert got["OUT_END_ID"].tolist() == [[preprocessor.tokenizer.eos_id]]
    assert got["OUT_PAD_ID"].tolist() == [[preprocessor.tokenizer.pad_id]]


def test_end_and_pad_ids_sent_by_the_client_are_kept(model):
    (response,) = model.execute([query("Hi", END_ID=np.array([[7]], np.int32), PAD_ID=np.array([[9]], np.int32))])
    got = outputs(response)
    assert got["OUT_END_ID"].as_numpy().tolist() == [[7]] and got["OUT_PAD_ID"].as_numpy().tolist() == [[9]]


BAD = {
    "corrupt image": (dict(prompt="What is it?", images=[b"\x89PNG\r\n\x1a\nnot really"]), "not an image"),
    "too many images": (dict(prompt="<image><image><image>", images="three"), "more than this repository's limit of 2"),
    "max_tokens 0": (dict(prompt="Hi", max_tokens=0), "between 1 and 64"),
    "max_tokens over the limit": (dict(prompt="Hi", max_tokens=65), "between 1 and 64"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_request_gets_its_error_and_the_others_are_served(model, preprocessor, images, case):
    kwargs, message = BAD[case]
    if kwargs.get("images") == "three":
        kwargs = {**kwargs, "images": [images[0]] * 3}
    good = preprocessor.prepare("Hello, how are you?").input_ids
    bad_response, good_response = model.execute([query(**kwargs), query("Hello, how are you?")])
    assert message in error_message(bad_response)
    assert outputs(good_response)["INPUT_ID"].as_numpy().tolist() == [good]
    (after,) = model.execute([query("Hello, how are you?")])  # the next call is served as well
    assert outputs(after)["INPUT_ID"].as_numpy().tolist() == [good]
