import pytest

from nvlm_deploy.errors import DeployError
from nvlm_deploy.serve.template import fill, parse_model_config, placeholders, render_config

CONFIG = 'name: "m"\nbackend: "python"\nmax_batch_size: ${batch}\nparameters { key: "p" value: { string_value: "${path}" } }\n'


def test_fill_substitutes_every_placeholder_and_parses():
    text = fill(CONFIG, {"batch": 8, "path": "a/b"})
    config = parse_model_config(text)
    assert config.max_batch_size == 8 and config.parameters["p"].string_value == "a/b"
    assert placeholders(CONFIG) == {"batch", "path"}


def test_unfilled_placeholder_is_refused_with_its_name():
    with pytest.raises(DeployError, match=r"\$\{path\}"):
        fill(CONFIG, {"batch": 8}, source="x.template")


def test_unused_value_is_refused():
    with pytest.raises(DeployError, match="typo"):
        fill(CONFIG, {"batch": 8, "path": "p", "pth": "q"})


def test_bool_values_are_protobuf_literals():
    assert fill("decoupled: ${d}", {"d": True}) == "decoupled: true"


def test_config_that_does_not_parse_names_the_error():
    with pytest.raises(DeployError, match="not a valid Triton model config"):
        parse_model_config('name: "m"\nmax_batch_size: eight\n')


def test_render_config_reads_a_template_file(tmp_path):
    path = tmp_path / "config.pbtxt.template"
    path.write_text(CONFIG)
    text, config = render_config(path, {"batch": 2, "path": "x"})
    assert config.name == "m" and "${" not in text
