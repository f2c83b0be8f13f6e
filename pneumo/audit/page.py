"""audit.json (everything the audit found, paths relative to the data root) and audit.md (the same for a
person: verdict first, then counts, image facts, duplicates and leaks, samples, outliers, with figures)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pneumo.audit.facts import FileFacts, summarize
from pneumo.audit.fingerprints import ImageTable
from pneumo.audit.leaks import Pair, SharedPatient, relative
from pneumo.audit.outliers import Outlier
from pneumo.data.labels import CLASS_NAMES


def build_payload(*, described: dict[str, Any], root: str, table: ImageTable, facts: list[FileFacts],
                  pairs: list[Pair], patients: list[SharedPatient], outliers: list[Outlier],
                  settings: dict[str, Any], figures: list[str]) -> dict[str, Any]:
    """audit.json's content: plain JSON types only; every path relative to `root` when under it.

    Keys: data (the data module's `describe()`), root, image_size, hash_bits, counts (per split and
    class), facts (per split: `facts.summarize`), duplicates (counts and every pair), patients (those on
    several splits), leaks (image pairs and patients crossing splits, and their total), outliers,
    settings (audit.*), figures (file names).
    """
    splits = list(dict.fromkeys(table.splits))
    counts = {}
    for split in splits:
        labels = table.labels[table.where(split)]
        counts[split] = {**{name: int((labels == index).sum()) for index, name in enumerate(CLASS_NAMES)},
                         "total": int(len(labels))}
    by_split = {split: [facts[i] for i in table.where(split)] for split in splits}
    crossing = [pair for pair in pairs if pair.crosses]
    tally = {f"{kind}_{where}": sum(1 for p in pairs if p.kind == kind and p.crosses == (where == "across"))
             for kind in ("exact", "near") for where in ("within", "across")}
    return {
        "data": described, "root": root, "image_size": table.image_size, "hash_bits": table.hash_bits,
        "counts": counts,
        "facts": {split: summarize(items) for split, items in by_split.items()},
        "duplicates": {**tally, "max_distance": settings.get("near_max_distance"),
                       "pairs": [_pair_entry(pair, root) for pair in pairs]},
        "patients": [{"patient": p.patient, "files": {split: [relative(f, root) for f in files]
                                                      for split, files in p.files}} for p in patients],
        "leaks": {"image_pairs": len(crossing), "patients": len(patients), "total": len(crossing) + len(patients),
                  "by_splits": _by_splits(crossing, patients)},
        "outliers": [{"split": o.split, "path": relative(o.path, root), "reasons": list(o.reasons)} for o in outliers],
        "unreadable_headers": [{"path": relative(f.path, root), "error": f.error} for f in facts if f.error],
        "settings": settings, "figures": figures,
    }


def _pair_entry(pair: Pair, root: str) -> dict[str, Any]:
    return {"kind": pair.kind, "distance": pair.distance, "crosses": pair.crosses, "splits": list(pair.splits),
            "paths": [relative(path, root) for path in pair.paths], "labels": [CLASS_NAMES[y] for y in pair.labels],
            "patients": list(pair.patients)}


def _by_splits(pairs: list[Pair], patients: list[SharedPatient]) -> dict[str, int]:
    sides: dict[str, int] = {}
    for leak in [*pairs, *patients]:
        key = "/".join(leak.splits)
        sides[key] = sides.get(key, 0) + 1
    return sides


def write_json(payload: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(payload, indent=1, allow_nan=False))
    return path


def verdict(payload: dict[str, Any]) -> str:
    """One line: the leaks, or that there are none."""
    leaks = payload["leaks"]
    if not leaks["total"]:
        return "No image and no patient crosses splits."
    sides = ", ".join(f"{key}: {n}" for key, n in leaks["by_splits"].items())
    return (f"LEAK: {leaks['image_pairs']} image pair(s) and {leaks['patients']} patient(s) cross splits ({sides}). "
            f"Validation and test figures of a model trained on these splits may be optimistic.")


def write_markdown(payload: dict[str, Any], path: Path, listed: int = 200) -> Path:
    """audit.md; tables list at most `listed` rows each (audit.json has them all)."""
    data, dup = payload["data"], payload["duplicates"]
    lines = [f"# Data audit: {data.get('name', '')}", "", f"**{verdict(payload)}**", "",
             f"Source: `{data.get('source', '')}`; images under `{payload['root']}` (paths below are relative to it). "
             f"Duplicates and brightness were computed on the decoded images at {payload['image_size']} px, "
             f"as training sees them; sizes, modes and bit depths come from the file headers.", ""]
    lines += ["## Counts per split and class", "", "| split | NORMAL | PNEUMONIA | total | PNEUMONIA share |",
              "|---|---:|---:|---:|---:|"]
    for split, row in payload["counts"].items():
        share = f"{row['PNEUMONIA'] / row['total']:.0%}" if row["total"] else "-"
        lines.append(f"| {split} | {row['NORMAL']} | {row['PNEUMONIA']} | {row['total']} | {share} |")
    lines += ["", "## Image size, mode and bit depth", "",
              "| split | files | width min / median / max | height min / median / max | aspect (w/h) | format "
              "| mode | bits | encoding |",
              "|---|---:|---|---|---|---|---|---|---|"]
    for split, facts in payload["facts"].items():
        lines.append(f"| {split} | {facts['files']} | {_spread(facts['width'])} | {_spread(facts['height'])} | "
                     f"{_spread(facts['aspect'])} | {_tally(facts['format'])} | {_tally(facts['mode'])} | "
                     f"{_tally(facts['bits'])} | {_tally(facts['encoding'])} |")
    lines += ["", _figure(payload, "image_facts.png", "image facts per split"), ""]
    lines += ["## Duplicates and leaks", "",
              f"Exact: identical decoded pixels (confirmed at full resolution). Near: DCT perceptual hashes at most "
              f"{dup['max_distance']} of {payload['hash_bits']} bits apart (resized, re-encoded or brightened copies).",
              "", "| | within a split | across splits (leak) |", "|---|---:|---:|",
              f"| exact pairs | {dup['exact_within']} | {dup['exact_across']} |",
              f"| near pairs | {dup['near_within']} | {dup['near_across']} |",
              f"| patients on several splits | - | {len(payload['patients'])} |", ""]
    for heading, crossing in (("Image pairs across splits", True), ("Duplicate pairs within a split", False)):
        rows = [p for p in dup["pairs"] if p["crosses"] == crossing]
        lines += [f"### {heading} ({len(rows)})", ""]
        if rows:
            lines += ["| kind | distance | split | file | split | file | labels |", "|---|---:|---|---|---|---|---|"]
            lines += [f"| {p['kind']} | {p['distance']} | {p['splits'][0]} | `{_cell(p['paths'][0])}` "
                      f"| {p['splits'][1]} | `{_cell(p['paths'][1])}` | {' / '.join(dict.fromkeys(p['labels']))} |"
                      for p in rows[:listed]]
            lines += _more(len(rows), listed)
        else:
            lines.append("None.")
        lines.append("")
    lines += [_figure(payload, "duplicates.png", "the first duplicate pairs, side by side"), "",
              f"### Patients on more than one split ({len(payload['patients'])})", ""]
    if payload["patients"]:
        lines += ["| patient | images per split | files |", "|---|---|---|"]
        for p in payload["patients"][:listed]:
            first = "<br>".join(f"{s}: `{_cell(f[0])}`" + (" ..." if len(f) > 1 else "") for s, f in p["files"].items())
            lines.append(f"| {_cell(p['patient'])} | {', '.join(f'{s}: {len(f)}' for s, f in p['files'].items())} "
                         f"| {first} |")
        lines += _more(len(payload["patients"]), listed)
    else:
        lines.append("None (by the patient id the data source gives; a table without a patient column makes every "
                     "image its own patient).")
    lines += ["", _figure(payload, "nearest_distance.png", "nearest-neighbour pHash distance per image"), ""]
    lines += ["## Random samples per class", ""]
    lines += [_figure(payload, f"samples_{name}.png", f"random {name} images") for name in CLASS_NAMES]
    outliers = payload["outliers"]
    lines += ["", f"## Outliers worth a look ({len(outliers)})", ""]
    if outliers:
        lines += ["| split | file | why |", "|---|---|---|"]
        lines += [f"| {o['split']} | `{_cell(o['path'])}` | {'; '.join(o['reasons'])} |" for o in outliers[:listed]]
        lines += _more(len(outliers), listed)
        lines += ["", _figure(payload, "outliers.png", "outliers")]
    else:
        lines.append("None.")
    if payload["unreadable_headers"]:
        lines += ["", "## Unreadable headers", ""] + [f"- `{_cell(e['path'])}`: {e['error']}"
                                                       for e in payload["unreadable_headers"][:listed]]
    lines += ["", f"Settings: `{json.dumps(payload['settings'])}`", ""]
    text = "\n".join(line for line in lines if line is not None)
    path.write_text(re.sub(r"\n{3,}", "\n\n", text))
    return path


def _figure(payload: dict[str, Any], name: str, alt: str) -> str | None:
    return f"![{alt}]({name})" if name in payload["figures"] else None


def _spread(spread: dict[str, Any] | None) -> str:
    return "-" if spread is None else f"{spread['min']} / {spread['median']} / {spread['max']}"


def _tally(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {n}" for key, n in counts.items()) or "-"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _more(total: int, listed: int) -> list[str]:
    return ["", f"... and {total - listed} more in audit.json."] if total > listed else []
