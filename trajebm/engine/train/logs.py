"""What a run writes as it goes: ``metrics.csv``, ``events.log`` and optional TensorBoard."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

from tqdm.auto import tqdm

from trajebm.engine.runinfo import atomic_write_bytes


class MetricsLog:
    """``metrics.csv``: one row per logged step, cut back to a step on resume and rollback.

    TensorBoard (``tensorboard=True``, the optional extra) gets the same values.
    """

    def __init__(self, path: Path, step: int, tensorboard: bool = False) -> None:
        self.path, self.fields, self.rows, self.file = path, [], [], None
        if path.exists():
            text = path.read_text()
            reader = csv.DictReader(io.StringIO(text[: text.rfind("\n") + 1]))  # no cut line
            self.fields, self.rows = list(reader.fieldnames or []), list(reader)
        self.truncate(step)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(path.parent / "tensorboard")

    def truncate(self, step: int) -> None:
        """Drop the rows after ``step`` and rewrite the file atomically."""
        self.rows = [r for r in self.rows if int(r["step"]) <= step]
        if not self.rows:
            self.fields = []
        if self.file is not None:
            self.file.close()
        text = io.StringIO()
        if self.fields:
            writer = csv.DictWriter(text, self.fields)
            writer.writeheader()
            writer.writerows(self.rows)
        atomic_write_bytes(self.path, text.getvalue().encode())
        self.file = open(self.path, "a", newline="")

    def write(self, row: dict[str, float]) -> None:
        """Append ``row`` (it holds ``step``); a new column rewrites the file with it."""
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(k, v, row["step"])
        new = [k for k in row if k not in self.fields]
        self.rows.append(row)
        if new:
            self.fields += new
            self.truncate(int(row["step"]))
            return
        csv.DictWriter(self.file, self.fields).writerow(row)
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def log_event(out_dir: Path, message: str) -> None:
    """Print ``message`` above the progress bar and append it to ``events.log``."""
    tqdm.write(f"[trajebm] {message}")
    with open(out_dir / "events.log", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")
