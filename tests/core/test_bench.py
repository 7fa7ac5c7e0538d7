"""Peak-memory figures belong to the process that reports them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from maml_tune.core.bench import peak_rss_mb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss inheritance is Linux's")
def test_a_child_process_does_not_report_its_parents_peak():
    ballast = bytearray(b"\x01" * (1536 * 2**20))  # 1.5 GiB, touched, in this (parent) process
    assert peak_rss_mb() > 1536
    code = "from maml_tune.core.bench import peak_rss_mb; print(peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout)
    del ballast
    assert 0 < child < 1024
