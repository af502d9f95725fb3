"""The sweep's Optuna study, read offline, and hyperparameter importance from it.

`load_study(path)` finds the persisted study (the `optuna_journal.log` in the sweep folder, or the
`optuna_storage` the sweep recorded) and returns an in-memory copy, so the live journal is never
locked or written and remote sweep folders work too.

`param_importances(...)` runs `optuna.importance.get_param_importances` (PED-ANOVA, Optuna's
default; fANOVA needs scikit-learn) on an *analysis study*: one COMPLETE trial per completed,
early-stopped or ASHA-stopped trial, with the parameter distributions of the persisted study.
Its value is the trial's best `metric` for a trial that finished, and its last reported value (the
last intermediate value Optuna was told) for a trial ASHA (or the sweep's budget) stopped, so pruned trials count with what
they had shown when they were cut. Diverged, errored and running trials are left out. Values come
from the trials' result.json, so any reported metric works, not only the study's objective.

`complete_importances(...)` runs the same evaluator over the COMPLETE trials of the analysis study only
(completed and early-stopped ones), as `optuna.importance.get_param_importances` counts the persisted study,
whose pruned trials it leaves out. The report shows both side by side, so the two rankings differ by the trial
set alone.

A sweep over methods (the `methods` space) is a conditional space: each method has its own knobs, which only
its trials have. Ranking those against the knobs every trial has compares a parameter seen in 3 trials with one
seen in 12, so the ranking is split: `param_importances` ranks the method and the knobs every trial has, over
all scored trials; `method_importances` ranks each method's knobs within that method's trials (one analysis
study per method). A sweep that did not search `method` ranks every parameter at once, as Optuna does
(PED-ANOVA ranks a conditional parameter over the trials that have it).

`dashboard_importances(study)` is optuna-dashboard's own computation on the persisted study (PED-ANOVA at
its default top 10%, COMPLETE trials, every parameter at once): it cannot split by method, so the report
shows it on its own line and says how it differs.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from selftune.analysis.tables import DEFAULT_METRIC, Sweep, load_sweep
from selftune.errors import SelftuneError
from selftune.sweepfolder import (
    CUT,
    FINISHED,
    JOURNAL_FILE,
    as_uri,
    filesystem,
    read_sweep_meta,
)
from selftune.sweepfolder.journal import repair_journal

MIN_TRIALS_FOR_IMPORTANCE = 4  # scored trials; PED-ANOVA compares the top ones against all
MIN_COMPLETE_FOR_IMPORTANCE = 2  # COMPLETE trials: where optuna-dashboard starts showing importances
SCORED = (*FINISHED, *CUT)  # CUT ones are judged by their last value, as Optuna saw them (PRUNED)
COMPLETE = FINISHED  # told to Optuna as COMPLETE, with their best value
SELFTUNE_COLUMN = "over completed + pruned trials (selftune)"
COMPLETE_COLUMN = "over COMPLETE trials only (as optuna.importance counts)"
METHOD = "method"  # the parameter that picks the method (the `methods` space); its other knobs depend on it
DASHBOARD_QUANTILE = 0.1  # PedAnovaImportanceEvaluator's default, which optuna-dashboard uses


def _study_from_storage(storage: Any, name: str) -> Any:
    import optuna

    names = optuna.get_all_study_names(storage)
    if name not in names:
        if len(names) != 1:
            raise SelftuneError(f"no Optuna study named {name!r} in the storage (it holds: {', '.join(names) or 'none'})")
        name = names[0]
    memory = optuna.storages.InMemoryStorage()
    optuna.copy_study(from_study_name=name, from_storage=storage, to_storage=memory)
    return optuna.load_study(study_name=name, storage=memory)


def _journal_study(fs: Any, journal: str, name: str) -> Any:
    """Copy the journal to a temporary file first: it may be remote, read-only, or still being written."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    with tempfile.TemporaryDirectory(prefix="selftune-journal-") as tmp:
        local = os.path.join(tmp, JOURNAL_FILE)
        with fs.open_input_stream(journal) as src, open(local, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        repair_journal(local, backup=False)  # a torn last line: read what is complete (warns)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # JournalStorage is "experimental" in some versions
            return _study_from_storage(optuna.storages.JournalStorage(JournalFileBackend(local)), name)


def load_study(path: str, meta: dict[str, Any] | None = None) -> Any:
    """The sweep's Optuna study (an in-memory copy). Raises SelftuneError naming where it looked."""
    import optuna


    path = str(path)
    meta = meta if meta is not None else read_sweep_meta(path)
    name = str(meta.get("sweep", {}).get("name") or path.rstrip("/").rsplit("/", 1)[-1])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fs, root = filesystem(path)
    journal = root.rstrip("/") + "/" + JOURNAL_FILE
    looked = [as_uri(path, journal)]
    from pyarrow.fs import FileType

    if fs.get_file_info(journal).type == FileType.File:
        return _journal_study(fs, journal, name)
    recorded = str(meta.get("optuna_storage") or "")
    if recorded.startswith("journal:"):
        local = recorded.removeprefix("journal:")
        looked.append(local)
        if os.path.isfile(local):
            from pyarrow.fs import LocalFileSystem

            return _journal_study(LocalFileSystem(), local, name)
    elif recorded:
        looked.append(recorded)
        try:
            return _study_from_storage(optuna.storages.RDBStorage(recorded, skip_compatibility_check=True), name)
        except SelftuneError:
            raise
        except Exception as exc:  # no driver, no network, no database: say so
            raise SelftuneError(f"cannot open the sweep's Optuna storage {recorded}: {exc}") from None
    raise SelftuneError(f"no Optuna study found for {path} (looked at: {', '.join(looked)})")


# ---------------------------------------------------------------------- the analysis study


@dataclass
class Importance:
    """Parameter importances (sum 1), or why there are none."""

    values: dict[str, float] = field(default_factory=dict)  # param name -> importance, largest first
    n_trials: int = 0
    evaluator: str = ""
    note: str = ""  # why importances are missing or rough
    quantile: float = 0.1  # PED-ANOVA's target quantile used
    scope: str = "all trials"  # which trials it ranks over: all of them, or one method's ("method=rounds")

    @property
    def ok(self) -> bool:
        return bool(self.values)

    def ranked(self) -> list[str]:
        return list(self.values)


def param_distributions(study: Any | None, trials: pd.DataFrame) -> dict[str, Any]:
    """Each parameter's Optuna distribution: from the persisted study, else inferred from the values seen."""
    import optuna.distributions as od

    dists: dict[str, Any] = {}
    if study is not None:
        for t in study.get_trials(deepcopy=False):
            for k, d in t.distributions.items():
                dists.setdefault(k, d)
    for col in [c for c in trials.columns if c.startswith("param.")]:
        name = col.removeprefix("param.")
        if name in dists:
            continue
        values = [v for v in trials[col].tolist() if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if not values:
            continue
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            lo, hi = float(min(values)), float(max(values))
            if all(float(v).is_integer() for v in values) and len(set(values)) > 2:
                dists[name] = od.IntDistribution(int(lo), int(hi))
            elif len(set(values)) <= 3:
                dists[name] = od.CategoricalDistribution(sorted(set(values)))
            else:
                dists[name] = od.FloatDistribution(lo, hi, log=lo > 0 and hi / lo >= 100)
        else:
            dists[name] = od.CategoricalDistribution(sorted({json.dumps(v) if not isinstance(v, str) else v for v in values}))
    return dists


def trial_values(sweep: Sweep) -> pd.Series:
    """The value each scored trial is judged by: best `metric` if it finished, last one if ASHA cut it."""
    t = sweep.trials
    key_best, key_final = f"best.{sweep.metric}", f"final.{sweep.metric}"
    final = t[key_final] if key_final in t else pd.Series(float("nan"), index=t.index)
    values = t[key_best].where(~t["status"].isin(CUT), final)
    return values.where(t["status"].isin(SCORED))


def analysis_study(sweep: Sweep, study: Any | None) -> Any | None:
    """An in-memory study of COMPLETE trials (see the module doc), or None without a scored trial."""
    import optuna

    dists = param_distributions(study, sweep.trials)
    values = trial_values(sweep)
    direction = "maximize" if sweep.mode == "max" else "minimize"
    out = optuna.create_study(direction=direction, study_name=f"{sweep.name}:{sweep.metric}")
    frozen = []
    for i, row in sweep.trials.iterrows():
        value = values.loc[i]
        if pd.isna(value) or not math.isfinite(float(value)):
            continue
        params, pdists = {}, {}
        for name, dist in dists.items():
            v = row.get(f"param.{name}")
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            if isinstance(dist, optuna.distributions.CategoricalDistribution) and v not in dist.choices:
                continue
            if isinstance(dist, optuna.distributions.IntDistribution):
                v = int(v)
            if not dist._contains(dist.to_internal_repr(v)):
                continue  # outside the persisted range (a space edited between runs): leave it out
            params[name], pdists[name] = v, dist
        frozen.append(optuna.trial.create_trial(
            params=params, distributions=pdists, value=float(value),
            user_attrs={"trial_id": row["trial_id"], "status": row["status"]},
        ))
    if not frozen:
        return None
    out.add_trials(frozen)
    return out


def _quantile(n: int) -> float:
    """PED-ANOVA compares the top `target_quantile` of trials with all of them; Optuna advises at least 5 trials
    in the top group, so small sweeps use a larger quantile (at most the top half)."""
    return min(0.5, max(0.1, 5 / n))


def shared_params(study: Any) -> list[str] | None:
    """The parameters to rank over all of `study`'s trials: for a sweep over methods, the method and the knobs
    every trial has (in first-seen order); None (every parameter) for a sweep that did not search `method`."""
    trials = study.trials
    if not trials or not any(METHOD in t.params for t in trials):
        return None
    return [k for k in trials[0].distributions if all(k in t.params for t in trials)]


def _evaluate(study: Any, quantile: float, what: str, params: list[str] | None = None,
              scope: str = "all trials") -> Importance:
    """PED-ANOVA importances of `params` (None: all) over `study`'s COMPLETE trials at `quantile`; `what` names
    those trials in notes."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator

    n = len(study.trials)
    dists = {k: d for t in study.trials for k, d in t.distributions.items() if params is None or k in params}
    varied = [k for k, d in dists.items() if not d.single()]
    if not varied:
        return Importance(n_trials=n, note="no parameter was searched (every distribution is a single value)",
                          quantile=quantile, scope=scope)
    evaluator = PedAnovaImportanceEvaluator(target_quantile=quantile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            values = optuna.importance.get_param_importances(study, evaluator=evaluator, params=params)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            return Importance(n_trials=n, note=f"Optuna could not compute importances: {exc}", quantile=quantile,
                              scope=scope)
    if not values or not any(v > 0 for v in values.values()):
        return Importance(n_trials=n, note=(
            f"PED-ANOVA found no parameter that separates the top {quantile:.0%} of the {n} {what} from the rest"
        ), quantile=quantile, scope=scope)
    note = f"rough: only {n} {what}" if n < 20 else ""
    return Importance({k: float(v) for k, v in values.items()}, n, f"PED-ANOVA (top {quantile:.0%} of {n} {what})",
                      note, quantile, scope)


def param_importances(sweep: Sweep | str | os.PathLike[str], study: Any | None = None, *,
                      metric: str = DEFAULT_METRIC, mode: str | None = None) -> tuple[Importance, Any | None]:
    """PED-ANOVA importances over the analysis study (returned too, for the plots).

    `sweep` is a loaded `Sweep`, or a sweep folder's path, as its siblings take (then `metric` and `mode` pick
    what to rank by, and the persisted study is loaded unless `study` is given; without one, ranges are
    inferred from the trials)."""
    if not isinstance(sweep, Sweep):
        path = os.fspath(sweep)
        sweep = load_sweep(path, metric, mode)
        if study is None:
            try:
                study = load_study(path, sweep.meta)
            except SelftuneError:
                study = None
    astudy = analysis_study(sweep, study)
    n = len(astudy.trials) if astudy is not None else 0
    if n < MIN_TRIALS_FOR_IMPORTANCE:
        return Importance(n_trials=n, note=(
            f"importance needs at least {MIN_TRIALS_FOR_IMPORTANCE} completed or ASHA-stopped trials with a "
            f"{sweep.metric} value; this sweep has {n}"
        )), astudy
    params = shared_params(astudy)
    imp = _evaluate(astudy, _quantile(n), "trials", params)
    if params is not None and imp.ok:
        imp.evaluator = imp.evaluator.removesuffix(")") + "; the method and the knobs every trial has)"
    return imp, astudy


def method_importances(astudy: Any | None) -> dict[str, Importance]:
    """Per method (a sweep over methods): its knobs ranked within its own trials, one analysis study per method,
    the same evaluator as `param_importances`. Empty for a sweep that did not search `method`. The knobs every
    method has (lr, warmup) are ranked too, as a yardstick: a method's own knob below them matters less."""
    import optuna

    if astudy is None or shared_params(astudy) is None:
        return {}
    groups: dict[str, list[Any]] = {}
    for t in astudy.trials:
        groups.setdefault(str(t.params.get(METHOD)), []).append(t)
    out: dict[str, Importance] = {}
    for method, trials in groups.items():
        scope = f"{METHOD}={method}"
        n = len(trials)
        if n < MIN_TRIALS_FOR_IMPORTANCE:
            out[method] = Importance(n_trials=n, scope=scope, note=(
                f"needs at least {MIN_TRIALS_FOR_IMPORTANCE} scored {method} trials; this sweep has {n}"))
            continue
        sub = optuna.create_study(direction=astudy.direction, study_name=f"{astudy.study_name}:{scope}")
        sub.add_trials(trials)
        params = [k for k in dict.fromkeys(k for t in trials for k in t.params) if k != METHOD]
        out[method] = _evaluate(sub, _quantile(n), f"{method} trials", params, scope)
    return out


def dashboard_importances(study: Any | None) -> Importance:
    """What optuna-dashboard shows for the persisted study: PED-ANOVA at its default top 10% over the study's
    COMPLETE trials (the best value each was told with), every parameter at once, conditional ones over the trials
    that have them (optuna_dashboard/_importance.py)."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator

    if study is None:
        return Importance(note="no persisted Optuna study", quantile=DASHBOARD_QUANTILE, scope="optuna-dashboard")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    n = len(complete)
    if n <= 1:
        return Importance(n_trials=n, quantile=DASHBOARD_QUANTILE, scope="optuna-dashboard",
                          note=f"optuna-dashboard needs 2 COMPLETE trials; the study has {n}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            values = optuna.importance.get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            return Importance(n_trials=n, quantile=DASHBOARD_QUANTILE, scope="optuna-dashboard",
                              note=f"Optuna could not compute importances: {exc}")
    return Importance({k: float(v) for k, v in values.items()}, n,
                      f"PED-ANOVA (top 10% of {n} COMPLETE trials of the persisted study, every parameter)",
                      quantile=DASHBOARD_QUANTILE, scope="optuna-dashboard")


def complete_study(astudy: Any | None) -> Any | None:
    """The analysis study's COMPLETE trials only (completed, stopped by patience), as Optuna itself counts."""
    import optuna

    if astudy is None:
        return None
    out = optuna.create_study(direction=astudy.direction, study_name=f"{astudy.study_name}:complete")
    out.add_trials([t for t in astudy.trials if t.user_attrs.get("status") in COMPLETE])
    return out


def complete_importances(astudy: Any | None, quantile: float) -> Importance:
    """The same evaluator (PED-ANOVA at `quantile`) and parameters as `param_importances`, over the COMPLETE
    trials only: what `optuna.importance.get_param_importances` computes on the persisted study at that quantile,
    pruned trials left out."""
    cstudy = complete_study(astudy)
    n = len(cstudy.trials) if cstudy is not None else 0
    if n < MIN_COMPLETE_FOR_IMPORTANCE:
        return Importance(n_trials=n, quantile=quantile, note=(
            f"needs at least {MIN_COMPLETE_FOR_IMPORTANCE} COMPLETE trials; this sweep has {n}"))
    params = shared_params(astudy)
    if params is not None:
        params = [p for p in params if any(p in t.params for t in cstudy.trials)]
    return _evaluate(cstudy, quantile, "COMPLETE trials", params)


def importance_table(selftune: Importance, complete: Importance) -> pd.DataFrame:
    """Both importances side by side (value and rank), in selftune's order, then any parameter only the other has."""
    params = list(selftune.values) + [p for p in complete.values if p not in selftune.values]

    def cell(imp: Importance, p: str) -> str:
        if p not in imp.values:
            return "-"
        return f"{imp.values[p]:.3f} (#{list(imp.values).index(p) + 1})"

    return pd.DataFrame({"parameter": params, SELFTUNE_COLUMN: [cell(selftune, p) for p in params],
                         COMPLETE_COLUMN: [cell(complete, p) for p in params]})


def method_importance_table(by_method: dict[str, Importance], top: int = 8) -> pd.DataFrame:
    """One row per method: its scored trials and its knobs ranked within them (or why they are not)."""
    rows = []
    for method, imp in by_method.items():
        ranking = ", ".join(f"{k} {v:.3f}" for k, v in list(imp.values.items())[:top]) if imp.ok else imp.note
        rows.append({"method": method, "scored trials": imp.n_trials,
                     "evaluator": imp.evaluator or "-", "knobs ranked within its trials": ranking})
    return pd.DataFrame(rows)


def why_they_differ(sweep: Sweep) -> str:
    """One line: the two importance columns differ only in the trials they count."""
    t = sweep.trials
    values = trial_values(sweep)
    scored = values.notna() & values.map(lambda v: math.isfinite(float(v)) if pd.notna(v) else False)
    n_cut = int((scored & t["status"].isin(CUT)).sum())
    n_complete = int((scored & t["status"].isin(COMPLETE)).sum())
    return (f"Same evaluator, different trials: selftune also counts the {n_cut} trial(s) ASHA or the sweep's budget "
            f"stopped (PRUNED in Optuna), each at its last reported value, so it ranks {n_cut + n_complete} trials; "
            f"Optuna's get_param_importances and optuna-dashboard count only the {n_complete} COMPLETE ones "
            "(completed or stopped by patience), and drop what the pruned trials showed. (optuna-dashboard also "
            "uses PED-ANOVA's default top 10%, so on a small sweep its numbers differ a little more.)")


def optuna_states(sweep: Sweep, study: Any | None) -> pd.Series:
    """The state the persisted study holds for each trial (matched by params), for a cross-check column."""
    out: list[str | None] = []
    ot_trials = study.get_trials(deepcopy=False) if study is not None else []
    params_of = {r.trial_id: r.params for r in sweep.records}
    for tid in sweep.trials["trial_id"]:
        params = params_of.get(tid, {})
        match = next((ot for ot in ot_trials if ot.params and all(params.get(k) == v for k, v in ot.params.items())), None)
        out.append(match.state.name if match is not None else None)
    return pd.Series(out, index=sweep.trials.index, dtype=object)
