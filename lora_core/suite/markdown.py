"""An executed report as a Markdown post: ``lora-reports markdown RUN_FOLDER [--out DIR]``.

The post is what a blog engine (Jekyll, Hugo, a static-site generator, a course page)
takes as it is: YAML front matter (title, date, the run's parameters, git commit,
lora_core and torch versions), then the notebook's narrative and code with their
results. Papermill's injected-parameters cell and the parameters cell are left out,
since the front matter holds the values actually used; figures become named PNG files
beside the post with alt text; DataFrames become Markdown tables; absolute paths of the
machine that ran it are cut down to what is inside the run folder, or to ``…/name``.
"""

from __future__ import annotations

import base64
import os
import re
from html.parser import HTMLParser
from pathlib import Path

from .reports import METRICS_FILE, read_metrics, write_text_atomic

FIGURES_DIR = "figures"
SKIPPED_TAGS = {"injected-parameters", "parameters"}
# An absolute path: a "/" that starts a word (not in a URL, a ratio or "../x") with at
# least one more "/" after it.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~])/(?:[^\s/'\"`<>()\[\]]+/)+([^\s/'\"`<>()\[\],;]*)")
_SAVED_FIGURE = re.compile(r"(?:save|show)_figure\([^)]*?f?[\"']([^\"']+?)(?:\.png)?[\"']\s*\)")


def _scrub(text: str, known: dict[str, str]) -> str:
    """Replace the run's own absolute paths by relative ones, and any other by ``…/name``."""
    for path, replacement in known.items():
        text = text.replace(path, replacement)
    return _ABSOLUTE_PATH.sub(lambda m: f"…/{m[1]}" if m[1] else "…/", text)


# ---------------------------------------------------------------------------------------
# HTML tables (pandas' to_html) as Markdown


class _TableParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._span = 1
        self._skip = 0  # inside <style> or <script>

    def handle_starttag(self, tag, attrs):
        if tag in ("style", "script"):
            self._skip += 1
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell, self._span = [], int(dict(attrs).get("colspan") or 1)

    def handle_endtag(self, tag):
        if tag in ("style", "script"):
            self._skip -= 1
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row += [" ".join("".join(self._cell).split())] * self._span
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None and not self._skip:
            self._cell.append(data)


def html_table_to_markdown(html_text: str) -> str | None:
    """The first table of an HTML fragment as a Markdown table; None when there is none.

    pandas writes the index name on a header row of its own; it is folded into the first
    header row, so the table has the single header row Markdown requires.
    """
    parser = _TableParser()
    parser.feed(html_text)
    if not parser.tables or not parser.tables[0]:
        return None
    rows = parser.tables[0]
    width = max(len(row) for row in rows)
    rows = [row + [""] * (width - len(row)) for row in rows]
    header, body = rows[0], rows[1:]
    # pandas' second header row: the index name first, every other cell empty. With a
    # columns name too (rename_axis), the corner reads "index \ columns".
    while body and body[0][0] and not any(body[0][1:]):
        corner = f"{body[0][0]} \\ {header[0]}" if header[0] else body[0][0]
        header, body = [corner, *header[1:]], body[1:]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * width, *(line(row) for row in body)])


# ---------------------------------------------------------------------------------------
# The post


def _notebook_path(run: Path, content: dict) -> Path:
    named = run / f"{content.get('notebook', '')}.ipynb"
    if named.is_file():
        return named
    found = sorted(run.glob("*.ipynb"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"no executed notebook in {run}: expected {named.name}, or exactly one .ipynb (found {len(found)})"
        )
    return found[0]


def _front_matter(title: str, content: dict, known: dict[str, str]) -> str:
    import yaml

    environment = content.get("environment") if isinstance(content.get("environment"), dict) else {}
    parameters = content.get("parameters") if isinstance(content.get("parameters"), dict) else {}
    # Where a run wrote its files says nothing about the experiment.
    parameters = {k: v for k, v in parameters.items() if k != "output_dir"}
    matter = {
        "title": title,
        "date": environment.get("timestamp"),
        "notebook": content.get("notebook"),
        "parameters": {k: _scrub(v, known) if isinstance(v, str) else v for k, v in parameters.items()},
        "git_commit": environment.get("git_commit"),
        "lora_core": environment.get("lora_core"),
        "torch": environment.get("torch"),
        "device": environment.get("device"),
    }
    text = yaml.safe_dump(matter, sort_keys=False, allow_unicode=True, width=100)
    return f"---\n{text}---\n"


def _first_sentence(markdown: str) -> str:
    text = " ".join(line for line in markdown.splitlines() if not line.startswith("#"))
    text = re.sub(r"[*`]", "", " ".join(text.split()))
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    return sentence if len(sentence) <= 160 else sentence[:157].rstrip() + "…"


def _saved_names(source: str, run: Path) -> list[str]:
    """The names a code cell saved its figures under, in the order it saved them.

    A literal name is taken as it is; an f-string (one figure per loop turn) is looked up
    among the run's PNG files, oldest first, which is the order the loop wrote them.
    """
    names = []
    for template in _SAVED_FIGURE.findall(source):
        if "{" not in template:
            names.append(Path(template).stem)
            continue
        pattern = re.sub(r"\{[^}]*\}", "*", template)
        found = sorted(run.glob(f"{pattern}.png"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        names += [p.stem for p in found]
    return names


class _Post:
    def __init__(self, figures_dir: Path, known: dict[str, str]):
        self.figures_dir = figures_dir
        self.known = known
        self.parts: list[str] = []
        self.figures: list[Path] = []
        self.context = ""  # the last markdown cell: what the next figure shows

    def figure(self, png_base64: str, saved: list[str]) -> str:
        number = len(self.figures) + 1
        stem = saved.pop(0) if saved else f"figure-{number}"
        name = f"{stem}.png"
        if any(f.name == name for f in self.figures):
            name = f"{stem}-{number}.png"
        path = self.figures_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(png_base64))
        self.figures.append(path)
        words = stem.replace("_", " ").replace("-", " ")
        alt = f"{words}: {self.context}" if self.context else words
        return f"![{alt.replace(']', ')').replace('[', '(')}]({FIGURES_DIR}/{name})"

    def output(self, output: dict, saved: list[str]) -> str | None:
        kind = output.get("output_type")
        if kind == "stream":
            text = _scrub(output.get("text", ""), self.known).rstrip()
            return f"```text\n{text}\n```" if text else None
        if kind == "error":
            return f"```text\n{output.get('ename')}: {_scrub(output.get('evalue', ''), self.known)}\n```"
        data = output.get("data", {})
        if "image/png" in data:
            return self.figure(data["image/png"], saved)
        if "text/html" in data:
            table = html_table_to_markdown(data["text/html"])
            if table:
                return _scrub(table, self.known)
        if "text/markdown" in data:
            return _scrub(data["text/markdown"], self.known)
        if "text/plain" in data:
            return f"```text\n{_scrub(data['text/plain'], self.known).rstrip()}\n```"
        return None


def export_markdown(run_folder: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the run's executed notebook as ``{out}/{notebook}.md`` with its figures; returns its path.

    ``out`` defaults to ``{run_folder}/markdown``. The run folder must hold ``metrics.json``
    and the executed notebook (a papermill run of the suite leaves both).
    """
    import nbformat

    run = Path(run_folder)
    if not (run / METRICS_FILE).is_file():
        raise FileNotFoundError(f"{run} is not a run folder: it holds no {METRICS_FILE}")
    content = read_metrics(run)
    notebook_path = _notebook_path(run, content)
    notebook = nbformat.read(notebook_path, as_version=4)
    out_dir = Path(out) if out is not None else run / "markdown"

    # Longest first, so the run folder wins over the folder it sits in.
    known = {}
    for folder in {str(run.resolve()), str(run.absolute())}:
        known.update({folder + "/": "", folder: "."})
    home = str(Path.home())
    if len(home) > 1:
        known[home] = "~"
    post = _Post(out_dir / FIGURES_DIR, known)
    title = notebook_path.stem
    for cell in notebook.cells:
        if SKIPPED_TAGS & set(cell.metadata.get("tags", [])):
            continue
        source = cell.source.strip()
        if cell.cell_type == "markdown":
            if title == notebook_path.stem and source.startswith("# "):
                title = source.splitlines()[0][2:].strip()
            post.context = _first_sentence(source) or post.context
            post.parts.append(_scrub(source, known))
        elif cell.cell_type == "code" and source:
            post.parts.append(f"```python\n{_scrub(source, known)}\n```")
            saved = _saved_names(source, run)
            for output in cell.get("outputs", []):
                rendered = post.output(output, saved)
                if rendered:
                    post.parts.append(rendered)
    body = "\n\n".join(post.parts)
    path = out_dir / f"{notebook_path.stem}.md"
    return write_text_atomic(path, _front_matter(title, content, known) + "\n" + body + "\n")
