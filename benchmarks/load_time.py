"""Load time of an artifact in fresh processes, with and without the hash memo: `python -m benchmarks.load_time ART`.

Contenders, alternated round by round after one untimed load each (which also builds any missing engine
and fills the page cache, so disk speed is not what is measured):

- `memo-off`: this sdrt with SDRT_HASH_MEMO=off, hashing every file at every load (the ONNX for the
  cache key, every engine file for its recorded digest);
- `memo`: this sdrt with a memo the untimed load filled, so unchanged files are not read again;
- `baseline` (with --baseline-src DIR, e.g. an earlier commit unpacked by `git archive`): that code.

Prints a table and writes JSON (`--json`, default benchmarks/results/load-time-<machine>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from sdrt.bench.machine import machine_info, machine_slug
from sdrt.files import atomic_file

ROOT = Path(__file__).resolve().parents[1]
_CHILD = """
import json, resource, sys, time
start = time.perf_counter()
from sdrt import Pipeline
imported = time.perf_counter()
Pipeline.load(sys.argv[1], backend=sys.argv[2])
done = time.perf_counter()
print(json.dumps({"import_seconds": imported - start, "load_seconds": done - imported,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def _load(artifact: Path, backend: str, src: Path, memo: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), SDRT_HASH_MEMO=memo)
    env.pop("SDRT_CACHE_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(artifact), backend], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"load failed ({src}): {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-src", type=Path, default=None, help="another sdrt source tree to time beside")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="sdrt-load-time-") as tmp:
        memo = str(Path(tmp) / "hash-memo.json")
        contenders = {"memo-off": (ROOT, "off"), "memo": (ROOT, memo)}
        if args.baseline_src is not None:
            contenders["baseline"] = (args.baseline_src.resolve(), "off")
        for src, memo_setting in contenders.values():  # untimed: builds engines, fills the memo and page cache
            _load(args.artifact, args.backend, src, memo_setting)
        samples: dict[str, list[dict]] = {name: [] for name in contenders}
        for _ in range(args.rounds):
            for name, (src, memo_setting) in contenders.items():
                samples[name].append(_load(args.artifact, args.backend, src, memo_setting))

    rows = {}
    print(f"{'contender':<10} {'load s (median)':>16} {'min':>8} {'max':>8} {'peak RSS MiB':>13}")
    for name, runs in samples.items():
        loads = [r["load_seconds"] for r in runs]
        rows[name] = {
            "load_seconds_median": statistics.median(loads),
            "load_seconds": loads,
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
        }
        print(
            f"{name:<10} {statistics.median(loads):>16.2f} {min(loads):>8.2f} {max(loads):>8.2f} "
            f"{rows[name]['peak_rss_bytes'] / 2**20:>13.0f}"
        )
    command = "python -m benchmarks.load_time " + " ".join(sys.argv[1:] if argv is None else argv)
    out = args.json or ROOT / "benchmarks" / "results" / f"load-time-{machine_slug('cpu')}.json"
    with atomic_file(out) as tmp_out:
        tmp_out.write_text(
            json.dumps({"command": command, "machine": machine_info(), "contenders": rows}, indent=2) + "\n"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
