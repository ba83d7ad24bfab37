"""benchmarks/gpu_node.py in its CI-sized form on the CPU: it runs and prints its table."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from workflow_helpers import ROOT


def test_gpu_node_benchmark_prints_its_table_on_the_cpu():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu_node.py"), "--device", "cpu", "--model",
         "demo", "--volume-shape", "64", "128", "128", "--synapses", "24", "--quick",
         "--batch-size", "8"], capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, check=True).stdout
    rows = dict(re.findall(r"^  (\S.*?)\s{2,}(\S+(?: %)?)$", out, re.MULTILINE))
    for name in ("JPEG chunks/s: tensorstore (read + decode)",
                 "JPEG chunks/s: nvimgcodec cpu-only (read + decode)",
                 "data path alone, synapses/s: tensorstore",
                 "data path alone, synapses/s: nvimgcodec",
                 "model alone, synapses/s: forward pass",
                 "end to end (local), synapses/s: nvimgcodec",
                 "end to end (http), synapses/s: tensorstore",
                 "end to end (http), synapses/s: nvimgcodec"):
        assert float(rows[name]) > 0, (name, out)
    assert rows["GPU busy (http): nvimgcodec"] == "n/a"  # no GPU: no busy share
