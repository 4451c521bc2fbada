"""A local module of the quickstart notebook: shipped into the job because the cell imports it."""

from __future__ import annotations

import statistics


class Table:
    """A tiny DataFrame-like object: named columns of numbers."""

    def __init__(self, columns: dict[str, list[float]]) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def mean(self, column: str) -> float:
        return statistics.fmean(self.columns[column])

    def __repr__(self) -> str:
        return f"Table({', '.join(self.columns)}; {len(self)} rows)"


def fit(table: Table, epochs: int = 3) -> dict[str, float]:
    """A stand-in for training: one weight per column, printed epoch by epoch."""
    weights = {name: 0.0 for name in table.columns}
    for epoch in range(1, epochs + 1):
        for name in weights:
            weights[name] += (table.mean(name) - weights[name]) / 2
        print(f"epoch {epoch}/{epochs}: {weights}")
    return weights
