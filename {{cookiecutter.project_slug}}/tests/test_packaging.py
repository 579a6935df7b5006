"""The project installs from exactly one package-manager file.

Heroku's build fails when it finds two, and Railway's builder would take
requirements.txt over uv.lock. A file left behind by a change of package
manager (`cruft update` keeps a requirements.txt you edited) fails here.
"""

from __future__ import annotations

from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]

#: Every file a Python buildpack takes for a package manager's.
PACKAGE_MANAGER_FILES = (
    "requirements.txt",
    "Pipfile",
    "Pipfile.lock",
    "poetry.lock",
    "uv.lock",
)
{%- if cookiecutter.package_manager == "uv" %}
CHOSEN = "uv.lock"
{%- else %}
CHOSEN = "requirements.txt"
{%- endif %}


def test_the_project_has_exactly_one_package_manager_file() -> None:
    present = [name for name in PACKAGE_MANAGER_FILES if (PROJECT / name).exists()]
    extra = [name for name in present if name != CHOSEN]
    assert not extra, f"remove {', '.join(extra)}: this project installs from {CHOSEN}"
    assert present == [CHOSEN]
