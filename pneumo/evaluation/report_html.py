"""report.html: the clinical report as one self-contained page, every figure embedded.

report.md links its figures as files beside it, which MLflow's artifact viewer shows as literal link text;
this page carries the figures inside it (base64 PNG in data: URLs), so it reads the same in a browser,
MLflow's artifact viewer or an e-mail attachment. Same content as report.md: the facts, the printed
table, each figure, and the figures left out with the reason.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from pneumo.evaluation.report import FIGURES

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
pre{background:#f6f8fa;padding:1em;overflow-x:auto;font-size:13px;line-height:1.35}
img{max-width:100%;border:1px solid #ddd}h2{margin-top:1.6em}li{margin:.2em 0}"""


def write_html(output_dir: Path, report: dict[str, Any], table: str) -> Path:
    """Write output_dir/report.html from metrics.json's payload and the printed table; returns its path.

    The figures are read from output_dir (PNG files written by `report.write_figures`); a figure listed in
    ``report["figures_left_out"]`` or absent on disk is not shown, the left-out ones are listed with why.
    """
    data, checkpoint, threshold = report["data"], report["checkpoint"], report["threshold"]
    facts = [f"checkpoint <code>{_e(checkpoint['path'])}</code> (training run <code>{_e(checkpoint['train_run'])}</code>)",
             f"data: {_e(data.get('name', ''))} (<code>{_e(data.get('source', data['root']))}</code>), split "
             f"<code>{_e(data['split'])}</code>, {data['n_images']} image{'' if data['n_images'] == 1 else 's'}"
             + (f"; <b>external</b>: the model was trained on {_e(data['training_data']['name'])}"
                if data.get("external") else ""),
             f"operating threshold {threshold['value']:.4f}, policy <code>{_e(threshold['policy'])}</code>"
             + (f". <b>Note:</b> {_e(threshold['note'])}" if threshold.get("note") else "")]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Clinical evaluation report</title>",
             f"<style>{_STYLE}</style></head><body><h1>Clinical evaluation report</h1>",
             "<ul>" + "".join(f"<li>{fact}</li>" for fact in facts) + "</ul>", f"<pre>{_e(table)}</pre>"]
    left_out = report.get("figures_left_out") or {}
    for name, caption in FIGURES.items():
        path = output_dir / name
        if name not in left_out and path.is_file():
            encoded = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(f"<h2>{_e(caption)}</h2><img alt='{_e(caption)}' src='data:image/png;base64,{encoded}'>")
    if left_out:
        parts.append("<h2>Figures left out</h2><ul>" + "".join(
            f"<li>{_e(FIGURES.get(name, name))}: not drawn, {_e(reason)}</li>" for name, reason in left_out.items())
            + "</ul>")
    parts.append("</body></html>")
    page = output_dir / "report.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)
