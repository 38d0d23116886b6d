"""Walk the hostile-input catalogue: every request case against one real server (a good request still
answered right after each), every CLI case in-process (exit 1, the expected message, no traceback)."""

from __future__ import annotations

import queue

import pytest

from tests.reliability.catalogue import CLI_CASES, GOOD_PROMPT, REQUEST_CASES, CliContext

GOOD_TOKENS = 4


def _marks(case) -> list:
    if case.pending:
        return [pytest.mark.xfail(strict=False, reason=case.pending)]
    return []


def _params(cases):
    return [pytest.param(case, id=case.id, marks=_marks(case)) for case in cases]


def test_catalogue_has_the_cases_issue_14_asks_for():
    ids = [case.id for case in REQUEST_CASES + CLI_CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 60
    for kind in ("image-", "text-", "forged-", "temperature-", "vision-encoder-", "decoder-", "package-manifest"):
        assert any(i.startswith(kind) for i in ids), kind


# ---- requests ----

def _triton_inputs(module, tensors):
    inputs = []
    for name, (wire, array) in tensors.items():
        tensor = module.InferInput(name, list(array.shape), wire)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def send(url: str, model: str, tensors, *, decoupled: bool, timeout: float = 120.0) -> tuple[str | None, dict]:
    """(error message or None, outputs by name) of one request; decoupled models over the gRPC stream."""
    import tritonclient.grpc as g
    from tritonclient.utils import InferenceServerException

    client = g.InferenceServerClient(url)
    try:
        inputs = _triton_inputs(g, tensors)
        if not decoupled:
            try:
                result = client.infer(model, inputs, client_timeout=timeout)
            except InferenceServerException as exc:
                return exc.message(), {}
            return None, {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}
        results: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        outputs: dict = {}
        try:
            client.async_stream_infer(model, inputs, enable_empty_final_response=True)
            while True:
                result, error = results.get(timeout=timeout)
                if error is not None:
                    return error.message(), outputs
                for out in result.get_response().outputs:
                    outputs.setdefault(out.name, []).append(result.as_numpy(out.name))
                if result.get_response().parameters["triton_final_response"].bool_param:
                    return None, outputs
        finally:
            client.stop_stream(cancel_requests=True)
    finally:
        client.close()


@pytest.fixture(scope="module")
def walk(server, reference):
    """The server, which models are decoupled, and the good request's right answer."""
    import tritonclient.grpc as g

    from nvlm_deploy.backend.bls import make_decode

    client = g.InferenceServerClient(server.grpc_url)
    decoupled = {m: client.get_model_config(m, as_json=True)["config"].get("model_transaction_policy", {}).get(
        "decoupled", False) for m in ("tensorrt_llm_bls", "ensemble", "preprocessing", "vision_encoder",
                                      "tensorrt_llm", "postprocessing")}
    client.close()
    ids = reference.generate_ids(reference.preprocessor.prepare(GOOD_PROMPT, []), max_new_tokens=GOOD_TOKENS)
    im_start = reference.tokenizer.token_id("<|im_start|>")
    return server, decoupled, make_decode(reference.tokenizer)(ids), im_start


def good_answer(url: str) -> str:
    from nvlm_deploy.client import NvlmClient

    with NvlmClient(url, timeout=120) as client:
        return client.chat(GOOD_PROMPT, max_tokens=GOOD_TOKENS)


@pytest.mark.server
@pytest.mark.parametrize("case", _params(REQUEST_CASES))
def test_request_case_gets_its_clear_error_and_the_server_keeps_serving(walk, case):
    server, decoupled, want, im_start = walk
    try:
        error, outputs = send(server.grpc_url, case.model, case.inputs(), decoupled=decoupled[case.model])
        if case.expect is None:
            assert error is None, f"{case.id} was refused: {error}"
            if case.check:
                problem = case.check({**{k: v[-1] if isinstance(v, list) else v for k, v in outputs.items()},
                                      "__im_start_id": im_start})
                assert problem is None, problem
        else:
            assert error is not None, f"{case.id} was accepted; expected an error containing {case.expect!r}"
            assert case.expect.lower() in error.lower(), f"{case.id}: {error!r} lacks {case.expect!r}"
            assert "Traceback" not in error, error
    finally:
        assert good_answer(server.grpc_url) == want, f"after {case.id} the good request is answered wrong"


# ---- CLI ----

@pytest.fixture(scope="module")
def cli_context(tiny_checkpoint, cpu_repo, engines, tmp_path_factory):
    import shutil

    def fresh_target():
        target = tmp_path_factory.mktemp("cli-target") / "t"
        target.mkdir()
        for stage in ("onnx", "trtllm_checkpoint"):
            shutil.copytree(engines / stage, target / stage)
        shutil.copy2(engines / "manifest.json", target / "manifest.json")
        return target
    return lambda tmp: CliContext(checkpoint=tiny_checkpoint, repo=cpu_repo, tmp=tmp, fresh_target=fresh_target)


@pytest.mark.parametrize("case", _params(CLI_CASES))
def test_cli_case_exits_1_with_a_clear_message(cli_context, case, tmp_path, capsys):
    from nvlm_deploy.cli import main

    argv = case.argv(cli_context(tmp_path))
    code = main(argv)  # an unexpected exception escapes here as the traceback a user would see
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == 1, f"nvlm-deploy {' '.join(argv)} exited {code}:\n{text}"
    assert case.expect.lower() in text.lower(), f"{case.id}: {text!r} lacks {case.expect!r}"
    assert "Traceback" not in text
