"""``qtsw results``: the stream × month matrix and the statistics, headless (for scripts and
e-mail), as text, CSV or JSON. Never imports Textual; the results screen formats with the same
functions.

Exit codes: 0 shown (also when there are no results: it says so), 1 some monthly file could
not be read (named on stderr; the rest is shown), 4 could not start (bad settings, bad
arguments, a data root that does not exist).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from pipeline_core import results
from pipeline_core.results import ALL, ALL_TIME, Period, ResultFilter, ResultSet, Stats

EXIT_CANNOT_START = 4
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
NO_ROWS = "."  # a matrix cell without rows (a zero is shown as 0)
RULES = (
    "win rate = Win / (Win + BE + Loss); PF = gross profit / gross loss; "
    "max DD = peak to trough of the equity over trade dates"
)


def money(value: float | None, *, cents: bool = False) -> str:
    """Dollars with a sign that reads without colour: ``+1,250``, ``-500``, ``0``; ``n/a`` when
    unknown (an instrument without a point value)."""
    if value is None:
        return "n/a"
    # half a dollar (or cent) rounds away from zero, as a trader would round it by hand
    step = Decimal("0.01") if cents else Decimal("1")
    text = f"{Decimal(repr(abs(value))).quantize(step, rounding=ROUND_HALF_UP):,}"
    if text.strip("0.,") == "":
        return "0"
    return ("+" if value > 0 else "-") + text


def points(value: float | None) -> str:
    return "" if value is None else ("0" if abs(value) < 5e-10 else f"{value:+,.2f}")


def rate(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def factor(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


STAT_HEADINGS = ("Trades", "Win", "Loss", "BE", "TIME", "NoTr", "Win%", "PF", "Avg trade", "Max DD",
                 "Points", "Dollars", "Prov")


def stat_cells(st: Stats) -> list[str]:
    """One statistics line's cells, in the order of :data:`STAT_HEADINGS`."""
    return [
        str(st.trades), str(st.wins), str(st.losses), str(st.be), str(st.time), str(st.no_trade),
        rate(st.win_rate), factor(st.profit_factor), money(st.average_trade, cents=True),
        "-" if st.max_drawdown is None else money(-st.max_drawdown) if st.max_drawdown else "0",
        points(st.profit_points), money(st.profit_dollars), str(st.provisional) if st.provisional else "",
    ]


def matrix_lines(rs: ResultSet, flt: ResultFilter, year: int) -> list[str]:
    """The stream × month dollars of ``year`` with row and column totals, as text lines."""
    m = rs.matrix(flt, year)
    mark = "*" if flt.provisional else ""

    def cell(s: str | None, k: int, v: float | None) -> str:
        if v is None:
            return NO_ROWS if s is None or not rs.stats(flt, Period(year, k + 1), s).rows else "n/a"
        return money(v) + (mark if s is not None and (s, k + 1) in m.provisional else "")

    width = max(7, *(len(cell(s, k, m.cells[s][k])) for s in m.streams for k in range(12))) if m.streams else 7
    head = f"{'Stream':<7}" + "".join(f"{x:>{width + 1}}" for x in MONTHS) + f"{'Total':>{width + 3}}"
    lines = [head]
    for s in m.streams:
        lines.append(f"{s:<7}" + "".join(f"{cell(s, k, v):>{width + 1}}" for k, v in enumerate(m.cells[s]))
                     + f"{money(m.row_totals[s]) if m.row_totals[s] is not None else NO_ROWS:>{width + 3}}")
    lines.append(f"{'Total':<7}" + "".join(f"{cell(None, k, v):>{width + 1}}" for k, v in enumerate(m.column_totals))
                 + f"{money(m.total) if m.total is not None else NO_ROWS:>{width + 3}}")
    return lines


def stats_lines(rs: ResultSet, flt: ResultFilter, periods: list[Period]) -> list[str]:
    """Per stream (and all streams), one line per period."""
    rows = [["Stream", "Period", *STAT_HEADINGS]]
    for s in [*rs.shown_streams(flt), None]:
        for p in periods:
            rows.append([s or ALL, p.label, *stat_cells(rs.stats(flt, p, s))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
            for r in rows]


def describe_filter(flt: ResultFilter) -> str:
    parts = []
    if flt.streams is not None:
        parts.append("streams " + ",".join(sorted(flt.streams)))
    if flt.sessions is not None:
        parts.append("sessions " + ",".join(sorted(flt.sessions)))
    if flt.slots is not None:
        parts.append("slots " + ",".join(sorted(flt.slots)))
    parts.append("provisional rows included (marked *)" if flt.provisional else "Final rows only")
    return ", ".join(parts)


def csv_text(rs: ResultSet, flt: ResultFilter, year: int) -> str:
    """The figures as CSV: one line per stream (and ALL) and period (each month of the year
    with rows, the year, all time); a month line's ``profit_dollars`` is its matrix cell."""
    rows = rs.table_rows(flt, year)
    out = io.StringIO()
    fields = ["stream", "period", *results.Stats().as_dict()]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if v is None else v for k, v in r.items()})
    return out.getvalue()


def json_data(rs: ResultSet, flt: ResultFilter, year: int, month: Period) -> dict[str, Any]:
    m = rs.matrix(flt, year)
    columns = [f"{year:04d}-{k:02d}" for k in range(1, 13)]
    periods = [month, Period(year), ALL_TIME]
    return {
        "year": year,
        "month": month.label,
        "filter": {
            "streams": sorted(flt.streams) if flt.streams is not None else None,
            "sessions": sorted(flt.sessions) if flt.sessions is not None else None,
            "slots": sorted(flt.slots) if flt.slots is not None else None,
            "provisional": flt.provisional,
        },
        "units": {"money": "dollars per contract", "profit_points": "points"},
        "matrix": {
            "columns": columns,
            "rows": {s: dict(zip(columns, m.cells[s], strict=True)) | {"total": m.row_totals[s]} for s in m.streams},
            "totals": dict(zip(columns, m.column_totals, strict=True)) | {"total": m.total},
            "provisional_cells": sorted(f"{s} {year:04d}-{k:02d}" for s, k in m.provisional),
        },
        "statistics": {
            (s or ALL): {p.label: rs.stats(flt, p, s).as_dict() for p in periods}
            for s in [*rs.shown_streams(flt), None]
        },
        "no_point_value": rs.no_point_value,
        "problems": rs.problems,
    }


def _set(text: str | None) -> frozenset[str] | None:
    if not text:
        return None
    return frozenset(x.strip() for x in text.split(",") if x.strip())


def main(argv: list[str]) -> int:
    """``qtsw results [--year Y] [--month M] [--stream S] [--session S1] [--slot HH:MM]
    [--provisional] [--csv|--json]``."""
    from pipeline_core.usage import UsageParser, command_settings, root_options

    p = UsageParser(
        prog="qtsw results",
        description="The stream x month matrix of a year (dollars per contract, row and column totals) "
        "and per stream the statistics of a month, the year and all time. Final rows only unless "
        "--provisional. Exit 0 (also without results), 1 when a monthly file could not be read, "
        "4 bad arguments or settings, or a data root that does not exist.",
    )
    root_options(p)
    p.add_argument("--year", type=int, help="the matrix's year (default: the newest with results)")
    p.add_argument("--month", type=int, choices=range(1, 13), metavar="1-12",
                   help="the month of the statistics (default: the newest of the year)")
    p.add_argument("--stream", help="only these streams (comma-separated, e.g. ES1,NQ2)")
    p.add_argument("--session", help="only these sessions (S1,S2)")
    p.add_argument("--slot", help="only these slots (07:30,08:00)")
    p.add_argument("--provisional", action="store_true", help="count provisional rows too (marked *)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="print one CSV table (stream, period, figures)")
    fmt.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)

    from pipeline_core.safetext import safe

    # a mistyped --root is said, not shown as a root without results
    settings = command_settings(args.root, args.config)
    if settings is None:
        return EXIT_CANNOT_START
    rs = results.load_results(settings)
    flt = ResultFilter(_set(args.stream), _set(args.session), _set(args.slot), args.provisional)
    for problem in rs.problems:
        print(f"qtsw: skipped unreadable monthly file {safe(problem)}", file=sys.stderr)
    shown = rs.shown_streams(flt)
    years = sorted({int(y) for y in rs.year[rs.mask(flt)]})
    year = args.year if args.year is not None else (years[-1] if years else None)
    code = 1 if rs.problems else 0
    if not shown or year is None:
        why = f"no monthly results under {settings.analyzer_runs_dir}" if not rs.streams else (
            f"no results for {describe_filter(flt)} (streams with results: {', '.join(rs.streams)})")
        if args.json:
            _print(json.dumps({"year": year, "empty": why, "problems": rs.problems}, indent=2))
        elif not args.csv:
            _print(safe(why))
        return code
    month = Period(year, args.month) if args.month else (_latest(rs, flt, year) or Period(year, 12))
    if args.csv:
        _print(csv_text(rs, flt, year).rstrip("\n"))
    elif args.json:
        _print(json.dumps(json_data(rs, flt, year, month), indent=2))
    else:
        lines = [f"Results {year}: dollars per contract, {describe_filter(flt)}; data root {safe(str(settings.root))}"]
        if year not in years:
            lines.append(f"(no results in {year}; years with results: {years[0]}-{years[-1]})")
        lines += matrix_lines(rs, flt, year)
        lines += ["", f"Statistics: {month.label}, {year}, all time ({RULES})"]
        lines += stats_lines(rs, flt, [month, Period(year), ALL_TIME])
        if rs.no_point_value:
            lines.append(f"n/a: no point value for {', '.join(rs.no_point_value)} "
                         "(set instruments.<SYMBOL>.point_value in qtsw.toml)")
        _print("\n".join(lines))
    return code


def _latest(rs: ResultSet, flt: ResultFilter, year: int) -> Period | None:
    m = rs.mask(flt, Period(year))
    if not m.any():
        return None
    return Period(year, int(rs.month[m].max()))


def _print(text: str) -> None:
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `qtsw results | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
