"""The executed notebooks' HTML shows its formulas with no network: classrooms are often offline."""

import importlib.util
import re

import pytest

_MISSING = [m for m in ("nbformat", "nbconvert", "mathjax") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=f"HTML export needs {', '.join(_MISSING)} "
                                                        f"(pip install -e '.[test]')")

_SCRIPT_SRC = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?([^\"'\s>]+)", re.I)


def _tiny_html(tmp_path, **metadata) -> str:
    """HTML of a notebook with one formula and one code cell that never ran."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    from cpcl_kit.teach.runner import to_html

    nb = new_notebook(cells=[new_markdown_cell("The loss is $x^2$."), new_code_cell("1 + 1")], metadata=metadata)
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, str(path))
    html = to_html(path)
    assert html == tmp_path / "tiny.html"
    return html.read_text(encoding="utf-8")


def test_the_html_carries_its_own_mathjax_configured_for_dollar_math(tmp_path):
    from cpcl_kit.teach.runner import mathjax_js

    html = _tiny_html(tmp_path)
    remote = [src for src in _SCRIPT_SRC.findall(html) if re.match(r"(https?:)?//", src, re.I)]
    assert not remote, f"the HTML loads scripts from the network: {remote}"
    js = mathjax_js()
    assert "MathJax" in js and js in html, "MathJax is not inlined"
    # MathJax 3 reads window.MathJax when it starts, and by default knows no $...$ delimiters.
    config = html.index("inlineMath: [['$', '$']")
    assert config < html.index(js)
    assert "The loss is $x^2$." in html


def test_require_js_stays_for_saved_widget_state(tmp_path):
    """The widgets renderer (from a CDN in any case) needs require.js."""
    html = _tiny_html(tmp_path, widgets={"application/vnd.jupyter.widget-state+json": {"state": {}}})
    assert any("require" in src for src in _SCRIPT_SRC.findall(html))


def test_a_missing_mathjax_package_is_one_line(monkeypatch):
    from cpcl_kit.errors import KitError
    from cpcl_kit.teach.runner import mathjax_js

    monkeypatch.setitem(__import__("sys").modules, "mathjax", None)
    with pytest.raises(KitError, match="MathJax"):
        mathjax_js()
