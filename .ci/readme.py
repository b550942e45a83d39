#!/usr/bin/env python3
"""README.md from nbs/index.ipynb, without Quarto (which nbdev_readme needs and these machines cannot install).

    python .ci/readme.py            # write README.md
    python .ci/readme.py --check    # exit 1 if README.md is not what index.ipynb gives
    python .ci/readme.py --command setup|test   # print the set-up / test command README gives
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = "<!-- generated from nbs/index.ipynb by `python .ci/readme.py`: edit the notebook, not this file -->\n\n"

def render(nb_path=ROOT / "nbs" / "index.ipynb") -> str:
    nb = json.loads(nb_path.read_text())
    parts = []
    for cell in nb["cells"]:
        src = "".join(cell["source"]).strip("\n")
        if cell["cell_type"] == "markdown":      # notebook links are relative to nbs/; README sits one level up
            parts.append(re.sub(r"\]\((?!https?:|/|#)([^)]+\.(?:ipynb|png|jpg|gif))\)", r"](nbs/\1)", src))
        elif cell["cell_type"] == "code":
            lines = src.splitlines()
            if any(re.match(r"#\|\s*(hide|export)", l) for l in lines): continue
            code = "\n".join(l for l in lines if not l.startswith("#|")).strip("\n")
            if code: parts.append(f"```python\n{code}\n```")
            out = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []) if o.get("output_type") == "stream")
            if out.strip(): parts.append(f"```\n{out.rstrip()}\n```")
    return HEADER + "\n\n".join(parts) + "\n"

def command(kind: str, text: str) -> str:
    "The first ```sh block under the heading 'Install' (setup) or 'Test' (test), its command lines joined by &&."
    heading = {"setup": "Install", "test": "Test"}[kind]
    sec = re.search(rf"^## {heading}\b(.*?)(?=^## |\Z)", text, re.S | re.M)
    block = re.search(r"```sh\n(.*?)\n```", sec.group(1), re.S) if sec else None
    if not block: sys.exit(f"README.md has no ```sh block under '## {heading}'")
    lines = [l.strip() for l in block.group(1).splitlines() if l.strip() and not l.strip().startswith("#")]
    return " && ".join(lines)

def sidebar_missing() -> list[str]:
    "Notebooks that nbs/sidebar.yml (custom_sidebar = True) does not list."
    side = (ROOT / "nbs" / "sidebar.yml").read_text()
    return [p.name for p in sorted((ROOT / "nbs").glob("*.ipynb")) if p.name not in side]

if __name__ == "__main__":
    want = render()
    readme = ROOT / "README.md"
    if "--check" in sys.argv:
        if not readme.exists() or readme.read_text() != want:
            sys.exit("README.md and nbs/index.ipynb disagree: run `python .ci/readme.py` and commit README.md")
        print("README.md agrees with nbs/index.ipynb")
        if sidebar_missing(): sys.exit(f"nbs/sidebar.yml does not list: {sidebar_missing()}")
    elif "--command" in sys.argv:
        print(command(sys.argv[sys.argv.index("--command") + 1], readme.read_text()))
    else:
        readme.write_text(want); print("wrote", readme)
