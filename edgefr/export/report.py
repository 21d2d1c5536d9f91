"""`export_report.json` (schema `edgefr.export-report/1`) and its human-readable twin `export_report.md`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgefr.latency.profile import CONFIRM_AFTER_S


def _fmt(value, spec: str = ".4f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def _check(entry: dict, name: str) -> dict:
    return next((c for c in entry["checks"] if c["name"] == name), {})


def markdown(report: dict) -> str:
    model = report["model"]
    lines = [f"# Export report: {model['name']}", "",
             (f"- model: `{model['source']}` ({model['kind']}; arch `{model['arch']}`, {model['params']:,} params, "
              f"{model['embedding_dim']}-d embedding)"),
             (f"- preprocessing: `{json.dumps(report['preprocessing'])}` (written into every file's metadata as "
              "`edgefr.preprocessing`, layout per format)"),
             f"- result: **{'PASSED' if report['passed'] else 'FAILED'}**"]
    if report["reference"]:
        ref = report["reference"]
        lines.append(f"- PyTorch fp32 reference: LFW {100 * ref['lfw_accuracy']:.2f} +- {100 * ref['lfw_std']:.2f}% "
                     f"on {ref['pairs']} pairs (10-fold)")
    if report["calibration"]:
        lines.append(f"- int8 calibration: {report['calibration']['images']} faces from "
                     f"`{report['calibration']['folder']}`")
    lines += ["", "| export | size | mean cos | min cos | LFW drop | measured | predicted | checks |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    for entry in report["exports"]:
        latency = entry["latency"]
        verdicts = [c["passed"] for c in entry["checks"] if c["passed"] is not None]
        lines.append(f"| {entry['format']} {_variant(entry)} | {entry['bytes'] / 1e6:.2f} MB "
                     f"| {_fmt(_check(entry, 'mean_cosine').get('value'), '.5f')} "
                     f"| {_fmt(_check(entry, 'min_cosine').get('value'), '.5f')} "
                     f"| {_fmt(_check(entry, 'lfw_drop_pp').get('value'), '+.2f', ' pp')} "
                     f"| {_fmt(latency['measured_ms'], '.3f', ' ms')} | {_fmt(latency['predicted_ms'], '.3f', ' ms')} "
                     f"| {'FAIL' if entry['failures'] else 'pass'} ({len(verdicts)} checked) |")
    for entry in report["exports"]:
        graph = entry["graph"]
        lines += ["", f"## {entry['format']} {_variant(entry)}: `{entry['file']}`", "",
                  f"- recipe: {entry['recipe']}",
                  (f"- device: {entry['device']['name'] if entry['device'] else '-'}; "
                   f"latency: {entry['latency']['note']}{_second_call(entry['latency'])}"),
                  f"- ops: {', '.join(f'{k} x{v}' for k, v in sorted(graph['ops'].items()))}"]
        if graph["float_ops"]:
            head = f" (the float32 head: {graph['float_tail_ops']})" if entry.get("float_head") else ""
            lines.append(f"- float ops in the int8 graph: {graph['float_ops']}{head}")
        if graph["non_delegated_ops"]:
            lines.append(f"- not delegated to XNNPACK: {graph['non_delegated_ops']}")
        lines += [f"- {note}" for note in graph["notes"]]
        for check in entry["checks"]:
            verdict = {True: "pass", False: "**FAIL**", None: "not checked"}[check["passed"]]
            allowance = check.get("allowance")  # reports written before allowances lack the key
            allowed = f" {'-' if check['bound'] == 'min' else '+'} {allowance:.2g} sampling error" if allowance else ""
            limit = ("" if check["limit"] is None else f" ({'>=' if check['bound'] == 'min' else '<='} "
                     f"{check['limit']:g}{allowed})")
            lines.append(f"- {check['name']}: {_fmt(check['value'], '.5g', check['unit'])}{limit} {verdict}"
                         + (f"; {check['note']}" if check["note"] else ""))
        lines += [f"- warning: {warning}" for warning in entry["warnings"]]
    if report["skipped"] or report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report["skipped"] + report["notes"]]
    return "\n".join(lines) + "\n"


def write_report(report: dict, folder: Path) -> None:
    """Both files written atomically (temp name + rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("export_report.json", json.dumps(report, indent=2) + "\n"),
                       ("export_report.md", markdown(report))):
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, folder / name)


def _variant(entry: dict) -> str:
    """The quantization as exported: `int8 float-head` when the head stayed float32."""
    return entry["quantize"] + (" float-head" if entry.get("float_head") else "")


def _second_call(latency: dict) -> str:
    """Where the first call measured too slow for the check, the second one's figures (the value is their minimum)."""
    calls = latency.get("calls_ms") or []
    if len(calls) < 2:
        return ""
    return f"; measured again {CONFIRM_AFTER_S:g} s later ({' then '.join(f'{ms:.3f}' for ms in calls)} ms)"
