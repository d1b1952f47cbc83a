"""Files the suite writes get the mode any program's files get: 0666 less the umask.

They are written atomically (a temporary file renamed into place), and the temporary
file must not carry tempfile's private 0600 into metrics.json, the reports index or a
baseline; an existing file keeps its own mode, as with a plain ``open()``.
"""

import os
import stat
from contextlib import contextmanager

import pytest

from lora_core.suite import reports


@contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_metrics_json_and_the_index_follow_the_umask(tmp_path, mask, expected):
    with umask(mask):
        metrics = reports.write_metrics(tmp_path / "run", "nb", {}, {"loss": 1.0}, environment={})
        index = reports.build_index(tmp_path)
    assert mode(metrics) == expected
    assert mode(index) == expected


def test_rewriting_a_file_keeps_its_mode_and_leaves_no_temporary_behind(tmp_path):
    path = tmp_path / "summary.csv"
    with umask(0o022):
        reports.write_text_atomic(path, "a\n")
        os.chmod(path, 0o664)
        reports.write_text_atomic(path, "b\n")
    assert mode(path) == 0o664 and path.read_text() == "b\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]
