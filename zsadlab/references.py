"""Published reference values: one sourced table (``references.csv``) that every notebook reads.

A record says which method scored how much on which dataset under which metric and setting, and
where that number is written (a paper's table, a repository's log, or a later paper that reprints
it); ``note`` carries its caveats. A value nobody reports is no record: the notebooks say "not
reported" instead of drawing a bar.

    from zsadlab import references
    references.lookup("anomalyclip", "visa", "pixel_auroc")          # -> Reference(value=95.5, ...)
    references.find(method="coop", setting="zero_shot")               # -> [Reference, ...]
    references.values(("anomalyclip", "coop"), "visa", ("image_auroc", "pixel_auroc"))  # for viz.plot_bars

``method`` and ``dataset`` are registry names (:mod:`zsadlab.methods`, :mod:`zsadlab.data.registry`),
``metric`` a metric-registry name (:mod:`zsadlab.metrics`), ``value`` in %. ``setting`` tells
apart several values of the same triple: ``zero_shot`` (the paper's main tables), ``official_log``
(the authors' repository logs), ``shots=k`` (few-shot), ``ablation:<what was removed>``,
``trained_on:<dataset>``, ``default_config``.
"""
from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .data.registry import ANOMALYCLIP_BENCHMARK

TABLE = Path(__file__).with_name("references.csv")
ANOMALYCLIP_TABLES = ANOMALYCLIP_BENCHMARK  # the datasets of the AnomalyCLIP paper's Tables 1-2, in its order
NOT_REPORTED = "not reported"
FIELDS = ("method", "dataset", "metric", "setting", "value", "source", "note")


@dataclass(frozen=True)
class Reference:
    """One published value (in %) with its source."""

    method: str
    dataset: str
    metric: str
    value: float
    source: str
    note: str = ""
    setting: str = "zero_shot"

    @property
    def citation(self) -> str:
        """The short form a figure or table prints: ``"91.5 (AnomalyCLIP paper, Table 1)"``."""
        return f"{self.value:g} ({self.source})"


@functools.lru_cache(maxsize=None)
def _load(path: str) -> tuple[Reference, ...]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return tuple(Reference(method=r["method"], dataset=r["dataset"], metric=r["metric"], value=float(r["value"]),
                           source=r["source"], note=r["note"], setting=r["setting"]) for r in rows)


def load_references(path: str | Path | None = None) -> list[Reference]:
    """Every record of the table (``path``: another CSV with the same columns, for tests)."""
    return list(_load(str(path or TABLE)))


def find(method: str | None = None, dataset: str | None = None, metric: str | None = None,
         setting: str | None = None) -> list[Reference]:
    """The records matching every given field (``None``: any)."""
    wanted = dict(method=method, dataset=dataset, metric=metric, setting=setting)
    return [r for r in load_references() if all(v is None or getattr(r, k) == v for k, v in wanted.items())]


def lookup(method: str, dataset: str, metric: str, setting: str = "zero_shot") -> Reference | None:
    """The one record of (method, dataset, metric, setting), or ``None`` when nobody reports it."""
    found = find(method, dataset, metric, setting)
    return found[0] if found else None


def values(methods: str | Sequence[str], dataset: str, metrics: Sequence[str], setting: str = "zero_shot",
           label: str = "{method}, paper") -> dict[str, dict[str, float]]:
    """``{label: {metric: value}}`` for the methods that report at least one of ``metrics`` -
    the ``reference`` argument of :func:`zsadlab.viz.plot_bars` / :func:`zsadlab.viz.plot_comparison`.
    ``label`` is formatted with ``method``, ``dataset`` and ``setting``."""
    out: dict[str, dict[str, float]] = {}
    for method in [methods] if isinstance(methods, str) else methods:
        row = {m: r.value for m in metrics if (r := lookup(method, dataset, m, setting)) is not None}
        if row:
            out[label.format(method=method, dataset=dataset, setting=setting)] = row
    return out


def table(records: Iterable[Reference], metrics: Sequence[str], row: str = "{dataset} | {method}") -> dict:
    """``{row label: {metric: "91.5" or "not reported"}}`` for :func:`zsadlab.viz.print_table`."""
    rows: dict[str, dict[str, float | None]] = {}
    for r in records:
        rows.setdefault(row.format(method=r.method, dataset=r.dataset, setting=r.setting), {})[r.metric] = r.value
    return {k: {m: NOT_REPORTED if v.get(m) is None else f"{v[m]:.1f}" for m in metrics} for k, v in rows.items()}


def sources(records: Iterable[Reference]) -> list[str]:
    """The distinct sources of ``records``, in order: what a figure's caption cites."""
    return list(dict.fromkeys(r.source for r in records))
