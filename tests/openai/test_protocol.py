import json

import pytest

from nvlm_deploy.openai.protocol import (ImagePart, OpenAIError, Sampling, conversation, parse_json, parse_request,
                                         sampling, stop_strings)

PNG_URL = "data:image/png;base64,iVBORw0KGgo="


def body(**fields):
    return {"model": "nvlm-d", "messages": [{"role": "user", "content": "Hi"}], **fields}


def error_of(call, *args, **kwargs) -> OpenAIError:
    with pytest.raises(OpenAIError) as info:
        call(*args, **kwargs)
    return info.value


def test_one_user_message_is_the_prompt_with_no_history():
    request = parse_request(body(), served="nvlm-d")
    assert request.conversation.prompt == "Hi" and request.conversation.history == ()
    assert request.max_tokens is None and request.stop == () and not request.stream and not request.include_usage
    assert request.sampling == Sampling()  # greedy


def test_image_parts_become_markers_in_front_of_the_text_in_part_order():
    messages = [{"role": "user", "content": [{"type": "text", "text": "Compare"},
                                             {"type": "image_url", "image_url": {"url": PNG_URL}},
                                             {"type": "text", "text": "them."},
                                             {"type": "image_url", "image_url": {"url": "https://x/b.png"}}]}]
    conv = conversation(messages)
    assert conv.prompt == "<image>\n<image>\nCompare\nthem."
    assert conv.images == (ImagePart(PNG_URL, "messages[0].content[1].image_url"),
                           ImagePart("https://x/b.png", "messages[0].content[3].image_url"))


def test_a_conversation_keeps_every_turn_and_the_images_of_all_turns_in_order():
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG_URL + "A"}},
                                             {"type": "text", "text": "What is it?"}]},
                {"role": "assistant", "content": "A circle."},
                {"role": "user", "content": [{"type": "text", "text": "And this?"},
                                             {"type": "image_url", "image_url": {"url": PNG_URL + "B"}}]}]
    conv = conversation(messages)
    assert conv.history == (("system", "Be brief."), ("user", "<image>\nWhat is it?"), ("assistant", "A circle."))
    assert conv.prompt == "<image>\nAnd this?"
    assert [p.url[-1] for p in conv.images] == ["A", "B"]


def test_developer_and_several_system_messages_become_one_system_turn():
    conv = conversation([{"role": "developer", "content": "One."}, {"role": "user", "content": "Hi"},
                         {"role": "system", "content": [{"type": "text", "text": "Two."}]},
                         {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}])
    assert conv.history == (("system", "One.\nTwo."), ("user", "Hi"), ("assistant", "Hello"))


@pytest.mark.parametrize("messages, param", [
    (None, "messages"),
    ([], "messages"),
    (["hi"], "messages[0]"),
    ([{"role": "tool", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "messages[1].role"),
    ([{"role": "system", "content": "Only a system message."}], "messages[0].role"),
    ([{"role": "assistant", "content": None}, {"role": "user", "content": "Hi"}], "messages[0].content"),
    ([{"role": "user", "content": "  "}], "messages[0].content"),
    ([{"role": "user", "content": "Where is <image> here?"}], "messages[0].content"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}], "messages[0].content[0]"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": "data:image/png;base64,AA=="}]}],
     "messages[0].content[0].image_url"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}],
     "messages[0].content[0].image_url"),
    ([{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": PNG_URL}}]},
      {"role": "user", "content": "Hi"}], "messages[0].content[0]"),
])
def test_bad_messages_are_400_naming_the_field(messages, param):
    error = error_of(conversation, messages)
    assert error.status == 400 and error.type == "invalid_request_error" and error.param == param


def test_sampling_is_greedy_by_default_and_at_temperature_0_else_whole_vocabulary():
    greedy = Sampling(temperature=None, top_k=0, top_p=0.0)
    assert sampling(temperature=None, top_p=None, seed=None) == greedy
    assert sampling(temperature=0.0, top_p=0.5, seed=3) == Sampling(seed=3)
    assert sampling(temperature=0.7, top_p=None, seed=1) == Sampling(temperature=0.7, top_k=0, top_p=1.0, seed=1)
    assert sampling(temperature=None, top_p=0.9, seed=None) == Sampling(temperature=1.0, top_k=0, top_p=0.9)


def test_fields_map_and_max_completion_tokens_wins():
    request = parse_request(body(max_tokens=5, max_completion_tokens=7, temperature=1.5, top_p=0.5, seed=9,
                                 stop="END", stream=True, stream_options={"include_usage": True}, n=1,
                                 user="ignored"), served="nvlm-d")
    assert request.max_tokens == 7 and request.stop == ("END",) and request.stream and request.include_usage
    assert request.sampling == Sampling(temperature=1.5, top_k=0, top_p=0.5, seed=9)
    assert parse_request(body(max_tokens=5), served="nvlm-d").max_tokens == 5
    assert not parse_request(body(stream_options={"include_usage": True}), served="nvlm-d").include_usage


@pytest.mark.parametrize("fields, param", [
    (dict(n=2), "n"), (dict(tools=[{"type": "function"}]), "tools"), (dict(logprobs=True), "logprobs"),
    (dict(response_format={"type": "json_object"}), "response_format"),
    (dict(max_tokens=0), "max_tokens"), (dict(max_completion_tokens="8"), "max_completion_tokens"),
    (dict(temperature=2.5), "temperature"), (dict(top_p=True), "top_p"), (dict(seed=-1), "seed"),
    (dict(stop=["a", ""]), "stop"), (dict(stop=["a", "b", "c", "d", "e"]), "stop"), (dict(stream="yes"), "stream"),
    (dict(stream=True, stream_options={"include_usage": 1}), "stream_options.include_usage"),
    (dict(model=None), "model"),
])
def test_bad_fields_are_400_naming_the_field(fields, param):
    error = error_of(parse_request, body(**fields), served="nvlm-d")
    assert (error.status, error.param) == (400, param)


def test_another_model_is_404_model_not_found():
    error = error_of(parse_request, body(model="gpt-4o"), served="nvlm-d")
    assert (error.status, error.code, error.param) == (404, "model_not_found", "model")
    assert error.body() == {"error": {"message": error.message, "type": "invalid_request_error",
                                      "param": "model", "code": "model_not_found"}}


def test_malformed_json_and_non_objects_are_400():
    assert parse_json(json.dumps(body()).encode()) == body()
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        assert error_of(parse_json, raw).status == 400


def test_stop_strings():
    assert stop_strings(None) == () and stop_strings("x") == ("x",) and stop_strings(["a", "b"]) == ("a", "b")
