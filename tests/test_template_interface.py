"""cookiecutter.json is the template's public interface."""

from __future__ import annotations

import pytest

from conftest import SPEC, TEMPLATE, TEXT_SAMPLES, option_variants

VARIABLES = [name for name in SPEC if not name.startswith("_")]


def test_every_variable_has_a_prompt_sentence() -> None:
    prompts = SPEC["__prompts__"]
    assert sorted(prompts) == sorted(VARIABLES)
    for name, prompt in prompts.items():
        assert isinstance(prompt, str) and "? " in f"{prompt} ", name


def test_cookiecutter_json_asks_for_lf_line_endings() -> None:
    assert SPEC["_new_lines"] == "\n"


@pytest.mark.parametrize("flag", ["deploy_heroku", "deploy_fly", "deploy_render"])
def test_platform_flags_are_real_booleans_defaulting_to_true(flag: str) -> None:
    assert SPEC[flag] is True


@pytest.mark.parametrize("flag", ["deploy_railway", "deploy_koyeb", "deploy_kubernetes"])
def test_further_deploy_targets_are_real_booleans_defaulting_to_false(flag: str) -> None:
    assert SPEC[flag] is False


def test_python_versions_are_newest_first_with_314_the_default() -> None:
    versions = SPEC["python_version"]
    assert versions[0] == "3.14"
    as_tuples = [tuple(int(part) for part in v.split(".")) for v in versions]
    assert as_tuples == sorted(as_tuples, reverse=True)
    assert as_tuples[-1] == (3, 11)


def test_names_are_derived_from_the_project_name() -> None:
    assert SPEC["project_name"] == "My WebSocket App"
    assert "cookiecutter.project_name" in SPEC["project_slug"]
    assert "cookiecutter.project_slug" in SPEC["package_name"]


def test_every_variable_is_covered_by_the_option_matrix() -> None:
    variants = option_variants(SPEC)
    covered = {name for answers in variants.values() for name in answers}
    assert covered == set(VARIABLES)


def test_every_text_sample_names_a_real_variable() -> None:
    assert set(TEXT_SAMPLES) <= set(VARIABLES)


def test_a_variable_of_unknown_kind_is_reported() -> None:
    with pytest.raises(LookupError, match="new_option"):
        option_variants({**SPEC, "new_option": "some text"})


def test_the_readme_documents_every_variable() -> None:
    readme = (TEMPLATE / "README.md").read_text()
    for name in VARIABLES:
        assert f"\n| `{name}` |" in readme, name
