"""Template hygiene: reproducible output, no secrets asked, pinned and watched dependencies."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from cookiecutter.main import cookiecutter

from conftest import SPEC, TEMPLATE, TEXT_SAMPLES


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_the_same_answers_bake_byte_identical_trees(
    bake: Callable[..., Path],
    tmp_path_factory: pytest.TempPathFactory,
    cookiecutter_config: Path,
) -> None:
    answers = {"project_name": TEXT_SAMPLES["project_name"], "render_plan": "free"}
    first = tree(bake(**answers))
    again = cookiecutter(
        str(TEMPLATE),
        no_input=True,
        extra_context=answers,
        output_dir=str(tmp_path_factory.mktemp("again")),
        config_file=str(cookiecutter_config),
    )
    assert tree(Path(again)) == first


def test_no_prompt_asks_for_a_secret() -> None:
    secretive = re.compile(r"secret|password|passwd|token|api.?key|credential", re.I)
    for name, prompt in SPEC["__prompts__"].items():
        assert not secretive.search(name), name
        assert not secretive.search(prompt), prompt


#: name[extras]==version, then an optional environment marker.
PINNED = r"[A-Za-z0-9_.\-]+(\[[a-z0-9_,\-]+\])?==[0-9][0-9A-Za-z.\-]*( *; *\S.*)?"


def declared_dependencies(project: Path) -> list[str]:
    """Every requirement a project declares, for either package manager."""
    if (project / "uv.lock").exists():
        metadata = tomllib.loads((project / "pyproject.toml").read_text())
        return [*metadata["project"]["dependencies"], *metadata["dependency-groups"]["dev"]]
    lines = [
        line.split("#", 1)[0].strip()
        for requirements in ("requirements.txt", "requirements-dev.txt")
        for line in (project / requirements).read_text().splitlines()
    ]
    return [line for line in lines if line and not line.startswith("-r ")]


@pytest.mark.parametrize("manager", ["pip", "uv"])
@pytest.mark.parametrize("use_redis", [True, False])
def test_every_dependency_is_pinned(
    bake: Callable[..., Path], use_redis: bool, manager: str
) -> None:
    declared = declared_dependencies(bake(use_redis=use_redis, package_manager=manager))
    assert len(declared) >= 8
    for line in declared:
        assert re.fullmatch(PINNED, line), line


@pytest.mark.parametrize(
    "answers",
    [{}, {"deploy_fly": False}, {"deploy_fly": False, "deploy_kubernetes": True}],
    ids=["fly", "no-image", "kubernetes-only"],
)
def test_dependabot_watches_pip_actions_and_the_dockerfile_when_there_is_one(
    bake: Callable[..., Path], answers: dict[str, bool]
) -> None:
    project = bake(**answers)
    config = yaml.safe_load((project / ".github" / "dependabot.yml").read_text())
    assert config["version"] == 2
    ecosystems = {update["package-ecosystem"] for update in config["updates"]}
    has_image = (project / "Dockerfile").exists()
    assert ecosystems == {"pip", "github-actions"} | ({"docker"} if has_image else set())


def test_security_md_covers_tls_and_every_limit(default_project: Path) -> None:
    security = (default_project / "SECURITY.md").read_text()
    assert "TLS" in security
    for variable in LIMIT_VARIABLES:
        assert f"`{variable}`" in security, variable


#: Every setting the generated config reads, by the name of its variable.
def config_variables(project: Path) -> list[str]:
    (config,) = project.glob("*/config.py")
    return re.findall(r'environ, "([A-Z_]+)"', config.read_text())


LIMIT_VARIABLES = [
    "MAX_MESSAGE_SIZE",
    "MAX_CONNECTIONS",
    "OPEN_TIMEOUT",
    "ALLOWED_ORIGINS",
    "MAX_MESSAGES_PER_SECOND",
    "MAX_SEND_BUFFER",
]


@pytest.mark.parametrize("use_redis", [True, False])
def test_the_readme_lists_every_setting_with_its_default(
    bake: Callable[..., Path], use_redis: bool
) -> None:
    project = bake(use_redis=use_redis)
    readme = (project / "README.md").read_text()
    variables = config_variables(project)
    assert set(LIMIT_VARIABLES) <= set(variables)
    for variable in variables:
        if variable == "WORKER_ID":  # set by the parent for its workers only
            continue
        assert re.search(rf"^\| `{variable}` \| [^|]+ \| [^|]+ \|$", readme, re.M), variable
