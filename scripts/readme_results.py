"""Copy the latest committed reports into README.md's results section (between markers),
so the README's numbers are the reports' numbers, never typed in.

    .venv/bin/python scripts/readme_results.py results/bench-cpu results/capacity-cpu
"""

import re
import sys
from pathlib import Path

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def section(run: Path) -> str:
    text = (run / "report.md").read_text()
    # header bullets (command, commit, versions, hardware, workload) + every table
    lines = text.splitlines()
    out = [f"### `{run}`", ""]
    out += [ln for ln in lines[1:] if ln.startswith("- ")] + [""]
    keep = False
    for ln in lines:
        if ln.startswith("## "):
            keep = True
            out += ["#" + ln, ""]
        elif keep and (ln.startswith("|") or ln.startswith("Requests of") or ln.startswith("Not measured")):
            out.append(ln)
        elif keep and ln.startswith("!["):
            alt, target = re.match(r"!\[(.*)\]\((.*)\)", ln).groups()
            out += ["", f"![{alt}]({run}/{target})", ""]
    return "\n".join(out).replace("\n\n\n", "\n\n")


def main(runs: list[str]) -> None:
    body = "\n\n".join(section(Path(r)) for r in runs)
    text = README.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(text[:start] + "\n" + body + "\n" + text[end:])


if __name__ == "__main__":
    main(sys.argv[1:])
