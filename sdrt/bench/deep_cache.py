"""DeepCache in a benchmark: each cached scenario against its backend's exact one, and the table that shows it.

A DeepCache scenario differs from its exact twin (same backend, same group) only in the request's `deep_cache`:
both run in the same process, interleaved run by run, so their ratio is what the cache saves on this machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sdrt.bench.records import Record

# medians compared with the exact scenario: end to end, and every UNet call of a run added up
RATIOS = ("total", "unet")


def exact_twin(record: Record, records: Sequence[Record]) -> Record | None:
    """The exact scenario of `record`'s backend and group, when it ran."""
    s = record.scenario
    for other in records:
        o = other.scenario
        if o.deep_cache is None and o.backend == s.backend and o.group == s.group and other.ok:
            return other
    return None


def attach_exact(records: Sequence[Record]) -> None:
    """Fill `vs_exact` of every DeepCache record that ran and whose exact twin ran: median ratios, the speed-up."""
    for record in records:
        if record.scenario.deep_cache is None or not record.ok:
            continue
        exact = exact_twin(record, records)
        if exact is None:
            continue
        mine, theirs = record.summaries(), exact.summaries()
        ratio = {k: mine[k].median / theirs[k].median if theirs[k].median > 0 else None for k in RATIOS}
        record.vs_exact = {
            "exact": exact.scenario.contender,
            "ratio": ratio,  # DeepCache / exact, medians of seconds per run
            "speedup": None if not ratio["total"] else 1 / ratio["total"],
            "unet_shallow_vs_full_call": _ratio(mine["unet_shallow_per_call"].median, theirs["unet_per_call"].median),
        }


def deep_cache_table(
    group: Sequence[Record],
    markdown: bool,
    render: Callable[[list[str], list[list[str]], bool], str],
    ms: Callable[[float], str],
) -> str:
    """Exact and DeepCache side by side per sdrt backend: calls of each kind, their per-call times, the ratios;
    empty when no scenario of the group uses DeepCache. `render` and `ms` are the report's table and number
    formatters."""
    if not any(r.scenario.deep_cache is not None for r in group):
        return ""
    headers = ["contender", "DeepCache", "full calls", "shallow calls", "UNet full/call ms", "UNet shallow/call ms"]
    headers += ["UNet ms", "total ms", "time vs exact", "UNet time vs exact", "speed-up", "shallow/full call"]
    rows = []
    for r in group:
        s = r.scenario
        if s.is_baseline:
            continue
        setting = "exact" if s.deep_cache is None else f"interval {s.deep_cache.interval}, branch {s.deep_cache.branch}"
        if not r.ok:
            rows.append([s.contender, setting, f"{r.status}: {r.reason}"])
            continue
        m, sample = r.summaries(), r.samples[0]
        shallow = sample.unet_shallow_calls
        cells = [s.contender, setting, str(sample.unet_full_calls), str(shallow), ms(m["unet_full_per_call"].median)]
        cells += [
            ms(m["unet_shallow_per_call"].median) if shallow else "-",
            ms(m["unet"].median),
            ms(m["total"].median),
        ]
        if s.deep_cache is None:
            cells += ["1 (itself)", "1", "1", "-"]
        elif r.vs_exact is None:
            cells += ["-", "-", "-", "-"]
        else:
            v = r.vs_exact
            cells += [_fixed(v["ratio"]["total"]), _fixed(v["ratio"]["unet"]), _fixed(v["speedup"], "x")]
            cells += [_fixed(v["unet_shallow_vs_full_call"])]
        rows.append(cells)
    return render(headers, rows, markdown)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _fixed(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.3f}{unit}"
