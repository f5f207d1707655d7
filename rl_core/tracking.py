"""MLflow mirror of the run files (STYLE habit 10: files are the contract; MLflow mirrors them).

What lands in MLflow, for browsing and comparing in ``mlflow ui``:

* one **experiment per grid** (named after the grid), with one **parent run** per grid (tag ``role=grid``);
* one **child run** per (figure, arm, seed) (tag ``mlflow.parentRunId``), named ``{figure}/{arm}/seed{seed}``:
  params = the flat resolved config (``config.json`` through :func:`rl_core.config.flatten`); metrics =
  every numeric field of every ``metrics.jsonl`` row at ``step`` = the row's gradient step, plus the
  summary's numbers as ``summary/<key>``; tags grid, figure, arm, label, seed, preset, status,
  config_hash, cold_start; artifacts config.json, meta.json, summary.json.

Store: by default the embedded ``sqlite:///<abs results>/mlflow.db`` with artifacts in
``<results>/mlartifacts/<grid>`` (``mlflow ui --backend-store-uri sqlite:///results/mlflow.db``); a
``--uri`` (e.g. ``http://mlflow.internal:5000``) mirrors to a tracking server instead.

Re-mirroring is idempotent: a child is found by its tags (role, figure, arm, seed) in the grid's
experiment. If one is FINISHED with the same ``digest`` tag (a hash of the run files, set last, so a
half-mirrored run never matches) it is kept and nothing is written; otherwise the old children are deleted
(soft delete; ``mlflow gc`` purges them) and the run is mirrored afresh.

Concurrency: sqlite takes one writer at a time; every write is retried with exponential backoff while the
database is locked (:func:`retry`), so mirror jobs may run in parallel.

    python -m rl_core.tracking grid --grid-dir results/{grid} --grid NAME [--uri URI] RUN_DIR ...
    python -m rl_core.tracking parent --grid-dir results/{grid} --grid NAME [--uri URI] --out FILE
    python -m rl_core.tracking run --run-dir DIR --parent-file FILE [--uri URI] --out FILE

``grid`` (the workflow's one mirror job per grid) does ``parent`` then ``run`` for every RUN_DIR in one
process, writing {grid-dir}/mlflow_parent.json and RUN_DIR/mlflow_run.json: opening MLflow costs ~2 s
of imports and store setup, paid once per grid instead of once per arm.

Imports no torch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow.entities import Metric, Param, ViewType  # noqa: E402  (after the telemetry default)
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from rl_core.config import flatten  # noqa: E402

#: Bump when what a mirror writes changes: every run is then mirrored again.
MIRROR_VERSION = "1"
#: Keys of a metrics row that index it rather than measure something.
INDEX_KEYS = ("step", "global_step", "minibatch")
MAX_METRICS_PER_BATCH = 1000  # MlflowClient.log_batch limits
MAX_PARAMS_PER_BATCH = 100
RUN_FILES = ("config.json", "meta.json", "summary.json", "metrics.jsonl")
ARTIFACTS = ("config.json", "meta.json", "summary.json")
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]")


# --------------------------------------------------------------------------------------- the store


def default_uri(results: str | Path) -> str:
    """The embedded store of a results directory."""
    return f"sqlite:///{Path(results).resolve()}/mlflow.db"


def artifact_location(results: str | Path, grid: str, uri: str) -> str | None:
    """Artifacts of a local store go under <results>/mlartifacts; a server decides for itself."""
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        return (Path(results).resolve() / "mlartifacts" / grid).as_uri()
    return None


def _locked(err: Exception) -> bool:
    text = str(err).lower()
    return "database is locked" in text or "database table is locked" in text


def retry(fn, *args, attempts: int = 10, delay: float = 0.1, **kwargs):
    """Call fn; while sqlite says the database is locked, retry with exponential backoff and jitter
    (about a minute in all before the error is raised). Other errors are raised at once."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - MlflowException or sqlalchemy OperationalError
            if attempt == attempts - 1 or not _locked(e):
                raise
            wait = min(delay * 2 ** attempt, 10.0) * (0.5 + random.random())
            print(f"mlflow store locked ({getattr(fn, '__name__', fn)}); retry {attempt + 1} in {wait:.2f}s",
                  file=sys.stderr)
            time.sleep(wait)


def ensure_experiment(client: MlflowClient, name: str, location: str | None) -> str:
    exp = retry(client.get_experiment_by_name, name)
    if exp is None:
        try:
            return retry(client.create_experiment, name, artifact_location=location, tags={"grid": name})
        except MlflowException:  # created meanwhile by another process
            exp = retry(client.get_experiment_by_name, name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        retry(client.restore_experiment, exp.experiment_id)
    return exp.experiment_id


def _write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


# -------------------------------------------------------------------------------------- the parent


def mirror_parent(grid_dir: str | Path, grid: str, uri: str = "", out: str | Path | None = None) -> dict:
    """Find or create the grid's experiment and parent run; write their ids to `out`."""
    results = Path(grid_dir).resolve().parent
    uri = uri or default_uri(results)
    client = retry(MlflowClient, tracking_uri=uri)  # opening the store reads it too
    exp_id = ensure_experiment(client, grid, artifact_location(results, grid, uri))
    found = retry(client.search_runs, [exp_id], filter_string=f"tags.role = 'grid' and tags.grid = '{grid}'",
                  run_view_type=ViewType.ACTIVE_ONLY, max_results=1)
    if found:
        run_id = found[0].info.run_id
    else:
        tags = {"role": "grid", "grid": grid, "grid_dir": str(Path(grid_dir).resolve())}
        run = retry(client.create_run, exp_id, run_name=grid, tags=tags)
        run_id = run.info.run_id
        retry(client.set_terminated, run_id, "FINISHED")
    record = {"grid": grid, "tracking_uri": uri, "experiment_id": exp_id, "experiment_name": grid,
              "parent_run_id": run_id}
    if out:
        _write_json(out, record)
    return record


# ------------------------------------------------------------------------------------ one run dir


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_rows(path: Path) -> list[dict]:
    """metrics.jsonl -> rows; a torn last line (a run killed mid-write) is skipped."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def run_meta(run_dir: Path) -> dict:
    """meta.json, with figure/arm/seed inferred from runs/{figure}/{arm}/seed{seed} where missing."""
    meta = _read(run_dir / "meta.json")
    inferred = {"figure": run_dir.parent.parent.name, "arm": run_dir.parent.name,
                "seed": int(run_dir.name[4:]) if run_dir.name[4:].isdigit() else run_dir.name}
    return {**inferred, **meta}


def _number(value: Any) -> float | None:
    """A metric value as float (None -> NaN, bool -> 0/1); None when it is not a number."""
    if value is None:
        return math.nan
    if isinstance(value, bool | int | float):
        return float(value)
    return None


def metric_key(key: str) -> str:
    return _BAD_KEY_CHARS.sub("_", str(key))


def metric_entities(rows: list[dict], summary: dict, t0_ms: int) -> list[Metric]:
    """Every numeric field of every row at its gradient step; the summary's numbers as summary/<key>."""
    out = []
    for i, row in enumerate(rows):
        step = row.get("step", row.get("global_step", i))
        step = int(step) if isinstance(step, int | float) and math.isfinite(step) else i
        for key, value in row.items():
            number = _number(value)
            if key not in INDEX_KEYS and number is not None:
                out.append(Metric(metric_key(key), number, t0_ms + i, step))
    last = summary.get("steps_done") if isinstance(summary.get("steps_done"), int) else 0
    for key, value in summary.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.append(Metric(metric_key(f"summary/{key}"), float(value), t0_ms + len(rows), last))
    return out


def files_digest(run_dir: Path) -> str:
    h = hashlib.sha256(MIRROR_VERSION.encode())
    for name in RUN_FILES:
        path = run_dir / name
        h.update(name.encode() + b"\0")
        if path.is_file():
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def run_tags(meta: dict, summary: dict, parent_id: str) -> dict[str, str]:
    tags = {"role": "run", "mlflow.parentRunId": parent_id, "status": str(summary.get("status", "unknown"))}
    for key in ("grid", "figure", "arm", "label", "seed", "preset", "config_hash", "cold_start"):
        if meta.get(key) is not None:
            tags[key] = str(meta[key])
    return tags


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _find_children(client: MlflowClient, exp_id: str, meta: dict) -> list:
    where = " and ".join(f"tags.{k} = '{meta[k]}'" for k in ("figure", "arm", "seed"))
    return retry(client.search_runs, [exp_id], filter_string=f"tags.role = 'run' and {where}",
                 run_view_type=ViewType.ACTIVE_ONLY, max_results=100)


def _create_child(client: MlflowClient, exp_id: str, run_dir: Path, tags: dict,
                  digest: str) -> tuple[str, int]:
    config, summary = _read(run_dir / "config.json"), _read(run_dir / "summary.json")
    name = f"{tags.get('figure')}/{tags.get('arm')}/seed{tags.get('seed')}"
    run = retry(client.create_run, exp_id, run_name=name, tags={**tags, "run_dir": str(run_dir)})
    run_id = run.info.run_id
    params = [Param(k, str(v)) for k, v in flatten(config).items()]
    for chunk in _chunks(params, MAX_PARAMS_PER_BATCH):
        retry(client.log_batch, run_id, params=chunk)
    metrics = metric_entities(read_rows(run_dir / "metrics.jsonl"), summary, int(time.time() * 1000))
    for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
        retry(client.log_batch, run_id, metrics=chunk)
    for name in ARTIFACTS:
        if (run_dir / name).is_file():
            retry(client.log_artifact, run_id, str(run_dir / name))
    retry(client.set_tag, run_id, "digest", digest)  # last: marks the mirror complete
    retry(client.set_terminated, run_id, "FINISHED")
    return run_id, len(metrics)


def mirror_run(run_dir: str | Path, parent_file: str | Path, uri: str = "",
               out: str | Path | None = None) -> dict:
    """Mirror one finished run dir as a child of the grid's parent run; write the ids to `out`."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "summary.json").is_file():
        raise FileNotFoundError(f"{run_dir}: no summary.json (the run has not finished)")
    parent = json.loads(Path(parent_file).read_text())
    uri = uri or parent["tracking_uri"]
    client = retry(MlflowClient, tracking_uri=uri)  # opening the store reads it too
    exp_id = parent["experiment_id"]
    meta, summary = run_meta(run_dir), _read(run_dir / "summary.json")
    digest = files_digest(run_dir)
    existing = _find_children(client, exp_id, meta)
    keep = [r for r in existing if r.data.tags.get("digest") == digest and r.info.status == "FINISHED"]
    for old in existing:
        if not keep or old.info.run_id != keep[0].info.run_id:
            retry(client.delete_run, old.info.run_id)
    if keep:
        run_id, n_metrics, action = keep[0].info.run_id, None, "unchanged"
    else:
        tags = run_tags(meta, summary, parent["parent_run_id"])
        run_id, n_metrics = _create_child(client, exp_id, run_dir, tags, digest)
        action = "mirrored"
    record = {"run_id": run_id, "experiment_id": exp_id, "parent_run_id": parent["parent_run_id"],
              "tracking_uri": uri, "digest": digest, "action": action, "n_metrics": n_metrics}
    if out:
        _write_json(out, record)
    return record


# ------------------------------------------------------------------------------------ command line


def mirror_grid(grid_dir: str | Path, grid: str, run_dirs: list[str | Path], uri: str = "") -> dict:
    """The parent and every run of a grid in one process; returns counts and seconds per part."""
    t0 = time.perf_counter()
    parent_file = Path(grid_dir) / "mlflow_parent.json"
    mirror_parent(grid_dir, grid, uri, parent_file)
    t1 = time.perf_counter()
    actions = [mirror_run(d, parent_file, uri, Path(d) / "mlflow_run.json")["action"] for d in run_dirs]
    return {"runs": len(run_dirs), "mirrored": actions.count("mirrored"),
            "unchanged": actions.count("unchanged"), "parent_s": t1 - t0, "runs_s": time.perf_counter() - t1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rl_core.tracking", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grid", help="the parent and every given run directory, in one process")
    g.add_argument("--grid-dir", required=True, help="results/{grid}")
    g.add_argument("--grid", required=True, help="grid name (the experiment's name)")
    g.add_argument("--uri", default="", help="tracking URI (default: sqlite store under the results)")
    g.add_argument("run_dirs", nargs="*", help="finished run directories")
    p = sub.add_parser("parent", help="create (or find) the grid's experiment and parent run")
    p.add_argument("--grid-dir", required=True, help="results/{grid}")
    p.add_argument("--grid", required=True, help="grid name (the experiment's name)")
    r = sub.add_parser("run", help="mirror one finished run directory as a child run")
    r.add_argument("--run-dir", required=True)
    r.add_argument("--parent-file", required=True, help="the JSON that `parent` wrote")
    for s in (p, r):
        s.add_argument("--uri", default="", help="tracking URI (default: sqlite store under the results)")
        s.add_argument("--out", required=True, help="JSON file to write the ids to")
    args = parser.parse_args(argv)
    if args.command == "grid":
        record = mirror_grid(args.grid_dir, args.grid, args.run_dirs, args.uri)
    elif args.command == "parent":
        record = mirror_parent(args.grid_dir, args.grid, args.uri, args.out)
    else:
        record = mirror_run(args.run_dir, args.parent_file, args.uri, args.out)
    print(json.dumps(record, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
