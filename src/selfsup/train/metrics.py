"""Metrics to JSONL (written live) and CSV (regenerated), plus TensorBoard when installed."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..rundir import open_append, read_jsonl, write_text


class MetricsWriter:
    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.last_train: dict = {}     # the last training row kept from before a resume
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        if self.jsonl.exists() or self.jsonl.is_symlink():
            # resume: keep the rows up to the checkpoint (later ones are re-run), drop a torn last
            # line; rewritten atomically, so a kill here loses nothing
            rows, _ = read_jsonl(self.jsonl) if not self.jsonl.is_symlink() else ([], 0)
            keep = [r for r in rows if resume_step is not None and r.get("step", 0) <= resume_step]
            write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in keep))
            self.last_train = next((r for r in reversed(keep) if r.get("kind") == "train"), {})
        self._f = open_append(self.jsonl)
        self.tb = None
        try:  # optional
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except Exception:
            self.tb = None

    def _rows(self) -> list[dict]:
        return read_jsonl(self.jsonl)[0]

    def log(self, row: dict) -> None:
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{row.get('kind', 'train')}/{k}", v, row.get("step", 0))

    def write_csv(self) -> None:
        rows = self._rows()
        cols = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
        write_text(self.csv, buf.getvalue())

    def close(self) -> None:
        self._f.close()
        self.write_csv()
        if self.tb is not None:
            self.tb.close()
