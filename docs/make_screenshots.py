"""Regenerate the dashboard screenshots in docs/ from a real small study.

Runs a tiny sinusoid search (the study the dashboard tests use: 12 trials, one diverging, one
invalid configuration, one left running, one waiting), then writes

* ``docs/dashboard.txt``: a text capture at 120 columns,
* ``docs/dashboard.svg``: rich's SVG export at 160 columns (two-column layout),
* ``docs/dashboard.png``: the SVG converted with ``rsvg-convert`` (Debian: librsvg2-bin) or
  ``cairosvg`` (PyPI), whichever is installed.

Run from the repository root: ``python docs/make_screenshots.py``.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "dashboard"))


def main() -> None:
    import studies
    from maml_tune.dashboard import render
    from maml_tune.dashboard.source import open_source
    from maml_tune.dashboard.state import Dashboard

    folder = Path(tempfile.mkdtemp(prefix="maml-tune-docs-"))
    url = f"sqlite:///{folder / 'studies.db'}"
    studies.build_single(folder, url, n_trials=12, name="sinusoid-demo")
    source = open_source(url, "sinusoid-demo")
    view = Dashboard(source).view(refresh=False)
    view.url = "sqlite:///studies/maml-tune.db"  # the default path, not the temporary folder
    docs = ROOT / "docs"
    text = Console(width=120, record=True, file=io.StringIO(), color_system=None)
    text.print(render.dashboard(view, 120))
    (docs / "dashboard.txt").write_text(text.export_text())
    wide = Console(width=160, record=True, file=io.StringIO(), force_terminal=True, color_system="truecolor")
    wide.print(render.dashboard(view, 160))
    svg = docs / "dashboard.svg"
    svg.write_text(wide.export_svg(title="maml-tune dashboard"))
    png = docs / "dashboard.png"
    if shutil.which("rsvg-convert"):
        subprocess.run(["rsvg-convert", "--zoom", "1.5", "-o", str(png), str(svg)], check=True)
    else:
        import cairosvg  # pip install cairosvg

        cairosvg.svg2png(url=str(svg), write_to=str(png), scale=1.5)
    source.close()
    shutil.rmtree(folder, ignore_errors=True)
    print(f"wrote {docs / 'dashboard.txt'}, {svg} and {png}")


if __name__ == "__main__":
    main()
