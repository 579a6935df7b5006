"""Refuse answers that would generate a broken project.

One table of rules; the first answer that breaks one stops generation with a
single line naming the variable, the value and the rule, and cookiecutter
removes the output directory. Checks call ``sys.exit``, never ``assert``,
which ``python -O`` strips.
"""

from __future__ import annotations

import json
import keyword
import re
import sys
from collections.abc import Callable

ANSWERS: dict[str, object] = json.loads(r"""{{ cookiecutter | jsonify }}""")

# Modules the generated project imports or runs: a package of the same
# name would shadow them.
DEPENDENCIES = frozenset(
    {"websockets", "redis", "prometheus_client", "honcho", "pytest", "ruff", "conftest", "tests"}
)

#: The distributions the project installs (uv.lock's packages): a project of
#: the same name would be one of them to uv and pip.
# fmt: off
DISTRIBUTIONS = frozenset({
    "async-timeout", "cffi", "cfgv", "colorama", "cryptography", "distlib", "filelock",
    "honcho", "identify", "iniconfig", "jinja2", "markupsafe", "nodeenv", "packaging",
    "platformdirs", "pluggy", "pre-commit", "prometheus-client", "pycparser", "pygments",
    "pyjwt", "pytest", "python-discovery", "pyyaml", "redis", "ruff", "uvloop", "virtualenv",
    "websockets",
})
# fmt: on

PYTHON_VERSIONS = ("3.11", "3.12", "3.13", "3.14")

PACKAGE_MANAGERS = ("pip", "uv")

# Region codes Fly.io has published; `fly platform regions` lists the live ones.
# fmt: off
FLY_REGIONS = (
    "ams", "arn", "atl", "bog", "bom", "bos", "cdg", "den", "dfw", "ewr", "eze", "fra",
    "gdl", "gig", "gru", "hkg", "iad", "jnb", "lax", "lhr", "mad", "mia", "nrt", "ord",
    "otp", "phx", "qro", "scl", "sea", "sin", "sjc", "syd", "waw", "yul", "yyz",
)
# fmt: on

# Values render.yaml accepts for `plan` and `region`.
RENDER_PLANS = ("free", "starter", "standard", "pro", "pro plus", "pro max", "pro ultra")
RENDER_REGIONS = ("oregon", "ohio", "virginia", "frankfurt", "singapore")


def one_line(max_length: int) -> Callable[[object], bool]:
    def check(value: object) -> bool:
        return (
            isinstance(value, str)
            and 0 < len(value) <= max_length
            and value == value.strip()
            and value.isprintable()
        )

    return check


def matches(pattern: str) -> Callable[[object], bool]:
    return lambda value: isinstance(value, str) and re.fullmatch(pattern, value) is not None


#: Variable -> [(what it must be, check)], checked in order.
RULES: dict[str, list[tuple[str, Callable[[object], bool]]]] = {
    "project_name": [
        ("be one line of 1-60 printable characters without surrounding spaces", one_line(60)),
        ("contain a letter or digit", lambda v: any(c.isalnum() for c in str(v))),
    ],
    "project_slug": [
        (
            "be 3-30 lower-case letters, digits and single dashes, starting with a letter"
            " and ending with a letter or digit (a valid Heroku and Fly.io app name)",
            matches(r"(?=.{3,30}\Z)[a-z][a-z0-9]*(-[a-z0-9]+)*"),
        ),
        (
            "not be the name of a package the project installs (such as redis or pytest)",
            lambda v: v not in DISTRIBUTIONS,
        ),
    ],
    "package_name": [
        ("be a lower-case Python identifier of 2-40 characters", matches(r"[a-z_][a-z0-9_]{1,39}")),
        (
            "not be a Python keyword",
            lambda v: not keyword.iskeyword(v) and not keyword.issoftkeyword(v),
        ),
        ("not shadow a standard library module", lambda v: v not in sys.stdlib_module_names),
        (
            f"not shadow a dependency ({', '.join(sorted(DEPENDENCIES))})",
            lambda v: v not in DEPENDENCIES,
        ),
    ],
    "description": [("be one line of 1-200 printable characters", one_line(200))],
    "author_name": [("be one line of 1-100 printable characters", one_line(100))],
    "python_version": [(f"be one of {', '.join(PYTHON_VERSIONS)}", lambda v: v in PYTHON_VERSIONS)],
    "package_manager": [
        (f"be one of {', '.join(PACKAGE_MANAGERS)}", lambda v: v in PACKAGE_MANAGERS)
    ],
    "deploy_heroku": [("be true or false", lambda v: isinstance(v, bool))],
    "deploy_fly": [("be true or false", lambda v: isinstance(v, bool))],
    "deploy_render": [("be true or false", lambda v: isinstance(v, bool))],
    "deploy_railway": [("be true or false", lambda v: isinstance(v, bool))],
    "deploy_koyeb": [("be true or false", lambda v: isinstance(v, bool))],
    "deploy_kubernetes": [("be true or false", lambda v: isinstance(v, bool))],
    "use_redis": [("be true or false", lambda v: isinstance(v, bool))],
    "fly_region": [(f"be a Fly.io region ({' '.join(FLY_REGIONS)})", lambda v: v in FLY_REGIONS)],
    "render_plan": [(f"be a Render plan ({', '.join(RENDER_PLANS)})", lambda v: v in RENDER_PLANS)],
    "render_region": [
        (f"be a Render region ({', '.join(RENDER_REGIONS)})", lambda v: v in RENDER_REGIONS)
    ],
}


def first_violation(answers: dict[str, object]) -> str | None:
    for name, rules in RULES.items():
        value = answers.get(name)
        for rule, check in rules:
            if not check(value):
                return f"{name}={value!r} is invalid: it must {rule}"
    return None


if __name__ == "__main__":
    problem = first_violation(ANSWERS)
    if problem is not None:
        sys.exit(f"error: {problem}")
