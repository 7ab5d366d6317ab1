"""The demo's report: ``report.md`` and a self-contained ``report.html`` beside it (images inlined)."""

from __future__ import annotations

import base64
import html
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo.serving import WRITES, Answer


@dataclass
class Report:
    title: str
    steps: list[tuple[str, float]] = field(default_factory=list)  # (step, seconds)
    curves: dict[str, Path] = field(default_factory=dict)  # run -> loss_curve.png
    losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # run -> (step, loss)
    tree: str = ""
    storage: dict[str, Any] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)
    s3_during_serving: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def write(self, folder: Path) -> Path:
        """Write both files into ``folder``; returns the HTML's path."""
        folder.mkdir(parents=True, exist_ok=True)
        for run, png in self.curves.items():
            shutil.copyfile(png, folder / f"loss-{run}.png")
        (folder / "report.md").write_text(self.markdown())
        (folder / "report.json").write_text(json.dumps(self.summary(), indent=2))
        path = folder / "report.html"
        path.write_text(self.html(folder))
        return path

    def summary(self) -> dict[str, Any]:
        return {
            "steps": [{"step": name, "seconds": round(seconds, 2)} for name, seconds in self.steps],
            "total_seconds": round(sum(s for _, s in self.steps), 2),
            "storage": self.storage,
            "answers_agree": sum(a.agree for a in self.answers),
            "answers": len(self.answers),
            "s3_operations_while_serving": self.s3_during_serving,
        }

    # ---------------------------------------------------------------------------------------------- markdown
    def markdown(self) -> str:
        lines = [f"# {self.title}", "", *self.notes, "", "## Steps", "", "| step | wall time |", "| --- | ---: |"]
        lines += [f"| {name} | {seconds:.1f} s |" for name, seconds in self.steps]
        lines += [f"| **total** | **{sum(s for _, s in self.steps):.1f} s** |", "", "## Loss curves", ""]
        for run in self.curves:
            last = self.losses.get(run, [])[-1:] or [(0, float("nan"))]
            lines += [
                f"![{run}](loss-{run}.png)",
                "",
                f"{run}: final logged loss {last[0][1]:.4f} at step {last[0][0]}",
                "",
            ]
        lines += ["## Registry", "", "```", self.tree.rstrip(), "```", "", "## Storage", ""]
        lines += _storage_rows(self.storage, markdown=True)
        agree = sum(a.agree for a in self.answers)
        lines += [
            "",
            "## Answers (held-back dolly prompts, greedy)",
            "",
            f"base + adapter and the merged model agree on {agree} of {len(self.answers)} prompts. S3 operations "
            f"while serving: {', '.join(sorted(set(self.s3_during_serving))) or 'none'} "
            f"(writes: {sum(op in WRITES for op in self.s3_during_serving)}).",
            "",
            "| prompt | dolly's answer | base + adapter | merged | agree |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {_cell(a.prompt)} | {_cell(a.reference)} | {_cell(a.adapter)} | {_cell(a.merged)} | "
            f"{'yes' if a.agree else 'no'} |"
            for a in self.answers
        ]
        return "\n".join(lines) + "\n"

    # -------------------------------------------------------------------------------------------------- html
    def html(self, folder: Path) -> str:
        e = html.escape
        parts = [
            f"<!doctype html><html><head><meta charset='utf-8'><title>{e(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:90%}pre{background:#f6f6f6;"
            "padding:1em;overflow:auto}.no{background:#fee}</style></head><body>",
            f"<h1>{e(self.title)}</h1>",
            *(f"<p>{e(n)}</p>" for n in self.notes if n),
            "<h2>Steps</h2><table><tr><th>step</th><th>wall time</th></tr>",
            *(f"<tr><td>{e(n)}</td><td>{s:.1f} s</td></tr>" for n, s in self.steps),
            f"<tr><th>total</th><th>{sum(s for _, s in self.steps):.1f} s</th></tr></table>",
            "<h2>Loss curves</h2>",
        ]
        for run in self.curves:
            data = base64.b64encode((folder / f"loss-{run}.png").read_bytes()).decode()
            parts.append(f"<h3>{e(run)}</h3><img alt='{e(run)}' src='data:image/png;base64,{data}' width='640'>")
        parts += ["<h2>Registry</h2>", f"<pre>{e(self.tree)}</pre>", "<h2>Storage</h2><table>"]
        parts += _storage_rows(self.storage, markdown=False)
        agree = sum(a.agree for a in self.answers)
        parts += [
            "</table><h2>Answers (held-back dolly prompts, greedy)</h2>",
            f"<p>base + adapter and the merged model agree on {agree} of {len(self.answers)} prompts. S3 operations "
            f"while serving: {e(', '.join(sorted(set(self.s3_during_serving))) or 'none')}.</p>",
            "<table><tr><th>prompt</th><th>dolly's answer</th><th>base + adapter</th><th>merged</th></tr>",
        ]
        for a in self.answers:
            row = "" if a.agree else " class='no'"
            parts.append(
                f"<tr{row}><td><pre>{e(a.prompt)}</pre></td><td>{e(a.reference)}</td><td>{e(a.adapter)}</td>"
                f"<td>{e(a.merged)}</td></tr>"
            )
        parts.append("</table></body></html>")
        return "\n".join(parts)


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return (text[:limit] + "...") if len(text) > limit else text.replace("|", "\\|")


def _storage_rows(storage: dict[str, Any], markdown: bool) -> list[str]:
    from loraops.cli.storage import COLUMNS, report_rows

    rows = report_rows(storage) if storage else []
    if markdown:
        return ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)] + [
            "| " + " | ".join(r) + " |" for r in rows
        ]
    return ["<tr>" + "".join(f"<th>{h}</th>" for h in COLUMNS) + "</tr>"] + [
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    ]
