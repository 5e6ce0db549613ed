#!/usr/bin/env python3
"""The README's chart, drawn in a sandbox: ``.venv/bin/python scripts/readme_chart.py``.

A session gets numpy, pandas and matplotlib from the wheelhouse ``make test`` fetches
(``.venv/wheelhouse``), runs one data cell, and the PNG it displayed is written to
``docs/chart.png`` (what the README shows). The cell's items are printed as they come
(``on_result``); the figure comes at the cell's end, as a notebook's does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nsbox

ROOT = Path(__file__).resolve().parents[1]
CELL = """
import numpy as np, pandas as pd, matplotlib.pyplot as plt
rng = np.random.default_rng(7)
walks = pd.DataFrame(rng.standard_normal((250, 3)).cumsum(axis=0), columns=["a", "b", "c"])
display(walks.describe().round(2))
walks.plot(figsize=(6, 2.6), title="Three random walks, drawn in an nsbox sandbox")
plt.tight_layout()
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", default=str(ROOT / ".venv" / "wheelhouse"), help="a directory of wheels")
    parser.add_argument("--out", default=str(ROOT / "docs" / "chart.png"), help="where the PNG goes")
    args = parser.parse_args()
    with nsbox.NsSandbox(memory="1G", workspace_size="1G", timeout=120, wheels=args.wheels) as sandbox:
        sandbox.install_packages(["matplotlib", "pandas"], timeout=600)
        result = sandbox.execute_code(CELL, on_result=lambda item: print("shown:", sorted(item.data)))
    if not result.success or result.png is None:
        print(f"the cell failed or displayed no PNG: {result.status} {result.error or ''}", file=sys.stderr)
        print(result.traceback or "", file=sys.stderr)
        return 1
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_bytes(result.png)
    print(f"{args.out}: {len(result.png)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
