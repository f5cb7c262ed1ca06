"""tools/benchlib.py: the timer, table printer and JSON writer every benchmark tool shares."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import benchlib  # noqa: E402


def test_time_repeats_excludes_warmups_and_reports_min_and_median():
    calls = []

    def work():
        calls.append(1)
        time.sleep(0.01)

    timing = benchlib.time_repeats(work, warmup=2, repeats=3)
    assert len(calls) == 5 and len(timing.times_s) == len(timing.cpu_s) == 3
    # sleep guarantees at least 10 ms per call; sleeping costs (almost) no CPU time
    assert all(t >= 0.01 for t in timing.times_s)
    assert timing.min_s == min(timing.times_s) <= timing.median_s <= max(timing.times_s)
    assert sum(timing.cpu_s) < sum(timing.times_s)
    assert benchlib.Timing().median_s is None and benchlib.median([]) is None


def test_timed_synchronises_cuda_before_and_after(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    out, wall, _ = benchlib.timed(lambda: events.append("work") or 7, "cuda")
    assert out == 7 and wall >= 0 and events == ["sync", "work", "sync"]
    events.clear()
    benchlib.timed(lambda: events.append("work"), "cpu")
    assert events == ["work"]  # no CUDA calls on CPU


def test_print_table_aligns_columns_and_marks_missing_values():
    out = io.StringIO()
    rows = [["vit_s", benchlib.fmt(0.12345, ".3f")], ["hiera_large", benchlib.fmt(None, ".3f")]]
    benchlib.print_table(["model", "s"], rows, out=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["model", "s"] and set(lines[1]) == {"-"}
    assert lines[2].split() == ["vit_s", "0.123"] and lines[3].split() == ["hiera_large", "-"]
    # the second column starts at the same place on every row
    assert {line.index(word) for line, word in zip([lines[0], lines[2], lines[3]], ["s", "0.123", "-"])} == {13}


def test_write_json_atomic_uses_the_umask_and_never_leaves_half_a_file(tmp_path):
    path = tmp_path / "nested" / "report.json"
    old = os.umask(0o027)
    try:
        benchlib.write_json_atomic(path, {"a": 1, "where": tmp_path})
    finally:
        os.umask(old)
    assert json.loads(path.read_text()) == {"a": 1, "where": str(tmp_path)}
    assert oct(path.stat().st_mode & 0o777) == "0o640"

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        benchlib.write_json_atomic(path, {"a": Broken()})
    assert json.loads(path.read_text())["a"] == 1  # the previous report survives
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temporary file left


def test_machine_info_names_versions_threads_and_processor():
    info = benchlib.machine_info("cpu")
    assert info["torch"] == torch.__version__ and info["torch_num_threads"] == torch.get_num_threads()
    assert info["device"] == "cpu" and info["cpu_count"] >= 1 and info["mem_total_gib"] > 0
    assert info["device_name"] == info["cpu_model"]
    json.dumps(info)  # serialisable as it is
