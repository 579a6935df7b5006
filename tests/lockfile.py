"""The template's uv.lock: made from two real `uv lock` runs, rendered per bake.

cookiecutter's hooks stay network-free, so a uv project gets its lock from
the template, rendered like any other file. The lock differs between bakes
only in the project's name and in the packages Redis brings (``use_redis``);
this module writes those two differences as Jinja, nothing else.

After changing a pin in the template's pyproject.toml, regenerate it::

    python tests/lockfile.py

test_package_managers.py fails until the rendered locks match the pins.
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]
LOCK = TEMPLATE / "{{cookiecutter.project_slug}}" / "uv.lock"
DEFAULT_SLUG = "my-websocket-app"

IF_REDIS = "{%- if cookiecutter.use_redis %}"
END_IF = "{%- endif %}"


def uv_environment() -> dict[str, str]:
    """uv on this interpreter: it must never download one for .python-version."""
    return {**os.environ, "UV_PYTHON": sys.executable, "UV_PYTHON_DOWNLOADS": "never"}


def as_template(with_redis: str, without_redis: str) -> str:
    """One Jinja text that renders to either lock: Redis's lines under an ``if``."""
    old, new = without_redis.splitlines(), with_redis.splitlines()
    lines: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(
        None, old, new, autojunk=False
    ).get_opcodes():
        if tag == "equal":
            lines += old[i1:i2]
        elif tag == "insert":
            lines += [IF_REDIS, *new[j1:j2], END_IF]
        else:
            raise ValueError(f"the lock without Redis has lines of its own: {old[i1:i2]}")
    text = "\n".join(lines) + "\n"
    name_line = f'name = "{DEFAULT_SLUG}"'
    assert text.count(name_line) == 1, "the project's own name appears once"
    return text.replace(name_line, 'name = "{{ cookiecutter.project_slug }}"')


def locked(use_redis: bool, directory: Path) -> str:
    """Bake a uv project and run `uv lock` in it; return the lock it leaves."""
    config = directory / "cookiecutter.yaml"  # replay files stay in here too
    config.write_text(f"cookiecutters_dir: {directory}/templates\nreplay_dir: {directory}/replay\n")
    project = Path(
        cookiecutter(
            str(TEMPLATE),
            no_input=True,
            extra_context={"package_manager": "uv", "use_redis": use_redis},
            output_dir=str(directory / str(use_redis)),
            config_file=str(config),
        )
    )
    # The rendered lock stays: uv keeps every version it still allows, so only
    # what a changed pin needs moves, and both runs move alike.
    subprocess.run(["uv", "lock", "--quiet"], cwd=project, env=uv_environment(), check=True)
    return (project / "uv.lock").read_text()


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        LOCK.write_text(as_template(locked(True, Path(directory)), locked(False, Path(directory))))
    print(f"wrote {LOCK.relative_to(TEMPLATE)}")


if __name__ == "__main__":
    main()
