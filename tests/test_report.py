"""What `python -m reprolib reproduce / report` write besides claims.json: REPORT.md with its
sections and links, the headline figures, the HTML exports; its help and its failure exit."""
import base64
import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from reprolib.__main__ import main
from reprolib.claims import build_report, record
from reprolib.export import claim_cells, export_html, extract_headline_figure, headline_png, headline_source

# Two different 1×1 PNGs (a black and a white pixel).
PNG_BLACK = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==")
PNG_WHITE = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGP4DwABAQEAWk1v8QAAAABJRU5ErkJggg==")


def png_output(png: bytes):
    return new_output("display_data", data={"image/png": base64.b64encode(png).decode(), "text/plain": "<Figure>"})


def cell(source, *, id, tags=(), outputs=()):
    c = new_code_cell(source, id=id, metadata={"tags": list(tags)}, outputs=list(outputs), execution_count=1)
    return c


def write(nb, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def fake_anyprec_notebook():
    return new_notebook(cells=[
        new_markdown_cell("# 05 · fake", id="intro"),
        cell('nb.claims.record("anyprec.storage", paper="smaller", ours="1.5× smaller", holds=True)', id="c-storage"),
        cell("x = 1", id="c-plot", tags=["headline-figure"], outputs=[png_output(PNG_BLACK)]),
        # recorded under a computed id: found through the claim's displayed table
        cell("nb.claims.record(name, paper=1, ours=2, holds=None)", id="c-dyn", outputs=[
            new_output("execute_result", data={"text/markdown": "**Unseen** (`anyprec.unseen`)\n\n| quantity |"},
                       execution_count=1)]),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


def test_report_reads_as_results_section_with_links(tmp_path):
    results, notebooks = tmp_path / "results", tmp_path / "notebooks"
    write(fake_anyprec_notebook(), notebooks / "05_fake.ipynb")
    # Recorded against reading order, and a claim of another paper with no notebook on disk.
    record("anyprec.unseen", paper={"3-bit": "usable"}, ours={"3-bit": "78.9 | calibrated"}, holds=None,
           note="BN re-estimated\non 10 batches.", title="Unseen bit-widths", results_dir=results, source="05_fake")
    record("anyprec.storage", paper="smaller", ours="1.5× smaller", holds=True, note="Bytes from the architecture.",
           title="Storage", results_dir=results, source="05_fake", quick=True)
    record("qts.mu", paper=93.6, ours=99.0, holds=False, results_dir=results, source="06_missing")
    (results / "html").mkdir()
    (results / "html" / "05_fake.html").write_text("<html></html>")
    extract_headline_figure(notebooks / "05_fake.ipynb", results / "figures")

    text = build_report(results, notebooks_dir=notebooks).read_text()
    assert text.startswith("# Results: paper vs. ours")
    assert "**3 claims: 1 holds, 1 does not hold, 1 inconclusive.**" in text
    assert "quick mode" in text
    anyprec = text.split("## Any-Precision Deep Neural Networks (AAAI 2021)", 1)[1].split("\n## ", 1)[0]
    assert "Yu et al." in anyprec and "2 claims: 1 holds, 1 inconclusive." in anyprec
    assert "![Headline figure of 05_fake](figures/05_fake.png)" in anyprec
    assert "| claim | paper | ours | verdict | measured in |" in anyprec
    rows = [line for line in anyprec.splitlines() if line.startswith("| ") and "05_fake" in line]
    # reading order of the notebook, not of claims.json; links to the notebook and to the cell
    assert [r.split(" | ")[0] for r in rows] == ["| Storage", "| Unseen bit-widths"]
    assert "[05_fake](../notebooks/05_fake.ipynb) · [cell](html/05_fake.html#cell-id=c-storage)" in rows[0]
    assert "html/05_fake.html#cell-id=c-dyn" in rows[1]
    assert "**holds** (quick)" in rows[0]
    assert "3-bit: 78.9 \\| calibrated" in rows[1]  # a pipe in a value does not break the table
    assert "**Unseen bit-widths** (`anyprec.unseen`). BN re-estimated on 10 batches." in anyprec
    qts_row = next(line for line in text.splitlines() if line.startswith("| qts.mu |"))
    assert qts_row == "| qts.mu | 93.6 | 99 | **does not hold** | `06_missing` |"  # no notebook, no link
    # deterministic: no timestamps, the same bytes when built again
    recorded = json.loads((results / "claims.json").read_text())["qts.mu"]["recorded"]
    assert recorded not in text
    assert build_report(results, notebooks_dir=notebooks).read_text() == text


def test_report_without_claims(tmp_path):
    assert "No claims recorded yet" in build_report(tmp_path, notebooks_dir=tmp_path).read_text()


def test_claim_cells_by_source_literal_then_output():
    nb = fake_anyprec_notebook()
    assert claim_cells(nb, ["anyprec.storage", "anyprec.unseen", "anyprec.gone"]) == {
        "anyprec.storage": "c-storage", "anyprec.unseen": "c-dyn"}


def test_headline_figure_is_the_tagged_cells_first_png(tmp_path):
    nb = new_notebook(cells=[
        cell("plot()", id="a", outputs=[png_output(PNG_WHITE)]),                      # untagged
        cell("plot()", id="b", tags=["nbval-ignore-output", "headline-figure"],
             outputs=[new_output("stream", name="stdout", text="3 runs\n"), png_output(PNG_BLACK),
                      png_output(PNG_WHITE)]),
    ])
    path = write(nb, tmp_path / "07_fake.ipynb")
    assert headline_png(path) == PNG_BLACK
    out = extract_headline_figure(path, tmp_path / "figures")
    assert out == tmp_path / "figures" / "07_fake.png" and out.read_bytes() == PNG_BLACK
    plain = new_notebook(cells=[cell("plot()", id="a", outputs=[png_output(PNG_WHITE)])])
    untagged = write(plain, tmp_path / "x.ipynb")
    assert headline_png(untagged) is None and extract_headline_figure(untagged, tmp_path / "figures") is None


def test_headline_source_skips_quick_copies(tmp_path):
    nb = new_notebook(cells=[cell("plot()", id="b", tags=["headline-figure"], outputs=[png_output(PNG_BLACK)])])
    committed = write(nb, tmp_path / "notebooks" / "07_fake.ipynb")
    quick = new_notebook(cells=nb.cells, metadata={"papermill": {"parameters": {"quick": True}}})
    write(quick, tmp_path / "results" / "07_fake.ipynb")
    assert headline_source("07_fake", tmp_path / "results", tmp_path / "notebooks") == committed
    write(nb, tmp_path / "results" / "07_fake.ipynb")  # a newer default-mode run wins
    found = headline_source("07_fake", tmp_path / "results", tmp_path / "notebooks")
    assert found == tmp_path / "results" / "07_fake.ipynb"


def test_html_export_has_nbconvert_cell_anchors(tmp_path):
    html = export_html(write(fake_anyprec_notebook(), tmp_path / "05_fake.ipynb"), tmp_path / "html")
    assert html == tmp_path / "html" / "05_fake.html"
    assert 'id="cell-id=c-storage"' in html.read_text()


def test_cli_help(capsys):
    for argv in (["--help"], ["reproduce", "--help"], ["report", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
    out = capsys.readouterr().out
    for needed in ("reproduce", "report", "--quick", "--only", "--inplace", "html/<name>.html",
                   "figures/<name>.png", "headline-figure", "exit status is 1", "examples:"):
        assert needed in out, needed


PARAMETERS = 'quick = False\nresults_dir = "../results"'
RECORD = ('from reprolib.claims import record\n'
          'record("basics.fake", paper=1, ours=1, holds=True, results_dir=results_dir, source="00_ok", quick=quick)')
SHOW_PNG = f"from IPython.display import Image, display\ndisplay(Image(data={PNG_BLACK!r}))"


def test_reproduce_names_the_failing_notebook_and_exports_the_rest(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("REPROLIB_QUICK", raising=False)  # `make test` sets it; this run is default mode
    monkeypatch.setenv("REPROLIB_PROGRESS", "0")
    meta = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    notebooks, results = tmp_path / "notebooks", tmp_path / "out"
    write(new_notebook(cells=[cell(PARAMETERS, id="p", tags=["parameters"]), cell(RECORD, id="rec"),
                              cell(SHOW_PNG, id="fig", tags=["headline-figure"])], metadata=meta),
          notebooks / "00_ok.ipynb")
    write(new_notebook(cells=[cell(PARAMETERS, id="p", tags=["parameters"]),
                              cell("raise ValueError('boom in cell two')", id="bad")], metadata=meta),
          notebooks / "01_bad.ipynb")

    code = main(["reproduce", "--notebooks", str(notebooks), "--results", str(results)])
    captured = capsys.readouterr()
    assert code == 1
    assert "1 notebook(s) failed: 01_bad (ValueError: boom in cell two)" in captured.err
    assert "FAILED: 01_bad" in captured.out and "00_ok" not in captured.err
    # both executed copies exported (the failed one shows its traceback), the good one's figure extracted
    assert "boom in cell two" in (results / "html" / "01_bad.html").read_text()
    assert 'id="cell-id=rec"' in (results / "html" / "00_ok.html").read_text()
    assert (results / "figures" / "00_ok.png").read_bytes() == PNG_BLACK
    assert not (results / "figures" / "01_bad.png").exists()
    report = (results / "REPORT.md").read_text()
    assert "[00_ok](../notebooks/00_ok.ipynb) · [cell](html/00_ok.html#cell-id=rec)" in report
    assert "![Headline figure of 00_ok](figures/00_ok.png)" in report

    assert main(["reproduce", "--notebooks", str(notebooks), "--results", str(results), "--only", "00"]) == 0
