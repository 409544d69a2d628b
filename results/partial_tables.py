"""Tables of an ``experiments.compare`` command from the runs already in its folder.

``python results/partial_tables.py <the arguments of python -m experiments.compare>``
writes ``accuracy.md``/``.csv``, ``convergence.md``/``.csv``, ``tuning.md``/``.csv``
and the figures into the command's folder exactly as the command would, but **trains
nothing**: it reads the runs that exist in ``<out>/compare/runs/`` and

- tunes each (data set, model, method) over the grid points whose tuning runs exist
  (all of the command's grid for the groups that were tuned in full; one point for a
  group re-run at a fixed learning rate: then its tuning table has that point alone);
- leaves out a group whose runs do not all exist (printed as "not re-run"), and a final
  seed that is missing (printed);
- keeps the groups that do not apply (kickback on ten classes) as ``n/a`` rows.

Made for the re-runs of 2026-12-07 (results/README.md, sections 6 and 7), when the
run folders of the methods whose defaults had changed were deleted (their configs hash
as before, so the command would have read them as cached) and a 2-core machine shared
by six people could not re-run every group with the full grid before the deadline.
With every run present, its tables equal the command's own.

Example:
    python results/partial_tables.py --models cnn,resnet,transformer,gru \\
        --datasets digits --epochs 20 \\
        --tune-grid '{"learning_rate": [3e-4, 1e-3, 3e-3]}' --out results/zoo
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import compare  # noqa: E402
from experiments.runner import cli, configs, folders, sweep, tables as tables_lib  # noqa: E402
from experiments.runner import training, tuning  # noqa: E402
from credit import results  # noqa: E402


def main(argv=None):
    """Write the tables; returns 0."""
    p = compare.parser()
    args = p.parse_args(argv)
    plan = compare.plan_from_args(args, p)
    if not plan.grids:
        p.error("this script reads tuned sweeps: pass --tune or --tune-grid")
    folder = cli.check_out(p, args.out) / ("compare_quick" if args.quick else "compare")
    runs_folder = folder / "runs"

    def done(config):
        return folders.is_done(runs_folder / configs.run_id(config))

    base, not_applicable = {}, []
    for config in plan.configs:
        base.setdefault(compare._group(config), config)
    candidates, missing = {}, []
    for group, config in base.items():
        points = []
        for point_config in tuning.expand(config, tuning.grid_for(plan.grids,
                                                                  config["method"])):
            ids = [configs.run_id({**point_config, "seed": s}) for s in plan.tune_seeds]
            if all(folders.is_done(runs_folder / i) for i in ids):
                points.append((tuning.point_of(point_config, plan.tuned_keys()), ids))
        if points:
            candidates[group] = points
        elif training.applicability(configs.complete(config)) is not None:
            not_applicable.append(group)
        else:
            missing.append(group)
    ran = {i for points in candidates.values() for _, ids in points for i in ids}
    runs = results.run_table(compare._load(runs_folder, ran))
    task = {d: ("classification" if m == "accuracy" else "regression")
            for d, m in zip(runs["dataset"], runs["metric"])}
    chosen, table = tuning.choose(candidates, runs,
                                  lambda g: task.get(g[0], "classification"))
    table.insert(0, "method", [g[2] for g in table["group"]])
    table.insert(1, "dataset", [g[0] for g in table["group"]])
    table.insert(2, "model", [g[1] for g in table["group"]])
    table = table.drop(columns=["group"])

    final, absent = [], []
    for config in plan.configs:
        group = compare._group(config)
        if group in not_applicable:
            final.append(config)
        elif group in chosen:
            for key, value in chosen[group].items():
                config = tuning.set_key(config, key, value)
            (final if done(config) else absent).append(config)
    run_results = sweep.run_sweep(final, runs_folder, flags=compare.FLAGS, verbose=0)
    assert not any(not r.cached and r.status == folders.STATUS_DONE for r in run_results)
    accuracy_md, _, _ = compare.tables(run_results, folder, plan.tuned_keys(), table)
    print(accuracy_md)
    for group in missing:
        print(f"not re-run: {group[2]} on {group[0]} ({tables_lib.short_model(group[1])})")
    for config in absent:
        model = tables_lib.short_model(tables_lib.model_key(config["model"]))
        print(f"missing seed: {config['method']} on {config['dataset']} ({model}) seed "
              f"{config['seed']} lr {config['learning_rate']} ({configs.run_id(config)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
