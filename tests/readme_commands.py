"""The two Quick start command lines of README.md, found by their markers.

`.ci/run` runs `python3 tests/readme_commands.py test` to get the test
command, and tests/test_readme.py runs the other one, so what the README
says is what CI proves.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
MARKED_BLOCK = re.compile(r"<!-- quick-start:(\w+) -->\n```sh\n(.*?)\n```", re.S)


def quick_start_commands(text: str | None = None) -> dict[str, str]:
    """Return {marker: command line} for each marked block of the README."""
    text = README.read_text() if text is None else text
    return {name: body for name, body in MARKED_BLOCK.findall(text)}


if __name__ == "__main__":
    print(quick_start_commands()[sys.argv[1]])
