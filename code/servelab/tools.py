"""The programs the book uses besides Python: where they are, and what a reader loses without them.

One table for three readers: ``scripts/setup`` installs the missing ones
(Debian/Ubuntu, as root or with passwordless sudo), the tests skip with
:func:`missing_reason` when one is absent, and the chapters ask
:func:`find` before they start nginx or wrk.

``SERVELAB_WITHOUT="chromium nginx"`` (names from :data:`TOOLS`, spaces or
commas) makes all of them act as if those tools were not installed: the way
to see what a machine without them reports, without uninstalling anything.

This module uses only the standard library, so ``scripts/setup`` can run it
with the system Python before ``.venv`` exists::

    PYTHONPATH=code python3 -m servelab.tools missing   # Debian packages still to install
    PYTHONPATH=code python3 -m servelab.tools report    # one line for each missing tool
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass

WITHOUT_ENV = "SERVELAB_WITHOUT"


@dataclass(frozen=True)
class Tool:
    """A program (``command``) or a file (``paths`` only) from one Debian package."""

    name: str
    package: str
    purpose: str  # what the book uses it for
    without: str  # what happens where it is missing
    command: str | None = None
    paths: tuple[str, ...] = ()  # also looked at: /usr/sbin is not on a normal user's PATH


TOOLS: dict[str, Tool] = {tool.name: tool for tool in (
    Tool("chromium", "chromium", "the headless browser of the website test",
         "the website's browser tests are skipped", command="chromium"),
    Tool("wrk", "wrk", "the load generator of chapters 1 and 2",
         "the built-in asyncio load generator is used and wrk's own tests are skipped", command="wrk"),
    Tool("nginx", "nginx-light", "the reverse proxy of chapter 2",
         "chapter 2's proxy section and the nginx tests are skipped", command="nginx",
         paths=("/usr/sbin/nginx", "/usr/local/sbin/nginx")),
    Tool("fonts-dejavu-core", "fonts-dejavu-core", "the fonts Chromium draws the website screenshots with",
         "screenshots may show boxes instead of text",
         paths=("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",)),
)}  # fmt: skip


def hidden() -> set[str]:
    """The tools that ``SERVELAB_WITHOUT`` says to treat as missing."""
    return {name for name in re.split(r"[\s,]+", os.environ.get(WITHOUT_ENV, "")) if name}


def find(name: str) -> str | None:
    """Path of tool ``name`` (a key of :data:`TOOLS`), or None where it is missing or hidden."""
    tool = TOOLS[name]
    if name in hidden():
        return None
    if tool.command and (found := shutil.which(tool.command)):
        return found
    check = (lambda p: os.access(p, os.X_OK)) if tool.command else os.path.isfile
    return next((p for p in tool.paths if check(p)), None)


def missing() -> list[Tool]:
    """The tools :func:`find` does not find, in table order."""
    return [tool for name, tool in TOOLS.items() if find(name) is None]


def install_command(packages: list[str]) -> str:
    """The command a reader runs to install ``packages`` (Debian/Ubuntu)."""
    sudo = "" if hasattr(os, "geteuid") and os.geteuid() == 0 else "sudo "
    return f"{sudo}apt-get install {' '.join(packages)}"


def missing_reason(name: str) -> str:
    """One line: what is missing, what it is for, how to install it, and what is lost meanwhile."""
    tool = TOOLS[name]
    why = f" ({WITHOUT_ENV} hides it)" if name in hidden() else ""
    return (f"{tool.name} is missing{why}: it is {tool.purpose}; install it with "
            f"`{install_command([tool.package])}`. Until then {tool.without}.")


def main(argv: list[str]) -> int:
    """``missing``: packages still to install, one a line; ``report``: one line per missing tool."""
    command = argv[0] if argv else "report"
    if command == "missing":
        # A hidden tool is missing on purpose: installing it would defeat SERVELAB_WITHOUT.
        print("\n".join(t.package for t in missing() if t.name not in hidden()))
    elif command == "report":
        for tool in missing():
            print(f"servelab setup: {missing_reason(tool.name)}")
    else:
        print(f"usage: python -m servelab.tools [missing|report], not {command!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
