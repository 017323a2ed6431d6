"""Human-readable output of each command (``--json`` prints the result document as is)."""

from __future__ import annotations

import json
import os


def render_text(command: str, result: dict) -> str:
    """Human-readable output for each command (``--json`` prints ``result`` as is)."""
    if command == "inject":
        lines = [f"{r['status']:9s} {r['subject']} | {r['relation']} -> {r['object']}"
                 + (f"  (edit {r['edit_id']}, {r['seconds']:.1f} s)" if r["status"] != "unchanged" else "")
                 for r in result["injected"]]
        return "\n".join(lines + [f"{result['facts']} fact(s) stored; weights {result['weights_digest'][:16]}"])
    if command == "recall":
        mark = {True: "yes", False: "no", None: "-"}
        lines = [f"{'raw':4s} {'para':5s} {'chat':4s} fact -> completion"]
        for r in result["facts"]:
            para = "-" if r["paraphrase"] is None else f"{r['paraphrase']:.2f}"
            lines.append(f"{mark[r['raw']]:4s} {para:5s} {mark[r['chat']]:4s} "
                         f"{r['subject']} | {r['relation']} -> {r['object']}: {r['raw_text'].strip()[:60]!r}")
        summary = result["summary"]
        lines.append("recall: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in summary.items() if v is not None))
        return "\n".join(lines)
    if command == "forget":
        f = result["forgotten"]
        lines = [f"forgot {f['subject']} | {f['relation']}; {result['facts']} fact(s) left; "
                 f"{f['unlearning_passes']} unlearning pass(es); {f['redacted_turns']} logged message(s) redacted",
                 "verified: no probe produces it" if f["verified"] else "NOT verified: a probe still produces it"]
        lines += [f"  {p['kind']:10s} {p['prompt']!r} -> {p['answer'][:60]!r}" for p in f["probes"]]
        return "\n".join(lines)
    if command == "ask":
        return result["answer"]
    if command == "chat":
        return (f"[chat {result['session_id']}: {len(result['turns'])} turn(s), {len(result['stored'])} fact(s) "
                f"stored, {len(result['forgotten'])} forgotten]")
    if command in ("nap", "sleep"):
        from sleepwake.sleep.report import Report, render_markdown

        return render_markdown(Report.model_validate(result))
    if command == "experiment":
        from sleepwake.experiments.summary import render_markdown

        path = os.path.join(result["out"], "results.json")
        with open(path, encoding="utf-8") as handle:
            return render_markdown(json.load(handle), result["out"])
    if command == "config":
        if "presets" in result:
            return "\n".join(result["presets"]) + f"\n(in {result['folder']}; --config NAME or a YAML file path)"
        return "\n".join(_setting_lines(result["settings"], ""))
    width = max(len(k) for k in result)
    return "\n".join(f"{k:{width}s}  {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in result.items())


def _setting_lines(settings: dict, prefix: str) -> list[str]:
    lines = []
    for key, item in settings.items():
        if "value" in item and "description" in item:
            lines.append(f"{prefix}{key} = {json.dumps(item['value'])}    # {item['description']}")
        else:
            lines += _setting_lines(item, f"{prefix}{key}.")
    return lines
