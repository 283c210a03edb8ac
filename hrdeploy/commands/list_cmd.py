"""`hrdeploy list`: the zoo with measured parameter/MAC counts beside the published ones.

The rows come from the checked-in table hrdeploy/zoo_table.json (hrdeploy.counting.zoo_rows computed once),
so listing imports neither torch nor the networks; tests keep the table equal to a fresh count.
"""

from __future__ import annotations

import json

import click


def _fmt_count(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1e9:.2f}G" if value >= 1e9 else f"{value / 1e6:.2f}M"


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
def list_cmd(as_json: bool) -> None:
    """List the model zoo: task, default input, parameters and MACs (ours and published)."""
    from hrdeploy.counting import cached_zoo_rows

    rows = cached_zoo_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from hrdeploy.io import console

    table = Table(title="hrdeploy model zoo (MACs at batch 1, default input; published = upstream README)")
    for col in ("name", "task", "input", "params", "MACs", "pub. params", "pub. MACs", "pub. metric"):
        text_col = col in ("name", "task", "pub. metric")
        table.add_column(col, justify="left" if text_col else "right", no_wrap=col != "pub. metric")
    for r in rows:
        h, w = r["input_size"]
        table.add_row(
            r["name"], r["task"], f"{h}x{w}", _fmt_count(r["params"]), _fmt_count(r["macs"]),
            _fmt_count(r["published_params"]), _published_macs(r), r["published_metric"] or "-",
        )
    console().print(table)


def _published_macs(row: dict) -> str:
    text = _fmt_count(row["published_macs"])
    if row["published_macs"] is not None and row["published_input_size"] != row["input_size"]:
        text += " @{}x{}".format(*row["published_input_size"])
    return text
