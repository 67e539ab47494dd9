"""Keep the README's verbatim ``--help`` blocks equal to the real output.

    python tools/readme_help.py          rewrite the blocks in README.md
    python tools/readme_help.py --check  exit 1 if they differ (run by the tests)
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
COMMANDS = ("run", "replay")


def help_text(command: str) -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width
    from exporter.cli import make_parser
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        make_parser().parse_args([command, "--help"])
    return buf.getvalue().rstrip() + "\n"


def render(text: str) -> str:
    for command in COMMANDS:
        pattern = re.compile(rf"(<!-- help:{command} -->\n```text\n).*?(```\n<!-- /help:{command} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no help block for {command!r}")
        text = pattern.sub(lambda m: m.group(1) + help_text(command) + m.group(2), text)
    return text


def main() -> int:
    sys.path.insert(0, str(README.parent))
    current = README.read_text()
    wanted = render(current)
    if "--check" in sys.argv:
        if wanted != current:
            print("README.md --help blocks are stale: run python tools/readme_help.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
