"""Metrics to JSONL (written live) and CSV (regenerated), plus TensorBoard when installed."""

from __future__ import annotations

import csv
import json
from pathlib import Path


class MetricsWriter:
    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        if resume_step is not None and self.jsonl.exists():
            # drop rows written after the checkpoint we resume from: they will be re-run
            rows = [r for r in self._rows() if r.get("step", 0) <= resume_step]
            self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
        self._f = open(self.jsonl, "a")
        self.tb = None
        try:  # optional
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except Exception:
            self.tb = None

    def _rows(self) -> list[dict]:
        return [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]

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
        with open(self.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)

    def close(self) -> None:
        self._f.close()
        self.write_csv()
        if self.tb is not None:
            self.tb.close()
