"""The demo's report: ``report.json`` holding every figure, and ``report.md`` and a self-contained ``report.html``
(loss curves inlined) rendered from that JSON alone, so a machine reader can check every figure they show."""

from __future__ import annotations

import base64
import html
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo.held_out import HeldOut
from demo.serving import WRITES, Answer

MODELS = ("base", "adapter", "merged")


@dataclass
class Report:
    title: str
    steps: list[tuple[str, float]] = field(default_factory=list)  # (step, seconds)
    curves: dict[str, Path] = field(default_factory=dict)  # run -> loss_curve.png
    losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # run -> (step, loss)
    held_out: dict[str, HeldOut] = field(default_factory=dict)  # base / adapter / merged
    held_back: int = 0  # records held back; those whose prompt fits max_seq_length are scored
    tree: str = ""
    storage: dict[str, Any] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)
    s3_during_serving: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def write(self, folder: Path) -> Path:
        """Write the three files (and the curves' PNGs) into ``folder``; returns the HTML's path."""
        folder.mkdir(parents=True, exist_ok=True)
        for run, png in self.curves.items():
            shutil.copyfile(png, folder / f"loss-{run}.png")
        summary = self.summary()
        (folder / "report.json").write_text(json.dumps(summary, indent=2))
        (folder / "report.md").write_text(render_markdown(summary))
        path = folder / "report.html"
        path.write_text(render_html(summary, folder))
        return path

    def summary(self) -> dict[str, Any]:
        """Everything the report shows, rounded as it is shown."""
        answers = [
            {
                "prompt": a.prompt,
                "reference": a.reference,
                **{m: getattr(a, m) for m in MODELS},
                "rouge_l": {m: round(a.rouge_l(m), 3) for m in MODELS},
                "agree": a.agree,
            }
            for a in self.answers
        ]
        return {
            "title": self.title,
            "notes": self.notes,
            "steps": [{"step": name, "seconds": round(seconds, 1)} for name, seconds in self.steps],
            "total_seconds": round(sum(s for _, s in self.steps), 1),
            "training_loss": {run: _curve_summary(points) for run, points in self.losses.items()},
            "held_out": {
                "held_back": self.held_back,
                "records": next(iter(self.held_out.values())).records if self.held_out else 0,
                "tokens": next(iter(self.held_out.values())).tokens if self.held_out else 0,
                "loss": {m: round(h.loss, 4) for m, h in self.held_out.items()},
                "perplexity": {m: round(h.perplexity, 2) for m, h in self.held_out.items()},
            },
            "answers": answers,
            "answers_agree": sum(a["agree"] for a in answers),
            "mean_rouge_l": {m: round(sum(a["rouge_l"][m] for a in answers) / len(answers), 3) for m in MODELS}
            if answers
            else {},
            "tree": self.tree.rstrip(),
            "storage": self.storage,
            "s3_operations_while_serving": self.s3_during_serving,
            "s3_writes_while_serving": sum(op in WRITES for op in self.s3_during_serving),
        }


def _curve_summary(points: list[tuple[int, float]]) -> dict[str, Any]:
    """The logged losses, and the mean of the first and of the last quarter of them (one logged loss is noisy)."""
    values = [loss for _, loss in points]
    quarter = max(1, len(values) // 4)
    return {
        "logged": [[step, round(loss, 4)] for step, loss in points],
        "first_quarter_mean": round(sum(values[:quarter]) / quarter, 4) if values else None,
        "last_quarter_mean": round(sum(values[-quarter:]) / quarter, 4) if values else None,
    }


def held_out_rows(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(model, loss, perplexity) as shown in the report and the closing note."""
    held = summary["held_out"]
    label = {"base": "base", "adapter": "base + adapter", "merged": "merged"}
    return [(label[m], f"{held['loss'][m]:.4f}", f"{held['perplexity'][m]:.2f}") for m in held["loss"]]


def answer_line(answer: dict[str, Any]) -> str:
    """One answer row as the closing note prints it."""
    score = answer["rouge_l"]
    return (
        f"prompt: {_cell(answer['prompt'], 120)}\n   dolly: {_cell(answer['reference'], 120)}\n"
        f"   base (ROUGE-L {score['base']:.3f}): {_cell(answer['base'], 120)}\n"
        f"   fine-tune (ROUGE-L {score['adapter']:.3f}): {_cell(answer['adapter'], 120)}"
    )


# -------------------------------------------------------------------------------------------------- markdown
def render_markdown(s: dict[str, Any]) -> str:
    lines = [f"# {s['title']}", "", *s["notes"], "", "## Steps", "", "| step | wall time |", "| --- | ---: |"]
    lines += [f"| {step['step']} | {step['seconds']:.1f} s |" for step in s["steps"]]
    lines += [f"| **total** | **{s['total_seconds']:.1f} s** |", "", "## Training loss", ""]
    for run, curve in s["training_loss"].items():
        lines += [
            f"![{run}](loss-{run}.png)",
            "",
            f"{run}: mean logged loss {curve['first_quarter_mean']:.4f} over the first quarter of the run, "
            f"{curve['last_quarter_mean']:.4f} over the last; logged (step, loss): "
            + ", ".join(f"({step}, {loss:.4f})" for step, loss in curve["logged"]),
            "",
        ]
    held = s["held_out"]
    lines += [
        "## Held-out loss",
        "",
        f"Mean loss on the response tokens of {held['records']} of the {held['held_back']} held-back dolly records "
        f"({held['tokens']} tokens; the others' prompts alone exceed max_seq_length), which neither the base's "
        "pre-training nor the fine-tunes saw; measured the same way for each model.",
        "",
        "| model | held-out loss | perplexity |",
        "| --- | ---: | ---: |",
        *(f"| {m} | {loss} | {ppl} |" for m, loss, ppl in held_out_rows(s)),
        "",
        "## Registry",
        "",
        "```",
        s["tree"],
        "```",
        "",
        "## Storage",
        "",
        *_storage_rows(s["storage"], markdown=True),
        "",
        "## Answers (held-back dolly prompts, greedy)",
        "",
        _answers_intro(s),
        "",
        "| prompt | dolly's answer | base | base + adapter | merged | ROUGE-L base / adapter / merged | agree |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {_cell(a['prompt'])} | {_cell(a['reference'])} | {_cell(a['base'])} | {_cell(a['adapter'])} | "
        f"{_cell(a['merged'])} | {_scores(a)} | {'yes' if a['agree'] else 'no'} |"
        for a in s["answers"]
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------ html
def render_html(s: dict[str, Any], folder: Path) -> str:
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(s['title'])}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:90%}pre{background:#f6f6f6;"
        "padding:1em;overflow:auto;white-space:pre-wrap}.no{background:#fee}td.n{text-align:right}</style>"
        "</head><body>",
        f"<h1>{e(s['title'])}</h1>",
        *(f"<p>{e(n)}</p>" for n in s["notes"] if n),
        "<h2>Steps</h2><table><tr><th>step</th><th>wall time</th></tr>",
        *(f"<tr><td>{e(step['step'])}</td><td class='n'>{step['seconds']:.1f} s</td></tr>" for step in s["steps"]),
        f"<tr><th>total</th><th>{s['total_seconds']:.1f} s</th></tr></table>",
        "<h2>Training loss</h2>",
    ]
    for run, curve in s["training_loss"].items():
        png = folder / f"loss-{run}.png"
        image = base64.b64encode(png.read_bytes()).decode() if png.is_file() else ""
        parts += [
            f"<h3>{e(run)}</h3><img alt='{e(run)}' src='data:image/png;base64,{image}' width='640'>",
            f"<p>mean logged loss {curve['first_quarter_mean']:.4f} over the first quarter of the run, "
            f"{curve['last_quarter_mean']:.4f} over the last.</p><table><tr><th>step</th><th>loss</th></tr>",
            *(f"<tr><td class='n'>{step}</td><td class='n'>{loss:.4f}</td></tr>" for step, loss in curve["logged"]),
            "</table>",
        ]
    held = s["held_out"]
    parts += [
        "<h2>Held-out loss</h2>",
        f"<p>Mean loss on the response tokens of {held['records']} of the {held['held_back']} held-back dolly "
        f"records ({held['tokens']} tokens; the others' prompts alone exceed max_seq_length), which neither the "
        "base's pre-training nor the fine-tunes saw; measured the same way for each model.</p>"
        "<table><tr><th>model</th><th>held-out loss</th><th>perplexity</th></tr>",
        *(
            f"<tr><td>{e(m)}</td><td class='n'>{loss}</td><td class='n'>{ppl}</td></tr>"
            for m, loss, ppl in held_out_rows(s)
        ),
        "</table><h2>Registry</h2>",
        f"<pre>{e(s['tree'])}</pre>",
        "<h2>Storage</h2><table>",
        *_storage_rows(s["storage"], markdown=False),
        "</table><h2>Answers (held-back dolly prompts, greedy)</h2>",
        f"<p>{e(_answers_intro(s))}</p>",
        "<table><tr><th>prompt</th><th>dolly's answer</th><th>base</th><th>base + adapter</th><th>merged</th>"
        "<th>ROUGE-L base / adapter / merged</th></tr>",
    ]
    for a in s["answers"]:
        row = "" if a["agree"] else " class='no'"
        parts.append(
            f"<tr{row}><td><pre>{e(a['prompt'])}</pre></td><td>{e(a['reference'])}</td><td>{e(_shown(a['base']))}</td>"
            f"<td>{e(_shown(a['adapter']))}</td><td>{e(_shown(a['merged']))}</td><td class='n'>{_scores(a)}</td></tr>"
        )
    parts.append("</table></body></html>")
    return "\n".join(parts)


def _answers_intro(s: dict[str, Any]) -> str:
    mean = s["mean_rouge_l"]
    scores = f"mean ROUGE-L against dolly's answer (base / adapter / merged): {_scores({'rouge_l': mean})}. "
    scores = scores if mean else ""
    return (
        f"{scores}base + adapter and the merged model agree on {s['answers_agree']} of {len(s['answers'])} prompts. "
        f"S3 operations while serving: {', '.join(sorted(set(s['s3_operations_while_serving']))) or 'none'} "
        f"(writes: {s['s3_writes_while_serving']})."
    )


def _scores(answer: dict[str, Any]) -> str:
    return " / ".join(f"{answer['rouge_l'][m]:.3f}" for m in MODELS)


def _shown(text: str) -> str:
    """An answer as shown: one of only whitespace (a base that has not learnt to answer) says so."""
    return text if text.strip() else "(only blank lines)"


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(_shown(text).split())
    return ((text[:limit] + "...") if len(text) > limit else text).replace("|", "\\|")


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
