"""Prints the fenced bash blocks of a README section, NUL-separated, for CI to run as written.

    python3 scripts/readme_blocks.py README.md "Quick start"
"""

import re
import sys


def section_blocks(text: str, heading: str) -> list:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if match is None:
        raise SystemExit(f"no section '## {heading}'")
    blocks = re.findall(r"^```bash\n(.*?)^```", match.group(1), re.M | re.S)
    if not blocks:
        raise SystemExit(f"section '## {heading}' has no bash block")
    return blocks


if __name__ == "__main__":
    path, heading = sys.argv[1:]
    sys.stdout.write("\0".join(section_blocks(open(path).read(), heading)))
