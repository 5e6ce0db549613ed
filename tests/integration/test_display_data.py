"""Display items of the data stack (issue 23): a matplotlib figure comes back as a PNG of its
size, a pandas DataFrame as an HTML table and text, a figure that fails to draw says why and
the cell goes on. matplotlib and pandas are installed into the session from the wheelhouse
``make test`` fetches (``.venv/wheelhouse``): the host's python3 has neither.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import nsbox
from nsbox import Status
from tests.conftest import STRICT, require_sandbox
from tests.integration.test_display import png_size

WHEELHOUSE = Path(__file__).resolve().parents[2] / ".venv" / "wheelhouse"


@pytest.fixture(scope="module")
def data_session() -> Iterator[nsbox.NsSandbox]:
    require_sandbox()
    if not (WHEELHOUSE / ".fetched").exists():
        reason = f"no wheelhouse at {WHEELHOUSE}: make test fetches it (matplotlib, pandas)"
        if STRICT:
            pytest.fail(f"strict mode: {reason}")
        pytest.skip(reason)
    with nsbox.NsSandbox(memory="1G", workspace_size="1G", timeout=60, wheels=str(WHEELHOUSE)) as session:
        session.install_packages(["matplotlib", "pandas"], timeout=600)
        yield session


def test_a_cell_that_plots_returns_its_figure_as_a_png_of_its_size(data_session: nsbox.NsSandbox) -> None:
    code = "import matplotlib.pyplot as plt\nplt.figure(figsize=(4, 3), dpi=50)\nplt.plot([1, 3, 2])\n'drawn'"
    result = data_session.execute_code(code)
    assert result.status is Status.OK, result
    value, figure = result.results
    assert value.text == "'drawn'"
    assert png_size(figure.png) == (200, 150), "4 x 3 inches at 50 dpi"
    assert figure.text == "<Figure size 200x150 with 1 Axes>", figure.text
    assert data_session.execute_code("1").results[-1].text == "1", "the figure was closed: shown once"
    assert len(data_session.execute_code("1").results) == 1


def test_a_dataframe_gives_an_html_table_and_text(data_session: nsbox.NsSandbox) -> None:
    result = data_session.execute_code("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    assert result.status is Status.OK, result
    (table,) = result.results
    assert table.html is not None and "<table" in table.html and "<td>x</td>" in table.html, table.html
    assert table.text.split() == ["a", "b", "0", "1", "x", "1", "2", "y"], table.text


def test_a_figure_that_fails_to_draw_says_why_and_the_cell_goes_on(data_session: nsbox.NsSandbox) -> None:
    code = "import matplotlib.pyplot as plt\nplt.figure()\nplt.title(r'$\\frac{$')\nx = 5"
    result = data_session.execute_code(code)
    assert result.status is Status.OK and result.error is None, result
    (figure,) = result.results
    assert figure.png is None and figure.text.startswith("<Figure size"), figure
    assert any(e.startswith("_repr_png_: ValueError") for e in figure.errors), figure.errors
    assert data_session.execute_code("x").value == "5", "the session goes on"
