"""The data path at the paper's scale: memory and time to the first training step.

What: ``trajebm train`` (the default ``ebm-proposal`` model, batch 256) on a synthetic
dataset of 200,000 trajectories x 100 steps written straight in the Minari layout
(:func:`trajebm.data.synthetic.write_synthetic_dataset`; no simulation), launched as a
separate process twice: cold (the read cache beside the dataset does not exist yet and is
built first) and warm (the cache is there). For each: seconds from launch to the first
training step (the trainer writes ``checkpoint.pt`` just before its first step), peak
resident memory (VmRSS, and its anonymous and file-backed parts, polled every 0.1 s), seconds
per training step, and the size of the final checkpoint.

Why: the issue's targets are under 6 GB resident and the first step within 2 minutes of
launch. Materialising every window, as the trainer used to, needs M windows x ((k + 1) D + A)
floats: about 30 GB for this dataset. File-backed pages of the memory-mapped cache count
towards RSS once touched, so the worst case after a long run is the anonymous peak plus the
cache's size, which the table also gives.

Run: ``.venv/bin/python benchmarks/bench_scale.py --dir /tmp/scale`` (about 10 minutes; 11 GB
of disk: the dataset and its cache stay in ``--dir`` for reuse; ``--episodes`` scales it).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from trajebm.data.cache import CACHE_DIR
from trajebm.data.synthetic import write_synthetic_dataset


def memory(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of ``pid`` in bytes (empty once it has exited)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def train_once(data: Path, run: Path, steps: int) -> dict[str, float]:
    """Launch ``trajebm train``; time to its first step, peak memory, seconds per step."""
    shutil.rmtree(run, ignore_errors=True)
    exe = Path(sys.executable).with_name("trajebm")
    cmd = [str(exe), "train", "--data", str(data), "--out", str(run), "--steps", str(steps),
           "--quiet", "--model", f"ebm-proposal:validate_every={steps},checkpoint_every={steps}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak: dict[str, int] = {}
    first = None
    while proc.poll() is None:
        for key, value in memory(proc.pid).items():
            peak[key] = max(peak.get(key, 0), value)
        if first is None and (run / "checkpoint.pt").exists():
            first = time.perf_counter() - t0
        time.sleep(0.1)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"trajebm train failed ({proc.returncode}): {' '.join(cmd)}")
    metrics = (run / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    per_step = [float(row.split(",")[header.index("sec_per_step")]) for row in metrics[1:]]
    return {"first_step_s": first or float("nan"), "total_s": total,
            "sec_per_step": min(per_step), "checkpoint_mb": (run / "checkpoint.pt").stat().st_size
            / 1e6, **{f"peak_{k}": v / 1e9 for k, v in peak.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, required=True, help="folder for the dataset and runs")
    p.add_argument("--episodes", type=int, default=200_000)
    p.add_argument("--length", type=int, default=100)
    p.add_argument("--steps", type=int, default=50, help="training steps per launch")
    args = p.parse_args()
    data = args.dir / f"synthetic-{args.episodes}x{args.length}"
    if not (data / "data" / "metadata.json").is_file():
        shutil.rmtree(data, ignore_errors=True)
        t0 = time.perf_counter()
        write_synthetic_dataset(data, args.episodes, args.length)
        print(f"wrote {data} in {time.perf_counter() - t0:.0f} s")
    shutil.rmtree(data / CACHE_DIR, ignore_errors=True)
    rows = {"cold (builds the cache)": train_once(data, args.dir / "run-cold", args.steps),
            "warm (cache present)": train_once(data, args.dir / "run-warm", args.steps)}
    cache_gb = sum(f.stat().st_size for f in (data / CACHE_DIR).rglob("*.npy")) / 1e9
    hdf5_gb = (data / "data" / "main_data.hdf5").stat().st_size / 1e9
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, {args.episodes} episodes x "
          f"{args.length} steps (HDF5 {hdf5_gb:.1f} GB, cache {cache_gb:.1f} GB), "
          f"{args.steps} steps of ebm-proposal at batch 256\n")
    print("| launch | first step (s) | peak RSS (GB) | anon / file (GB) | worst case anon + "
          "cache (GB) | s/step | checkpoint (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['first_step_s']:.1f} | {r['peak_VmRSS']:.2f} | "
              f"{r['peak_RssAnon']:.2f} / {r['peak_RssFile']:.2f} | "
              f"{r['peak_RssAnon'] + cache_gb:.2f} | {r['sec_per_step']:.3f} | "
              f"{r['checkpoint_mb']:.2f} |")


if __name__ == "__main__":
    main()
