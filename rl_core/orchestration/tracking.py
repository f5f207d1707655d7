"""MLflow mirror of the run files (docs/conventions.md §9: files are the contract; MLflow mirrors them).

What lands in MLflow, for browsing and comparing in ``mlflow ui``:

* one **experiment per grid** (named after the grid; tagged as model development; :func:`ui_path`, also in
  mlflow_parent.json, is the UI address that opens on its training runs), with one **parent run** per
  grid (tag ``role=grid``), which carries the grid's report (``report.html``, ``report.md``, the figures
  and CSVs, logged by ``report`` after analysis.report);
* one **child run** per (figure, arm, seed) (tag ``mlflow.parentRunId``), named ``{figure}/{arm}/{seed}``:
  params = the flat resolved config (``config.json`` through :func:`rl_core.config.flatten`); metrics =
  every numeric field of every ``metrics.jsonl`` row at ``step`` = the row's gradient step, plus the
  summary's numbers as ``summary/<key>``; tags grid, figure, arm, label, seed, preset, status,
  config_hash, cold_start; artifacts config.json, meta.json, summary.json, metrics.jsonl, samples.jsonl;
  the rollout samples as two tables (``samples/train.json``, ``samples/eval.json``: :func:`sample_tables`),
  and the exported policy (RUN_DIR/policy/) as an MLflow model ``policy`` of the transformers flavour
  (:func:`log_policy`: ``mlflow.transformers.load_model`` or ``mlflow.pyfunc.load_model`` on
  ``runs:/<id>/policy``, or the model's own URI, loads it; nothing is downloaded).

Times are training times, not mirroring times (:func:`run_times`): a child ends when its last metric row
was written (the row's ``perf/time``, unix seconds; else summary.json's modification time) and starts
``summary.wall_s`` before that, so its duration in MLflow is the run's wall time; each metric's timestamp is
its row's ``perf/time`` (rows without one are spread evenly over the run). The parent spans its children:
it starts when the grid started (the live follower's start, rl_core.orchestration.live, else its earliest
child) and is
RUNNING while any of its arms trains; a parent found starting after a child it must hold (a store rebuilt
after the runs) is replaced by one that starts with its earliest child (:func:`mirror_parent`).

Store: by default the embedded ``sqlite:///<abs results>/mlflow.db`` with artifacts in
``<results>/mlartifacts/<grid>`` (``mlflow ui --backend-store-uri sqlite:///results/mlflow.db``); a
``--uri`` (e.g. ``http://mlflow.internal:5000``) mirrors to a tracking server instead.

Re-mirroring is idempotent: a child is found by its tags (role, figure, arm, seed) in the grid's
experiment. If one is FINISHED with the same ``digest`` tag (a hash of the run files, set last, so a
half-mirrored run never matches) it is kept and nothing is written; otherwise the old children are deleted
(soft delete; ``mlflow gc`` purges them) and the run is mirrored afresh. The live run that
rl_core.orchestration.live wrote while the arm ran has no digest, so the finished files always replace it.

Concurrency: sqlite takes one writer at a time; every write is retried with exponential backoff while the
database is locked (:func:`retry`), so mirror jobs may run in parallel.

    python -m rl_core.orchestration.tracking grid --grid-dir results/{grid} --grid NAME [--uri URI] \
        RUN_DIR ...
    python -m rl_core.orchestration.tracking parent --grid-dir results/{grid} --grid NAME [--uri URI] \
        --out FILE
    python -m rl_core.orchestration.tracking run --run-dir DIR --parent-file FILE [--uri URI] --out FILE
    python -m rl_core.orchestration.tracking report --parent-file FILE --report-dir DIR [--uri URI]

``grid`` (the workflow's one mirror job per grid) does ``parent`` then ``run`` for every RUN_DIR in one
process, writing {grid-dir}/mlflow_parent.json and RUN_DIR/mlflow_run.json: opening MLflow costs ~2 s
of imports and store setup, paid once per grid instead of once per arm.

Imports no torch.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
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

from rl_core.cli import UsageError, guard  # noqa: E402
from rl_core.config import flatten  # noqa: E402
from rl_core.samples import parse_rows  # noqa: E402  (plain Python)

#: Bump when what a mirror writes changes: every run is then mirrored again.
MIRROR_VERSION = "3"
#: Keys of a metrics row that index it rather than measure something (perf/time: its wall clock).
INDEX_KEYS = ("step", "global_step", "minibatch", "perf/time")
MAX_METRICS_PER_BATCH = 1000  # MlflowClient.log_batch limits
MAX_PARAMS_PER_BATCH = 100
RUN_FILES = ("config.json", "meta.json", "summary.json", "metrics.jsonl", "samples.jsonl")
ARTIFACTS = ("config.json", "meta.json", "summary.json", "metrics.jsonl", "samples.jsonl")
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]")
EXPERIMENT_KIND = "custom_model_development"
#: Files of analysis.report logged into the parent run (artifact folder ``report/``).
REPORT_FILES = ("report.html", "report.md", "report.json", "stability.csv", "stability_runs.csv",
                "findings.csv")


# --------------------------------------------------------------------------------------- the store


def default_uri(results: str | Path) -> str:
    """The embedded store of a results directory."""
    return f"sqlite:///{Path(results).resolve()}/mlflow.db"


def artifact_location(results: str | Path, grid: str, uri: str) -> str | None:
    """Artifacts of a local store go under <results>/mlartifacts; a server decides for itself."""
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        return (Path(results).resolve() / "mlartifacts" / grid).as_uri()
    return None


def open_client(uri: str) -> MlflowClient:
    """A client of the store at `uri`. An embedded sqlite store that is a directory, or that this process
    cannot write (a read-only file, folder or mount), is named at once: sqlite's own "unable to open
    database file" says neither which file nor why. The run directories are not touched either way."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if path.is_dir():
            raise UsageError(f"{path}: the MLflow store is a directory, not an sqlite file; move it away "
                             f"(every grid under {path.parent} is mirrored again from its run directories)")
        for target in (path, path.parent):  # sqlite writes its journal beside the database
            if target.exists() and not os.access(target, os.W_OK):
                raise UsageError(f"{path}: the MLflow store cannot be written ({target} is read-only); make "
                                 f"it writable, or give another store with --config tracking_uri=URI")
    return retry(MlflowClient, tracking_uri=uri)  # opening the store reads it too


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


def write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


# -------------------------------------------------------------------------------------- the parent


def ui_path(exp_id: str) -> str:
    """The experiment's runs in `mlflow ui`, appended to its address. MLflow 3's UI opens an experiment on
    its GenAI overview (traces) unless the workflow type says model training; this path says it."""
    return f"#/experiments/{exp_id}/runs?workflowType=machine_learning"


@contextlib.contextmanager
def store_lock(uri: str):
    """Held while a process opens the store: the first opening of a new sqlite store migrates its schema,
    and two processes (the grid's mirror, the live followers of running arms, two grids of one results
    folder) must not migrate it at the same time ("table ... already exists")."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri.removeprefix("sqlite:///") + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _find_parent(client: MlflowClient, exp_id: str, grid: str):
    found = retry(client.search_runs, [exp_id], filter_string=f"tags.role = 'grid' and tags.grid = '{grid}'",
                  run_view_type=ViewType.ACTIVE_ONLY, max_results=1)
    return found[0] if found else None


def _replace_parent(client: MlflowClient, exp_id: str, old, start_ms: int) -> str:
    """A new parent run like `old` that starts at `start_ms`; `old`'s children move to it, `old` is deleted.
    (MLflow cannot move a run's start, and a grid run must start before its children.)"""
    tags = {k: v for k, v in old.data.tags.items() if not k.startswith("mlflow.")}
    new = retry(client.create_run, exp_id, run_name=old.info.run_name, tags=tags, start_time=start_ms)
    kids = retry(client.search_runs, [exp_id], filter_string=f"tags.mlflow.parentRunId = '{old.info.run_id}'",
                 run_view_type=ViewType.ACTIVE_ONLY, max_results=10000)
    for kid in kids:
        retry(client.set_tag, kid.info.run_id, "mlflow.parentRunId", new.info.run_id)
    retry(client.delete_run, old.info.run_id)
    return new.info.run_id


def mirror_parent(grid_dir: str | Path, grid: str, uri: str = "", out: str | Path | None = None,
                  start_ms: int | None = None, running: bool = False) -> dict:
    """Find or create the grid's experiment and parent run; write their ids to `out`. A new parent starts
    at `start_ms` (default now); a found one that starts after `start_ms` is replaced by one that starts
    then (:func:`_replace_parent`). ``running``: the parent is (again) RUNNING, until :func:`finish_parent`;
    else a new parent is FINISHED at once (a bare ``parent`` command)."""
    results = Path(grid_dir).resolve().parent
    uri = uri or default_uri(results)
    with store_lock(uri):
        client = open_client(uri)
        exp_id = ensure_experiment(client, grid, artifact_location(results, grid, uri))
    # A model-development experiment: the UI opens on its runs, not on the GenAI traces view.
    retry(client.set_experiment_tag, exp_id, "mlflow.experimentKind", EXPERIMENT_KIND)
    found = _find_parent(client, exp_id, grid)
    if found is None:
        tags = {"role": "grid", "grid": grid, "grid_dir": str(Path(grid_dir).resolve())}
        run_id = retry(client.create_run, exp_id, run_name=grid, tags=tags, start_time=start_ms).info.run_id
        if not running:
            retry(client.set_terminated, run_id, "FINISHED")
    else:
        run_id = found.info.run_id
        if start_ms is not None and found.info.start_time > start_ms:
            run_id = _replace_parent(client, exp_id, found, start_ms)
        if running:
            retry(client.update_run, run_id, "RUNNING")
    record = {"grid": grid, "tracking_uri": uri, "experiment_id": exp_id, "experiment_name": grid,
              "parent_run_id": run_id, "ui_path": ui_path(exp_id)}
    if out:
        write_json(out, record)
    return record


def finish_parent(client: MlflowClient, exp_id: str, grid: str, status: str = "FINISHED",
                  end_ms: int | None = None) -> str | None:
    """End the grid's parent run (found by its tags, whoever replaced it) at `end_ms` (default now), never
    before the end of its latest child; returns its id (None: no parent)."""
    parent = _find_parent(client, exp_id, grid)
    if parent is None:
        return None
    kids = retry(client.search_runs, [exp_id],
                 filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                 run_view_type=ViewType.ACTIVE_ONLY, max_results=10000)
    ends = [k.info.end_time for k in kids if k.info.end_time]
    end_ms = max([end_ms if end_ms is not None else int(time.time() * 1000), *ends])
    retry(client.set_terminated, parent.info.run_id, status, end_time=end_ms)
    return parent.info.run_id


# ------------------------------------------------------------------------------------ one run dir


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_rows(path: Path) -> list[dict]:
    """metrics.jsonl -> rows; a line that is not a JSON object (a torn write) is skipped with a warning on
    stderr naming the file and the line (its rows are not mirrored)."""
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        row = parse_rows([line])  # each line parsed once: a row, or nothing for a torn line
        rows += row
        if line.strip() and not row:
            print(f"warning: {path} line {n}: not a JSON object (a torn write?); skipped, not mirrored to "
                  f"MLflow: {line[:60]!r}", file=sys.stderr, flush=True)
    return rows


def run_meta(run_dir: Path) -> dict:
    """meta.json, with figure/arm/seed inferred from runs/{figure}/{arm}/seed{seed} where missing."""
    meta = read_json(run_dir / "meta.json")
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


def finite_number(value: Any) -> float | None:
    number = _number(value)
    return number if number is not None and math.isfinite(number) else None


def run_times(rows: list[dict], summary: dict, fallback_end_s: float) -> tuple[int, int, list[int]]:
    """(start, end, one timestamp per row), in ms since the epoch, of a run's training (see the module
    docstring): end = the last row's ``perf/time`` (else `fallback_end_s`), start = end - wall_s."""
    times = [finite_number(r.get("perf/time")) for r in rows]
    known = [t for t in times if t is not None]
    end_s = known[-1] if known else fallback_end_s
    wall_s = finite_number(summary.get("wall_s"))
    if wall_s is None or wall_s < 0:
        wall_s = end_s - known[0] if known else 0.0
    end_ms = int(round(end_s * 1000))
    start_ms = end_ms - int(round(wall_s * 1000))
    n = max(len(rows), 1)
    stamps = [int(round(t * 1000)) if t is not None else start_ms + (end_ms - start_ms) * (i + 1) // n
              for i, t in enumerate(times)]
    return start_ms, end_ms, stamps


def metric_entities(rows: list[dict], summary: dict, stamps_ms: list[int], end_ms: int) -> list[Metric]:
    """Every numeric field of every row at its gradient step and timestamp; the summary's numbers as
    summary/<key> at the last step and the run's end."""
    out = []
    for i, (row, stamp) in enumerate(zip(rows, stamps_ms, strict=True)):
        step = row.get("step", row.get("global_step", i))
        step = int(step) if isinstance(step, int | float) and math.isfinite(step) else i
        for key, value in row.items():
            number = _number(value)
            if key not in INDEX_KEYS and number is not None:
                out.append(Metric(metric_key(key), number, stamp, step))
    last = summary.get("steps_done") if isinstance(summary.get("steps_done"), int) else 0
    for key, value in summary.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.append(Metric(metric_key(f"summary/{key}"), float(value), end_ms, last))
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


def chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _find_children(client: MlflowClient, exp_id: str, meta: dict) -> list:
    where = " and ".join(f"tags.{k} = '{meta[k]}'" for k in ("figure", "arm", "seed"))
    return retry(client.search_runs, [exp_id], filter_string=f"tags.role = 'run' and {where}",
                 run_view_type=ViewType.ACTIVE_ONLY, max_results=100)


def _create_child(client: MlflowClient, uri: str, exp_id: str, run_dir: Path, tags: dict,
                  digest: str) -> tuple[str, int]:
    config, summary = read_json(run_dir / "config.json"), read_json(run_dir / "summary.json")
    rows = read_rows(run_dir / "metrics.jsonl")
    start_ms, end_ms, stamps = run_times(rows, summary, (run_dir / "summary.json").stat().st_mtime)
    name = f"{tags.get('figure')}/{tags.get('arm')}/{tags.get('seed')}"
    run = retry(client.create_run, exp_id, run_name=name, tags={**tags, "run_dir": str(run_dir)},
                start_time=start_ms)
    run_id = run.info.run_id
    params = [Param(k, str(v)) for k, v in flatten(config).items()]
    for chunk in chunks(params, MAX_PARAMS_PER_BATCH):
        retry(client.log_batch, run_id, params=chunk)
    metrics = metric_entities(rows, summary, stamps, end_ms)
    for chunk in chunks(metrics, MAX_METRICS_PER_BATCH):
        retry(client.log_batch, run_id, metrics=chunk)
    for name in ARTIFACTS:
        if (run_dir / name).is_file():
            retry(client.log_artifact, run_id, str(run_dir / name))
    for name, table in sample_tables(run_dir / "samples.jsonl").items():
        retry(client.log_table, run_id, table, f"samples/{name}.json")
    if (run_dir / "policy" / "config.json").is_file():
        retry(client.set_tag, run_id, "model", log_policy(uri, run_id, run_dir / "policy"))
    retry(client.set_tag, run_id, "digest", digest)  # last: marks the mirror complete
    retry(client.set_terminated, run_id, "FINISHED", end_time=end_ms)
    return run_id, len(metrics)


def sample_tables(path: Path) -> dict[str, dict[str, list]]:
    """samples.jsonl (rl_core.samples) as MLflow tables by kind, one row per sample: step, prompt, response,
    reward, and for training samples the largest |log pi_old/mu_old| of the response, its clipped and
    masked fractions and the tokens with their ratios (JSON lists, as in the file)."""
    from rl_core.samples import read  # plain Python, no torch

    tables: dict[str, dict[str, list]] = {}
    for row in read(path):
        kind = row.get("kind", "train")
        flat = {k: row.get(k) for k in ("step", "prompt", "response", "reward")}
        if kind == "train":
            logr, n = row.get("log_ratio") or [], max(len(row.get("tokens") or []), 1)
            flat.update(global_step=row.get("global_step"), advantage=row.get("advantage"),
                        max_abs_log_ratio=max(map(abs, logr), default=0.0),
                        clipped_frac=sum(row.get("clipped") or []) / n,
                        masked_frac=sum(row.get("masked") or []) / n,
                        tokens=json.dumps(row.get("tokens")), log_ratio=json.dumps(logr),
                        is_weight=json.dumps(row.get("is_weight")))
        table = tables.setdefault(kind, {})
        for k, v in flat.items():
            table.setdefault(k, []).append(v)
    return tables


#: What the logged policy needs to load (no inference of requirements: that would import and probe).
POLICY_REQUIREMENTS = ("torch", "transformers", "safetensors", "tokenizers")


def log_policy(uri: str, run_id: str, policy: Path) -> str:
    """Log the exported Hugging Face checkpoint `policy` into run `run_id` as the MLflow model ``policy``
    (transformers flavour, task text-generation, from the folder as it is: nothing downloaded, no
    requirement inference); the run's status and times are the caller's to set afterwards (logging a model
    goes through MLflow's fluent API, which resumes the run). Returns the model's URI, or why it was not
    logged (said on stderr; the rest of the mirror goes on)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import mlflow
        import mlflow.transformers
        import transformers
        from huggingface_hub import ModelCard  # transformers' own dependency

        components = {"model": transformers.AutoModelForCausalLM.from_pretrained(policy),
                      "tokenizer": transformers.AutoTokenizer.from_pretrained(policy)}
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run(run_id=run_id):
            # the card given, so MLflow does not look one up on the Hub for a local folder
            card = ModelCard(f"---\nlicense: other\n---\nThe policy of RL run {policy.parent} (rl_core).")
            info = mlflow.transformers.log_model(components, name="policy", task="text-generation",
                                                 pip_requirements=list(POLICY_REQUIREMENTS), model_card=card)
        return info.model_uri
    except Exception as e:  # noqa: BLE001 - a model that cannot be logged leaves the run's other records
        why = f"not logged ({type(e).__name__}: {str(e)[:200]})"
        print(f"mlflow: {policy}: policy {why}", file=sys.stderr, flush=True)
        return why


def mirror_run(run_dir: str | Path, parent_file: str | Path, uri: str = "",
               out: str | Path | None = None) -> dict:
    """Mirror one finished run dir as a child of the grid's parent run; write the ids to `out`."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "summary.json").is_file():
        raise FileNotFoundError(f"{run_dir}: no summary.json (the run has not finished)")
    parent = json.loads(Path(parent_file).read_text())
    uri = uri or parent["tracking_uri"]
    client = open_client(uri)
    exp_id = parent["experiment_id"]
    meta, summary = run_meta(run_dir), read_json(run_dir / "summary.json")
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
        run_id, n_metrics = _create_child(client, uri, exp_id, run_dir, tags, digest)
        action = "mirrored"
    record = {"run_id": run_id, "experiment_id": exp_id, "parent_run_id": parent["parent_run_id"],
              "tracking_uri": uri, "digest": digest, "action": action, "n_metrics": n_metrics}
    if out:
        write_json(out, record)
    return record


# ------------------------------------------------------------------------------------ command line


def _span(run_dirs: list[str | Path]) -> tuple[int | None, int | None]:
    """(earliest start, latest end) in ms of the finished runs among `run_dirs` (None when there are none)."""
    spans = []
    for d in map(Path, run_dirs):
        if (d / "summary.json").is_file():
            start, end, _ = run_times(read_rows(d / "metrics.jsonl"), read_json(d / "summary.json"),
                                      (d / "summary.json").stat().st_mtime)
            spans.append((start, end))
    return (min(s for s, _ in spans), max(e for _, e in spans)) if spans else (None, None)


def mirror_grid(grid_dir: str | Path, grid: str, run_dirs: list[str | Path], uri: str = "") -> dict:
    """The parent and every run of a grid in one process; returns counts and seconds per part.
    A new parent starts with the grid's earliest run; the parent ends with its latest."""
    t0 = time.perf_counter()
    parent_file = Path(grid_dir) / "mlflow_parent.json"
    start_ms, end_ms = _span(run_dirs)
    parent = mirror_parent(grid_dir, grid, uri, parent_file, start_ms, running=True)
    t1 = time.perf_counter()
    actions = [mirror_run(d, parent_file, uri, Path(d) / "mlflow_run.json")["action"] for d in run_dirs]
    client = open_client(parent["tracking_uri"])
    finish_parent(client, parent["experiment_id"], grid, "FINISHED", end_ms)
    return {"runs": len(run_dirs), "mirrored": actions.count("mirrored"),
            "unchanged": actions.count("unchanged"), "parent_s": t1 - t0, "runs_s": time.perf_counter() - t1}


def log_report(parent_file: str | Path, report_dir: str | Path, uri: str = "") -> dict:
    """Log a grid's report (REPORT_FILES and the figures fig_*.png of `report_dir`) into its parent run,
    under ``report/``; returns the parent run id and the files logged."""
    parent = json.loads(Path(parent_file).read_text())
    client = open_client(uri or parent["tracking_uri"])
    report_dir = Path(report_dir)
    files = [report_dir / n for n in REPORT_FILES if (report_dir / n).is_file()]
    files += sorted(report_dir.glob("fig_*.png"))
    for path in files:
        retry(client.log_artifact, parent["parent_run_id"], str(path), "report")
    return {"parent_run_id": parent["parent_run_id"], "logged": [p.name for p in files]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rl_core.orchestration.tracking",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grid", help="the parent and every given run directory, in one process")
    g.add_argument("--grid-dir", required=True, help="results/{grid}")
    g.add_argument("--grid", required=True, help="grid name (the experiment's name)")
    g.add_argument("--uri", default="", help="tracking URI (default: sqlite store under the results)")
    g.add_argument("run_dirs", nargs="*", help="finished run directories")
    p = sub.add_parser("parent", help="create (or find) the grid's experiment and parent run")
    p.add_argument("--grid-dir", required=True, help="results/{grid}")
    p.add_argument("--grid", required=True, help="grid name (the experiment's name)")
    rep = sub.add_parser("report", help="log a grid's report into its parent run")
    rep.add_argument("--parent-file", required=True, help="the JSON that `parent` (or `grid`) wrote")
    rep.add_argument("--report-dir", required=True, help="analysis.report's output folder")
    rep.add_argument("--uri", default="", help="tracking URI (default: the parent file's)")
    r = sub.add_parser("run", help="mirror one finished run directory as a child run")
    r.add_argument("--run-dir", required=True)
    r.add_argument("--parent-file", required=True, help="the JSON that `parent` wrote")
    for s in (p, r):
        s.add_argument("--uri", default="", help="tracking URI (default: sqlite store under the results)")
        s.add_argument("--out", required=True, help="JSON file to write the ids to")
    args = parser.parse_args(argv)
    for name in ("grid_dir", "run_dir"):
        if getattr(args, name, None) is not None and not Path(getattr(args, name)).is_dir():
            raise UsageError(f"--{name.replace('_', '-')}: no such directory {getattr(args, name)}")
    for name in ("parent_file",):
        if getattr(args, name, None) is not None and not Path(getattr(args, name)).is_file():
            raise UsageError(f"--{name.replace('_', '-')}: no such file {getattr(args, name)}")
    if args.command == "grid":
        record = mirror_grid(args.grid_dir, args.grid, args.run_dirs, args.uri)
    elif args.command == "report":
        record = log_report(args.parent_file, args.report_dir, args.uri)
    elif args.command == "parent":
        record = mirror_parent(args.grid_dir, args.grid, args.uri, args.out)
    else:
        record = mirror_run(args.run_dir, args.parent_file, args.uri, args.out)
    print(json.dumps(record, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(guard(main, errors=(json.JSONDecodeError, KeyError)))
