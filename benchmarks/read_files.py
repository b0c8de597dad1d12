"""How long reading a problem file takes: ``jaxnls.io.read_pose_graph`` / ``read_bal``, median of repeats.

    python benchmarks/read_files.py w10000.graph sphere2500.txt /path/to/problem-16-22106-pre.txt

A name that is not a path is looked up in the gtsam wheel's Data folder. To compare two versions of the
readers, run it once per version with ``PYTHONPATH`` at that version's checkout (as benchmarks/before_after.sh
does): the arrays each version reads are also summarised by a checksum, so the two outputs show whether the
results agree bit for bit.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time

import numpy as np

from jaxnls.io import detect_format, read_bal, read_pose_graph


def _path(name: str) -> str:
    if os.path.exists(name):
        return name
    import gtsam

    return gtsam.findExampleDataFile(name)


def _checksum(result) -> str:
    digest = hashlib.sha1()
    for field in sorted(vars(result)):
        value = getattr(result, field)
        if isinstance(value, np.ndarray):
            digest.update(field.encode() + value.dtype.str.encode() + str(value.shape).encode() + value.tobytes())
    return digest.hexdigest()[:12]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'file':34s} {'lines':>8s} {'read s (median)':>16s}  arrays")
    for name in args.files:
        path = _path(name)
        read = read_bal if detect_format(path) == "bal" else read_pose_graph
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = read(path)
            times.append(time.perf_counter() - start)
        with open(path, "rb") as handle:
            lines = handle.read().count(b"\n")
        print(f"{os.path.basename(path):34s} {lines:8d} {statistics.median(times):16.3f}  {_checksum(result)}")


if __name__ == "__main__":
    main()
