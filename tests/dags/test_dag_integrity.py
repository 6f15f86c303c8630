"""DAG integrity: every file in dags/ imports cleanly and every DAG follows the project's rules.

Passes vacuously while dags/ is empty and bites as DAGs arrive.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS_FOLDER.glob("*.py") if not p.name.startswith("_"))
# The one approved list of DAG tags: a tag outside it is a typo or a new concept to agree on first.
APPROVED_TAGS = {"loopline", "etl", "training", "serving", "canary", "gates", "demo"}
# What a DAG file may not import at module level (slow to parse, or logic that belongs in loopline/).
HEAVY_MODULES = {"torch", "feast", "mlflow", "evidently", "bentoml", "pandas", "duckdb", "dbt"}


@pytest.fixture(scope="module")
def dag_bag():
    from airflow.dag_processing.dagbag import DagBag

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bag = DagBag(dag_folder=str(DAGS_FOLDER))
    bag.loading_warnings = [w for w in caught if str(DAGS_FOLDER) in str(w.filename)]
    return bag


def test_every_dag_file_imports_without_errors_or_warnings(dag_bag):
    assert dag_bag.import_errors == {}, f"DAG import errors: {dag_bag.import_errors}"
    assert not dag_bag.loading_warnings, [f"{w.filename}:{w.lineno}: {w.message}" for w in dag_bag.loading_warnings]
    assert len(dag_bag.dags) >= len(DAG_FILES), "every DAG file defines at least one DAG"


def test_every_dag_has_owner_retries_doc_and_approved_tags(dag_bag):
    problems = []
    for dag_id, dag in dag_bag.dags.items():
        default_args = dag.default_args or {}
        if default_args.get("owner", "airflow") in ("", "airflow"):
            problems.append(f"{dag_id}: default_args needs a real owner")
        if int(default_args.get("retries", 0)) < 1:
            problems.append(f"{dag_id}: default_args needs retries >= 1")
        if not (dag.doc_md or "").strip():
            problems.append(f"{dag_id}: doc_md is empty")
        if not dag.tags:
            problems.append(f"{dag_id}: no tags")
        if unknown := set(dag.tags) - APPROVED_TAGS:
            problems.append(f"{dag_id}: tags {sorted(unknown)} are not in the approved list {sorted(APPROVED_TAGS)}")
        if dag.start_date is None:
            problems.append(f"{dag_id}: no start_date")
    assert not problems, "\n".join(problems)


def _dag_calls(tree: ast.AST) -> list[ast.Call]:
    """Every `@dag(...)` decorator call and `DAG(...)` constructor call in a module."""
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name in ("dag", "DAG"):
                calls.append(node)
    return calls


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_is_configuration_only(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    calls = _dag_calls(tree)
    assert calls, f"{path.name} defines no DAG"
    for call in calls:
        keywords = {k.arg: k.value for k in call.keywords}
        assert "catchup" in keywords, f"{path.name}:{call.lineno}: set catchup explicitly"
        assert "start_date" in keywords, f"{path.name}:{call.lineno}: set a static start_date"
        start = ast.unparse(keywords["start_date"])
        assert not any(word in start for word in ("now", "today", "days_ago", "utcnow")), (
            f"{path.name}:{call.lineno}: start_date {start} is not static"
        )
    for node in tree.body:  # module level only: imports inside tasks are fine
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            heavy = {n.split(".")[0] for n in names} & HEAVY_MODULES
            assert not heavy, f"{path.name}:{node.lineno}: heavy import {heavy} at module level"
    source = path.read_text()
    assert "Variable.get" not in source, f"{path.name}: no Variable.get in DAG files (read it in a task)"
