"""`blueprint_stats`: how each blueprint fared across every run of the workspace (derived from `seed_lifecycle`).

A seed built into the host before the first epoch (a scratch run rebuilding another run's final architecture) is
left out: it was never germinated, and no gate judged it, so counting it would raise its blueprint's fossilization
rate with every baseline trained."""

import math

import duckdb
import msgspec

from esper.nissa.projection import Derived
from esper.nissa.readmodels.stages import FOSSILIZED
from esper.nissa.tables import Table


class BlueprintStatsRow(msgspec.Struct):
    blueprint: str
    runs: int
    germinations: int
    fossilized: int
    culled: int
    in_progress: int
    fossilization_rate: float | None
    """Fossilized / (fossilized + culled)."""
    mean_contribution: float | None
    """Over seeds that fossilized or were culled with a measured contribution."""
    mean_contribution_fossilized: float | None
    params_added: int
    """Parameters of the fossilized seeds."""


class BlueprintStats(Derived):
    """Per blueprint across every run, aggregated from `seed_lifecycle` (so it never depends on the order in which
    runs were caught up); seeds that were built, not germinated, left out."""

    name = "blueprint_stats"
    version = 3
    table = Table("blueprint_stats", BlueprintStatsRow, ("blueprint",), per_run=False)

    def compute(self, con: duckdb.DuckDBPyConnection) -> list[BlueprintStatsRow]:
        seeds = con.execute(
            "SELECT blueprint, run_id, params, final_stage, contribution, culled_by FROM seed_lifecycle"
            " WHERE NOT built ORDER BY blueprint, run_id, seed_id"
        ).fetchall()
        groups: dict[str, list[tuple]] = {}
        for row in seeds:
            groups.setdefault(row[0], []).append(row)
        return [_stats(blueprint, rows) for blueprint, rows in sorted(groups.items())]


def _stats(blueprint: str, rows: list[tuple]) -> BlueprintStatsRow:
    fossil = [r for r in rows if r[3] == FOSSILIZED]
    culled = [r for r in rows if r[5] is not None]
    decided = fossil + culled
    return BlueprintStatsRow(
        blueprint=blueprint, runs=len({r[1] for r in rows}), germinations=len(rows),
        fossilized=len(fossil), culled=len(culled), in_progress=len(rows) - len(decided),
        fossilization_rate=len(fossil) / len(decided) if decided else None,
        mean_contribution=_mean([r[4] for r in decided if r[4] is not None]),
        mean_contribution_fossilized=_mean([r[4] for r in fossil if r[4] is not None]),
        params_added=sum(r[2] for r in fossil),
    )


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None  # fsum: exact, so independent of order
