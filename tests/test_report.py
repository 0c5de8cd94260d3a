"""`hubcompare report MODEL`: one self-contained HTML page (it parses, its images are embedded PNGs, it loads nothing
from elsewhere), holding the card's fields and its provenance, with hostile card text shown escaped, never run."""

from __future__ import annotations

import base64
import re
import shutil
from html.parser import HTMLParser

import pytest
import typer
from typer.testing import CliRunner

from hubcompare.cli.main import app

runner = CliRunner()
HOSTILE = '<script>alert("pwned")</script><img src="http://evil.example/x.png" onerror="steal()">'


class Page(HTMLParser):
    """Every start tag with its attributes, the text, and whether tags are balanced."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.tags, self.text, self.stack = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> after {self.stack[-3:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_report_is_one_self_contained_escaped_page(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    card = (run / "README.md").read_text()
    (run / "README.md").write_text(card.replace("# ResNet-8", f"# ResNet-8 {HOSTILE}", 1))
    out = tmp_path / "page"  # a folder, as every command's --out: the page is report.html in it
    r = runner.invoke(app, ["report", str(run), "--out", str(out), "--examples", "200", "--pc-examples", "100",
                            "--probe-examples", "200", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert [p.name for p in out.iterdir()] == ["report.html"]
    html = (out / "report.html").read_text()
    page = Page()
    page.feed(html)
    page.close()
    assert not page.stack, f"unclosed tags {page.stack}"
    imgs = [a["src"] for t, a in page.tags if t == "img"]
    assert len(imgs) >= 4  # CKA heatmap, block figure, probes, deletion curves
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # nothing loaded from elsewhere: no script, no stylesheet link, no src/href outside the page
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe", "object", "embed")]
    for t, a in page.tags:
        for key in ("src", "href"):
            if key in a:
                assert a[key].startswith(("data:", "#")), (t, a)
    # the hostile card text is there as text, escaped
    text = "".join(page.text)
    assert HOSTILE in text and "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in html
    # no tag carries the hostile URL or an event handler (read from parsed attributes: a regex over the page
    # could match "evil" inside a PNG's base64 text by chance)
    assert not [(t, a) for t, a in page.tags
                if any(k.startswith("on") or "evil.example" in (v or "") for k, v in a.items())]
    # the card's fields, provenance and sections
    for field in ("license", "apache-2.0", "tags", "depth-8", "hubcompare.recipe_hash", "dataset fingerprint", "weights_sha256"):
        assert field in text, field
    for section in ("Model card", "Provenance", "Within-model CKA", "Block structure", "Linear probes", "Block deletion"):
        assert f">{section}</h2>" in html
    # its sentences are the data's: this ResNet-8 has no block, so no claim about blocks; one training count
    flat = " ".join(text.split())
    assert "No block was detected" in flat and "barely rises" not in flat and "costs little" not in flat
    assert "Detected blocks are outlined" not in flat and "nothing is outlined" in flat
    # --probe-examples 200 draws 199 (class-stratified, rounded per class): 179 fit the L2 path, 20 choose it, the
    # probe is refit on all 199, which the text and the figure both say
    assert "fit on 199 training examples (L2 chosen on 20 of them held out)" in flat and "179" not in flat
    assert re.search(r"\d\.\d{4} -&gt; \d\.\d{4} \([-+]\d\.\d{4}\)", html)  # deletion rows: full -> after (change)


def test_report_out_is_a_folder_or_an_html_file(tmp_path):
    """--out takes a folder (the page is report.html in it) or a NAME.html file; a file that is no .html page, or a
    place under a file, is refused before any work."""
    from hubcompare.cli.report import report_out
    from hubcompare.report.page import ModelReport, Section, report_path, write_report

    page = ModelReport("toy", "a toy model", [Section("s", "A section", text="text")], {"x": 1})
    assert write_report(page, tmp_path / "a") == tmp_path / "a" / "report.html"
    assert write_report(page, tmp_path / "b" / "mine.html") == tmp_path / "b" / "mine.html"
    assert "A section" in (tmp_path / "b" / "mine.html").read_text() and not (tmp_path / "b" / "report.html").exists()
    assert report_path(tmp_path / "page.htm") == tmp_path / "page.htm"
    (tmp_path / "x.html").mkdir()  # a folder named .html is a folder
    assert report_path(tmp_path / "x.html") == tmp_path / "x.html" / "report.html"
    file = tmp_path / "page.txt"
    file.write_text("not a folder")
    for bad, why in ((file, "is a file: give a folder"), (file / "r.html", "page.txt is a file"),
                     (file / "sub", "page.txt is a file")):
        with pytest.raises(typer.BadParameter, match=why):
            report_out(bad)
    assert report_out(tmp_path / "new" / "folder") == tmp_path / "new" / "folder"


def test_report_out_refused_before_any_work(trained_run, tmp_path):
    file = tmp_path / "page.txt"
    file.write_text("keep")
    r = runner.invoke(app, ["report", str(trained_run), "--out", str(file)])
    assert r.exit_code == 2 and "is a file: give a folder" in " ".join(re.sub(r"[│╭╮╰╯─]", " ", r.output).split())
    assert file.read_text() == "keep"
