import numpy as np
import pytest

from nvlm_deploy.client.tensors import ChatRequest, image_arrays, infer_inputs, input_arrays, read_images
from nvlm_deploy.errors import DeployError


def test_scalars_are_sent_as_one_by_one_and_unset_ones_are_omitted():
    arrays = input_arrays(ChatRequest(prompt="héllo", max_tokens=7, stream=True, top_k=0))
    assert set(arrays) == {"text_input", "max_tokens", "stream", "exclude_input_in_output", "top_k"}
    assert arrays["text_input"][0] == "BYTES" and arrays["text_input"][1].tolist() == [["héllo".encode()]]
    assert arrays["max_tokens"][0] == "INT32" and arrays["max_tokens"][1].shape == (1, 1)
    assert arrays["stream"][1].dtype == bool and arrays["exclude_input_in_output"][1][0, 0]


def test_images_are_zero_padded_bytes_with_lengths():
    data, lengths = image_arrays([b"abc", b"de"])
    assert data.dtype == np.uint8 and data.shape == (1, 2, 3)
    assert data[0, 1].tobytes() == b"de\x00" and lengths.tolist() == [[3, 2]]
    arrays = input_arrays(ChatRequest(prompt="x", images=(b"abc",)))
    assert arrays["image_files_input"][0] == "UINT8" and arrays["image_files_lengths"][0] == "INT32"


def test_infer_inputs_carry_names_shapes_and_types():
    import tritonclient.grpc as g

    inputs = {i.name(): i for i in infer_inputs(g, ChatRequest(prompt="x", images=(b"abcd",), temperature=0.5))}
    assert inputs["image_files_input"].shape() == [1, 1, 4] and inputs["temperature"].datatype() == "FP32"


def test_read_images_reads_paths_and_refuses_missing_files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    assert read_images([tmp_path / "a.png", b"raw"]) == (b"png", b"raw")
    with pytest.raises(DeployError, match="no such file"):
        read_images([tmp_path / "missing.png"])


def test_unreachable_server_is_a_clear_error_from_both_clients():
    import asyncio

    from nvlm_deploy.client import AsyncNvlmClient, NvlmClient
    from nvlm_deploy.serve.server import free_port

    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    with NvlmClient(url, timeout=30) as c, pytest.raises(DeployError, match="connect"):
        c.chat("hi", max_tokens=2)

    async def ask():
        async with AsyncNvlmClient(url) as c:
            return await c.chat("hi", max_tokens=2)

    with pytest.raises(DeployError, match=f"cannot reach the server at {url}"):
        asyncio.run(ask())
