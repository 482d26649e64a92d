"""Result files are written whole or not at all: a writer that dies mid-write leaves the previous file as it was.

Each test writes a file once, then makes the serializer fail after writing part of its output (as a full disk or
a kill would) and checks that the target still holds the first version and that no temporary is left beside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from visarl.probe.demos import _write_manifest, read_manifest
from visarl.report.results import RunResult
from visarl.report.tables import write_figure3, write_table1


class DiskFull(OSError):
    """What the failing serializer raises."""


def _results(success: float) -> list[RunResult]:
    steps = np.array([0, 500, 1000])
    return [
        RunResult(Path(f"r{seed}"), "reach-v3", "CNN RGB", seed, success, steps, np.full(3, success))
        for seed in range(2)
    ]


def _no_temporaries(directory: Path) -> None:
    assert not [p.name for p in directory.iterdir() if p.name.startswith(".")]


def _half_then_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Path.write_text writes the first half of its text, then raises."""

    def write_text(self: Path, data: str, *args: object, **kwargs: object) -> int:
        with open(self, "w", encoding="utf-8") as f:
            f.write(data[: len(data) // 2])
        raise DiskFull("no space left on device")

    monkeypatch.setattr(Path, "write_text", write_text)


def test_table1_survives_a_failed_rewrite(tmp_path, monkeypatch):
    md, csv = write_table1(_results(0.5), tmp_path)
    before = md.read_text(), csv.read_text()
    assert "0.50" in before[0]
    _half_then_fail(monkeypatch)
    with pytest.raises(DiskFull):
        write_table1(_results(0.9), tmp_path)
    assert (md.read_text(), csv.read_text()) == before
    _no_temporaries(tmp_path)


def test_figure_survives_a_failed_rewrite(tmp_path, monkeypatch):
    path = write_figure3(_results(0.5), tmp_path)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")  # the format comes from the target's suffix, not the temporary's
    real_savefig = Figure.savefig

    def savefig(self: Figure, fname: Path, *args: object, **kwargs: object) -> None:
        real_savefig(self, fname, *args, **kwargs)
        Path(fname).write_bytes(Path(fname).read_bytes()[:100])  # cut short, as by a kill
        raise DiskFull("no space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig)
    with pytest.raises(DiskFull):
        write_figure3(_results(0.9), tmp_path)
    assert path.read_bytes() == before
    _no_temporaries(tmp_path)


def test_demo_manifest_survives_a_failed_rewrite(tmp_path, monkeypatch):
    _write_manifest(tmp_path, {"num_demos": 25, "task": "reach-v3"})
    _half_then_fail(monkeypatch)
    with pytest.raises(DiskFull):
        _write_manifest(tmp_path, {"num_demos": 50, "task": "reach-v3"})
    assert read_manifest(tmp_path) == {"num_demos": 25, "task": "reach-v3"}
    _no_temporaries(tmp_path)
