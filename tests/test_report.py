"""`hubcompare report MODEL`: one self-contained HTML page (it parses, its images are embedded PNGs, it loads nothing
from elsewhere), holding the card's fields and its provenance, with hostile card text shown escaped, never run."""

from __future__ import annotations

import base64
import re
import shutil
from html.parser import HTMLParser

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
    out = tmp_path / "page" / "model.html"
    r = runner.invoke(app, ["report", str(run), "--out", str(out), "--examples", "200", "--pc-examples", "100",
                            "--probe-examples", "200", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    html = out.read_text()
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
    assert not re.search(r"<img[^>]*evil", html)
    # the card's fields, provenance and sections
    for field in ("license", "apache-2.0", "tags", "depth-8", "hubcompare.recipe_hash", "dataset fingerprint", "weights_sha256"):
        assert field in text, field
    for section in ("Model card", "Provenance", "Within-model CKA", "Block structure", "Linear probes", "Block deletion"):
        assert f">{section}</h2>" in html


def test_report_out_must_be_html(trained_run, tmp_path):
    r = runner.invoke(app, ["report", str(trained_run), "--out", str(tmp_path / "page.txt")])
    assert r.exit_code == 2 and "does not end in .html" in " ".join(re.sub(r"[│╭╮╰╯─]", " ", r.output).split())
    assert not (tmp_path / "page.txt").exists()
