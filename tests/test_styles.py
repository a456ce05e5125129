"""Style templates: applied to prompt and negative, unknown names refused, the CLI lists them."""

import json

import pytest

from idforge.cli import main
from idforge.errors import ParameterError
from idforge.styles import STYLES, apply_style, get_style


def test_apply_wraps_prompt_and_joins_negative():
    prompt, negative = apply_style("film-noir", "a man in a hat", "hands")
    assert prompt.startswith("a man in a hat, black and white")
    assert negative.startswith("hands, ") and "colour" in negative


def test_none_leaves_prompt_alone():
    assert apply_style(None, "p", None) == ("p", "")
    assert apply_style("none", "p", "n") == ("p", "n")


def test_names_are_forgiving_about_case_and_separators():
    assert get_style("Film Noir") is STYLES["film-noir"]
    assert get_style("line_art") is STYLES["line-art"]


def test_unknown_style_names_the_field_and_lists_styles():
    with pytest.raises(ParameterError) as info:
        get_style("baroque")
    assert info.value.name == "style" and "watercolor" in str(info.value)


def test_every_template_has_the_prompt_slot():
    for style in STYLES.values():
        assert "{prompt}" in style.prompt, style.name


def test_cli_lists_styles(capsys):
    assert main(["styles", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in listed] == list(STYLES)
