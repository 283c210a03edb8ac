"""`hrdeploy list`: the zoo with measured parameter/MAC counts beside the published ones."""

from __future__ import annotations

import json

import click


def _fmt_count(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1e9:.2f}G" if value >= 1e9 else f"{value / 1e6:.2f}M"


def zoo_rows() -> list[dict]:
    """One dict per model: name, task, input_size, params, macs and the published figures."""
    from hrdeploy.counting import count_model
    from hrdeploy.registry import get_spec, list_models

    rows = []
    for name in list_models():
        spec = get_spec(name)
        counts = count_model(name)
        size = tuple(counts["input_size"])
        # The published row at our default input, else the first one (its input is reported with it).
        fallback = spec.published[0] if spec.published else None
        published = next((p for p in spec.published if p.input_size == size), fallback)
        rows.append(
            {
                "name": name,
                "family": spec.family,
                "task": spec.task,
                "datasets": list(spec.datasets),
                **counts,
                "published_input_size": list(published.input_size) if published else None,
                "published_params": published.params if published else None,
                "published_macs": published.macs if published else None,
                "published_metric": published.metric if published else None,
                "published_source": published.source if published else None,
            }
        )
    return rows


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
def list_cmd(as_json: bool) -> None:
    """List the model zoo: task, default input, parameters and MACs (ours and published)."""
    rows = zoo_rows()
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
