"""contrib/grafana/ncd.json: every PromQL query names only metrics (and labels) the daemon
exports, taken from ncd/metrics.py's registry (a vif and a switch registered); every
exported metric is on the dashboard;
with promtool installed, every query is valid PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ncd.metrics import Metrics, QueueCounters, VifCounters
from ncd.xenbus import XenbusState

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "contrib" / "grafana" / "ncd.json"
# labels Prometheus adds to every scraped series
TARGET_LABELS = {"job", "instance"}
# PromQL functions and aggregation operators the dashboard may call
FUNCTIONS = {
    "abs", "avg", "ceil", "clamp_min", "count", "delta", "deriv", "floor", "histogram_quantile",
    "idelta", "increase", "irate", "label_replace", "max", "min", "quantile", "rate", "round",
    "sort", "sort_desc", "sum", "topk", "bottomk", "vector", "time", "changes", "resets",
    "max_over_time", "min_over_time", "avg_over_time", "last_over_time",
}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*\"")


def exported() -> tuple[set[str], set[str], set[str]]:
    """(sample names, family names, label names) a daemon's registry exports."""
    m = Metrics("backend", "0.0.0")
    queues = (QueueCounters(1, 2, 60, 120), QueueCounters(3, 4, 180, 240))  # a two-queue vif
    m.add_vif(
        1, 0, lambda: VifCounters(drops={"bad_record": 1}, queues=queues),
        lambda: XenbusState.CONNECTED,
    )
    # one in-daemon switch, shaped as SwitchRegistry.snapshot() gives it (_SwitchCollector
    # reads name, forwarded, ports, port_stops); ncd_tracker_entries reads the C tracker
    m.add_switches(lambda: [{"name": "up", "forwarded": {(1, 2): (3, 180)}, "ports": 2,
                             "port_stops": {"peer_closed": 1}}])
    samples, families, labels = set(), set(), set()
    for fam in m.registry.collect():
        families.add(fam.name)
        for s in fam.samples:
            samples.add(s.name)
            labels |= set(s.labels)
    return samples, families, labels


def _walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _walk(p.get("panels", []))


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable; Grafana's
    ``label_values(SELECTOR, LABEL)`` gives its selector."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for p in _walk(dash["panels"]):
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t['refId']}", t["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\)", q)
        assert m, f"variable {v['name']}: {q!r}"
        out.append((f"variable {v['name']} (label {m.group(2)})", m.group(1)))
    return out


def names_in(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) a PromQL expression refers to."""
    labels = set()
    for m in re.finditer(r"\{([^}]*)\}", expr):
        labels |= {mm.group(1) for mm in MATCHER.finditer(m.group(1))}
    for m in GROUPING.finditer(expr):
        labels |= {x.strip() for x in m.group(2).split(",") if x.strip()}
    bare = GROUPING.sub(" ", expr)
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', bare)
    bare = re.sub(r"\{[^}]*\}", " ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\$\w+", " ", bare)
    metrics = set()
    for m in IDENT.finditer(bare):
        word, rest = m.group(0), bare[m.end():].lstrip()
        if rest.startswith("("):
            assert word in FUNCTIONS, f"unknown function {word}() in {expr!r}"
        elif word not in KEYWORDS:
            metrics.add(word)
    return metrics, labels


def test_dashboard_is_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in _walk(dash["panels"])]
    assert len(ids) == len(set(ids))
    names = [v["name"] for v in dash["templating"]["list"]]
    assert "ds_prometheus" in names
    for p in _walk(dash["panels"]):
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${ds_prometheus}", p["title"]
            assert p.get("description"), f"panel {p['title']!r} has no description"


def test_queries_name_only_exported_metrics_and_labels() -> None:
    samples, _, labels = exported()
    # the registry was read, not a stub, switches included
    assert {"ncd_vif_frames_total", "ncd_forwarded_bytes_total", "ncd_tracker_entries"} <= samples
    bad = []
    for where, expr in queries():
        metrics, used = names_in(expr)
        assert metrics, f"{where}: no metric in {expr!r}"
        bad += [f"{where}: metric {n}" for n in sorted(metrics - samples)]
        bad += [f"{where}: label {n}" for n in sorted(used - labels - TARGET_LABELS)]
    assert bad == []


def test_every_exported_metric_is_on_the_dashboard() -> None:
    samples, _, _ = exported()
    used = set().union(*(names_in(e)[0] for _, e in queries()))
    # *_created (counters' creation time) is no operational signal
    missing = {s for s in samples if not s.endswith("_created")} - used
    assert missing == set()


def _promtool() -> str | None:
    beside = Path(sys.executable).parent / "promtool"  # scripts/setup.sh puts it there
    return str(beside) if beside.is_file() else shutil.which("promtool")


def test_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = _promtool()
    if promtool is None:
        pytest.skip("promtool not installed (scripts/setup.sh extracts Debian's)")
    subst = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}
    rules = []
    for i, (where, expr) in enumerate(queries()):
        for k, v in subst.items():
            expr = expr.replace(k, v)
        expr = re.sub(r"\$\w+", ".*", expr)  # template variables: all values
        rules.append({"record": f"dashboard:query_{i}", "expr": expr,
                      "labels": {"where": where}})
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
