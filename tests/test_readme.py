"""README.md runs as written: every ```bash and ```python block, in order, the way a new user follows it.

The commands go, one at a time, into one bash shell (so ``export``, ``cd`` and ``&`` carry over as in a
terminal) started in an empty scratch folder that holds only ``.venv`` (a link to this venv, so
``.venv/bin/hubcompare`` works; ``hubcompare`` is on PATH) and, beside it, ``../shared`` when this machine has
one. HF_HOME, HUBCOMPARE_HOME, HOME and HF_ENDPOINT point at fresh temporary places; the Hub server is the
project's own, started by the README's ``hubcompare hub serve ... &`` line. The one substitution: the
README's ports 8080 (the Hub) and 8765 (``hubcompare serve``) become free ports (they may be taken on a shared
machine). A ```python block runs with the venv's python in the same folder.

Each command must exit 0; its output must not hold huggingface_hub's own progress bars (forced on with
TQDM_POSITION=-1, so they would show); every ``--out`` folder and every path of a ``Wrote ...`` line must exist
afterwards, and each checkpoint folder ``train`` wrote holds the files "The checkpoint folder" lists.

A block that cannot run here carries a marker on the line before its fence:
``<!-- readme-test: skip: REASON -->`` (never run; the reason is required) or
``<!-- readme-test: needs PATH -->`` (run only when PATH exists, relative to the scratch folder).
The skipped blocks are listed in the test's output.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV = Path(sys.executable).parent.parent
MARKER = re.compile(r"<!--\s*readme-test:\s*(?P<kind>[a-z]+)\s*:?\s*(?P<arg>.*?)\s*-->")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
README_PORT = "8080"
SERVICE_PORT = "8765"  # `hubcompare serve`'s default, in the README's service section
COMMAND_TIMEOUT_S = 1800  # a generous bound per command on a loaded 2-core machine (the grid trains 8 models)
HF_BAR_TEXT = ("Fetching ", "Downloading bytes", "Upload ", "Reconstructing")


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    skip: str | None = None  # the reason, for a skip marker
    needs: str | None = None  # a path the block needs


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block, with the readme-test marker on the (non-blank) line before its fence."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        block = Block(start + 1, m["lang"], "\n".join(body))
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        marker = MARKER.fullmatch(lines[prev].strip()) if prev >= 0 else None
        if marker:
            if marker["kind"] == "skip":
                block.skip = marker["arg"]
            elif marker["kind"] == "needs":
                block.needs = marker["arg"]
            else:
                raise AssertionError(f"README.md:{prev + 1}: unknown readme-test marker {marker['kind']!r} (skip or needs)")
        blocks.append(block)
    return blocks


def shell_commands(block: str) -> list[str]:
    """The commands of a bash block: comment-only and blank lines dropped, '\\' continuations joined."""
    commands, current = [], ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        commands.append(current + line)
        current = ""
    if current:
        commands.append(current)
    return commands


def runnable(blocks: list[Block]) -> list[Block]:
    return [b for b in blocks if b.lang in ("bash", "python")]


def test_readme_markers_are_few_and_give_reasons():
    """Every marker is well formed and says why; the runnable blocks are most of the README's."""
    blocks = runnable(readme_blocks(README.read_text()))
    skipped = [b for b in blocks if b.skip is not None]
    for b in skipped:
        assert len(b.skip) >= 10, f"README.md:{b.line}: a skip marker needs a reason"
    for b in blocks:
        if b.needs is not None:
            assert b.needs, f"README.md:{b.line}: a needs marker names a path"
    assert len(skipped) <= 0.4 * len(blocks), [f"README.md:{b.line}: {b.skip}" for b in skipped]
    assert any("hubcompare hub serve" in b.text for b in blocks if b.skip is None)  # the Hub is exercised
    assert any(b.lang == "python" and b.skip is None for b in blocks)
    print("\n".join(f"skipped README.md:{b.line} ({b.lang}): {b.skip}" for b in skipped))


def test_shell_commands_join_continuations_and_drop_comments():
    text = "# a comment\n\nhubcompare a \\\n  --b 1   # trailing\nexport X=1\n"
    assert shell_commands(text) == ["hubcompare a    --b 1   # trailing", "export X=1"]


def _checkpoint_files(text: str) -> list[str]:
    """The file names the README's "The checkpoint folder" block lists."""
    section = text.split("## The checkpoint folder", 1)[1]
    block = section.split("```", 2)[1]
    return [line.split()[0] for line in block.splitlines() if line.strip() and re.fullmatch(r"[\w.-]+\.\w+", line.split()[0])]


def written(output: str) -> list[Path]:
    """The paths a command's closing ``Wrote`` lines name: ``Wrote 3 files:`` then one indented path a line (the
    CLI's ``wrote``), or ``Wrote A, B`` on one line."""
    paths, listing = [], False
    for line in output.splitlines():
        if listing and re.fullmatch(r"  \S.*", line):  # exactly the two-space indent of the listing
            paths.append(Path(line.strip()))
            continue
        listing = bool(re.fullmatch(r"Wrote [\d,]+ files?:", line.strip()))
        if not listing and line.startswith("Wrote "):
            paths += [Path(p.strip()) for p in line[len("Wrote "):].split(", ")]
    return paths


def test_written_reads_both_forms_of_the_wrote_lines():
    out = ("Wrote 2 files:\n  results/a/cka.json\n  results/a/cka.png\n   pushed runs/a -> alice/a@0123\n"
           "Wrote 1 file:\n  runs/x/grid.json\n   pushed runs/b -> alice/b@4567\nWrote c.json, d.json\n")
    assert written(out) == [Path("results/a/cka.json"), Path("results/a/cka.png"), Path("runs/x/grid.json"), Path("c.json"),
                            Path("d.json")]


class Shell:
    """One bash, fed one command at a time; each command's output and exit code land in files."""

    def __init__(self, cwd: Path, env: dict, logs: Path) -> None:
        self.logs, self.n = logs, 0
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=cwd, env=env, text=True, start_new_session=True)

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT_S) -> tuple[int, str]:
        self.n += 1
        script, out, rc = (self.logs / f"{self.n}.{ext}" for ext in ("sh", "out", "rc"))
        script.write_text(command + "\n")
        self.proc.stdin.write(f"source {shlex.quote(str(script))} > {shlex.quote(str(out))} 2>&1 < /dev/null; "
                              f"echo $? > {shlex.quote(str(rc))}.tmp && mv {shlex.quote(str(rc))}.tmp {shlex.quote(str(rc))}\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while not rc.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"the shell exited (code {self.proc.returncode}) during: {command}")
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout:.0f} s: {command}\n{out.read_text()[-3000:]}")
            time.sleep(0.2)
        return int(rc.read_text()), out.read_text() if out.exists() else ""

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the shell's session: it and what it left running (the server)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


def _wait_for_port(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing answered on port {port} within {timeout:.0f} s")


def _out_folders(command: str) -> list[str]:
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return []
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--out"]


@pytest.mark.slow
def test_readme_runs_as_written(tmp_path):
    """Every runnable README block, in order, from an empty folder, against the README's own Hub server.

    Slow: it trains every model the README trains (digits ResNet-14 and -8, the 8-run digits-zoo grid, a 3-epoch
    cifar10-jpeg ResNet-8 where ../shared has the data) and runs every comparison: 7.5 min on the shared 2-core
    development machine (load ~7), 20 min at load ~12.
    """
    text = README.read_text()
    blocks = runnable(readme_blocks(text))
    port = free_port()
    ports = {README_PORT: port, SERVICE_PORT: free_port()}
    work = tmp_path / "work"
    scratch = work / "clone"  # "the clone": empty but for the venv link
    scratch.mkdir(parents=True)
    (scratch / ".venv").symlink_to(VENV)
    if (ROOT.parent / "shared").is_dir():
        (work / "shared").symlink_to(ROOT.parent / "shared")
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUBCOMPARE_", "PYTEST", "TQDM_"))}
    env.update({
        "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "hf-home"), "HUBCOMPARE_HOME": str(tmp_path / "hc-home"),
        "MPLCONFIGDIR": str(tmp_path / "mpl"), "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_TOKEN": "hf_readme_test",
        "HF_HUB_DISABLE_TELEMETRY": "1", "TQDM_POSITION": "-1", "COLUMNS": "200",
    })
    (tmp_path / "home").mkdir()
    skipped, ran, trained = [], 0, []
    shell = Shell(scratch, env, logs)
    try:
        for b in blocks:
            if b.skip is not None:
                skipped.append(f"README.md:{b.line}: {b.skip}")
                continue
            if b.needs is not None and not (scratch / b.needs).exists():
                skipped.append(f"README.md:{b.line}: needs {b.needs}, absent here")
                continue
            if b.lang == "python":
                script = logs / f"block-{b.line}.py"
                script.write_text(b.text + "\n")
                commands = [f".venv/bin/python {shlex.quote(str(script))}"]
            else:
                commands = shell_commands(b.text)
                for old, new in ports.items():
                    commands = [c.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}").replace(f"--port {old}", f"--port {new}") for c in commands]
            for command in commands:
                code, output = shell.run(command)
                where = f"README.md:{b.line}: `{command}`"
                assert code == 0, f"{where} exited {code}:\n{output[-4000:]}"
                ran += 1
                for bar in HF_BAR_TEXT:
                    assert bar not in output, f"{where} printed huggingface_hub's own progress bar ({bar!r}):\n{output[-2000:]}"
                assert "Traceback" not in output, f"{where}:\n{output[-4000:]}"
                for p in ports.values():
                    if command.rstrip().endswith("&") and str(p) in command:
                        _wait_for_port(p)  # a user typing the next line gives the server the same moment
                for folder in _out_folders(command):
                    assert (scratch / folder).is_dir(), f"{where}: --out {folder} was not written"
                    if re.search(r"\bhubcompare train\b", command):
                        trained.append(scratch / folder)
                for p in written(output):
                    assert (p if p.is_absolute() else scratch / p).exists(), f"{where}: wrote {p}, which is not there"
    finally:
        shell.close()
    print(f"ran {ran} README commands; skipped {len(skipped)} blocks:\n" + "\n".join(skipped))
    files = _checkpoint_files(text)
    assert "model.safetensors" in files and "config.json" in files
    assert trained, "the README trains no model"
    for folder in trained:
        missing = [f for f in files if not (folder / f).is_file()]
        assert not missing, f"{folder} lacks {missing}, which 'The checkpoint folder' lists"
