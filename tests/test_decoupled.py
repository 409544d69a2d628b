"""The decoupled runner (experiments.decoupled): stages in lock-step equal credit's
in-process step; the simulator against hand-computed schedules; errors.

Speed is measured by ``python -m experiments.decoupled``, never asserted here.
"""

import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments.decoupled import (Workers, build_mlp, method_config, partition,  # noqa: E402
                                   run_decoupled, simulate, split_model)
from experiments.decoupled import cli, reference  # noqa: E402
from experiments.decoupled.schedules import batches, sequential_step  # noqa: E402
from experiments.decoupled.split import check_schedule  # noqa: E402
from experiments.decoupled.stage import Stage  # noqa: E402

SGD = {"class_name": "SGD", "config": {"learning_rate": 0.1}}
BATCH, EPOCHS = 16, 2


def spec(batch_norm=True, depth=3):
    return {"width": 24, "depth": depth, "input_dim": 12, "classes": 4, "seed": 3,
            "batch_norm": batch_norm}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 12)).astype("float32")
    y = (x[:, :4].argmax(axis=1)).astype("int64")
    return x, y


_REFERENCES = {}


def in_process(model_spec, schedule, stages, x, y):
    """credit.compute_gradients on the unsplit model, same method, seed and batches
    (computed once per case: several tests compare with it)."""
    key = (tuple(sorted(model_spec.items())), schedule, stages)
    if key not in _REFERENCES:
        model = build_mlp(**model_spec)
        method = method_config(schedule, split_model(model, stages), seed=0)
        reference.train_in_process(model, method, x, y, batch_size=BATCH, epochs=EPOCHS,
                                   seed=0, optimizer=SGD)
        _REFERENCES[key] = model.get_weights()
    return _REFERENCES[key]


def assert_same(weights, expected, initial):
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(expected, initial))
    assert moved > 1e-3  # training did happen
    for a, b in zip(weights, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------
# Lock-step stages equal the in-process method


@pytest.mark.parametrize("stages,schedules", [
    (2, ["locked", "gpipe", "dfa", "dni"]),
    (3, ["dfa", "dni"]),  # a middle stage receives and sends both ways
])
def test_lock_step_stages_reach_the_in_process_weights(data, stages, schedules):
    x, y = data
    with Workers(stages, backend="thread") as workers:
        for schedule in schedules:
            # GPipe's micro-batches see their own batch statistics: no batch norm there.
            model_spec = spec(batch_norm=schedule != "gpipe")
            result = run_decoupled(workers, model_spec, x, y, schedule=schedule,
                                   batch_size=BATCH, epochs=EPOCHS, seed=0, window=1,
                                   micro_batches=4, optimizer=SGD)
            expected = in_process(model_spec, schedule, stages, x, y)
            assert_same(result.weights, expected, build_mlp(**model_spec).get_weights())
            assert len(result.epoch_seconds) == EPOCHS and all(
                s > 0 for s in result.epoch_seconds)


def test_single_thread_driver_equals_the_in_process_method(data):
    x, y = data
    model_spec = spec()
    for schedule in ("dfa", "dni"):
        model = build_mlp(**model_spec)
        split = split_model(model, 3)
        method = reference.resolve_method(method_config(schedule, split, seed=0), model)
        method = None if method.exact else method
        stages = [Stage(model, split, k, schedule, method=method, optimizer=SGD,
                        loss=reference.loss_object()) for k in range(3)]
        for epoch in range(EPOCHS):
            for index in batches(len(x), BATCH, 0, epoch):
                sequential_step(stages, schedule, x[index], y[index])
        assert_same(model.get_weights(), in_process(model_spec, schedule, 3, x, y),
                    build_mlp(**model_spec).get_weights())
        assert set(stages[0].timings) >= {"forward", "apply"}


@pytest.mark.slow  # two TensorFlow processes start: 15 to 35 s on 2 cores
def test_processes_with_one_thread_each_reach_the_in_process_weights(data):
    x, y = data
    model_spec = spec()
    with Workers(2, threads=1) as workers:
        info = workers.info()
        assert [i["threads"] for i in info] == [(1, 1), (1, 1)]
        assert len({i["pid"] for i in info} | {os.getpid()}) == 3
        for schedule in ("locked", "dni"):
            result = run_decoupled(workers, model_spec, x, y, schedule=schedule,
                                   batch_size=BATCH, epochs=EPOCHS, seed=0, window=1,
                                   optimizer=SGD)
            expected = in_process(model_spec, schedule, 2, x, y)
            assert_same(result.weights, expected, build_mlp(**model_spec).get_weights())


def test_decoupled_windows_run_ahead_and_still_train(data):
    x, y = data
    with Workers(3, backend="thread") as workers:
        for schedule in ("dfa", "dni"):
            result = run_decoupled(workers, spec(), x, y, schedule=schedule,
                                   batch_size=BATCH, epochs=3, seed=0, window=3,
                                   optimizer=SGD)
            assert all(np.isfinite(result.train_loss))
            assert result.train_loss[-1] < result.train_loss[0]


# --------------------------------------------------------------------------------------
# The simulator against hand-computed schedules


def test_locked_backprop_takes_the_sum_of_all_stage_times():
    times = [{"forward": 0.3, "backward": 0.5, "update": 0.0},
             {"forward": 0.2, "backward": 0.7, "update": 0.0},
             {"forward": 0.1, "backward": 0.1, "update": 0.0}]
    sim = simulate("locked", times, steps=4)
    assert sim.seconds == pytest.approx(4 * (0.3 + 0.5 + 0.2 + 0.7 + 0.1 + 0.1))
    # With messages: each crossing of a boundary, up and down, adds its transfer time.
    sim = simulate("locked", times, transfer={"activation": 0.01, "gradient": 0.02},
                   steps=4)
    assert sim.seconds == pytest.approx(4 * (1.9 + 2 * (0.01 + 0.02)))


@pytest.mark.parametrize("stages,micro", list(itertools.product([2, 3, 4, 8], [1, 4, 8])))
def test_gpipe_matches_the_bubble_formula(stages, micro):
    f, b = 0.25, 0.5
    times = [{"forward": f, "backward": b, "update": 0.0}] * stages
    sim = simulate("gpipe", times, steps=3, micro_batches=micro)
    assert sim.seconds == pytest.approx(3 * (micro + stages - 1) * (f + b))
    assert sim.idle == pytest.approx((stages - 1) / (micro + stages - 1))


def test_lock_step_dfa_waits_for_every_forward_then_updates_in_parallel():
    f, d, t_a, t_e = 0.4, 0.3, 0.01, 0.002
    for stages in (2, 4):
        times = [{"forward": f, "update": d}] * stages
        sim = simulate("dfa", times, transfer={"activation": t_a, "error": t_e}, steps=5,
                       window=1)
        assert sim.seconds == pytest.approx(5 * (stages * f + (stages - 1) * t_a + t_e + d))


def test_decoupled_schedules_approach_the_slowest_stage():
    steps = 40
    dfa = [{"forward": 1.0, "update": 1.0}] * 4
    dni = [{"forward": 1.0, "backward": 1.5, "update": 0.25, "synth": 0.25}] * 4
    for schedule, times, per_step in (("dfa", dfa, 2.0), ("dni", dni, 3.0)):
        sim = simulate(schedule, times, steps=steps, window=4)
        assert steps * per_step <= sim.seconds <= steps * per_step + 4 * per_step
        locked = simulate(schedule, times, steps=steps, window=1)
        assert locked.seconds >= sim.seconds


def test_piece_times_sum_a_schedules_pieces():
    from experiments.decoupled import piece_times

    timings = [{"forward": [0.3, 0.1, 0.2], "synthesize": [0.05], "backward": [0.4],
                "apply": [0.1], "synth_train": [0.2, 0.3]}]
    (dni,) = piece_times(timings, "dni")
    assert dni == pytest.approx({"forward": 0.2, "backward": 0.45, "update": 0.1,
                                 "synth": 0.25})
    assert piece_times(timings, "dni", statistic="min")[0]["forward"] == pytest.approx(0.1)
    # GPipe accumulates M - 1 times per batch: spread over its M backward passes.
    (gpipe,) = piece_times([{"forward": [1.0], "backward": [2.0], "accumulate": [0.4],
                             "apply": [3.0]}], "gpipe", micro_batches=4)
    assert gpipe == pytest.approx({"forward": 1.0, "backward": 2.3, "update": 3.0})
    with pytest.raises(ValueError, match="statistic='mean'"):
        piece_times(timings, "dni", statistic="mean")


def test_simulator_errors_name_the_argument():
    times = [{"forward": 1.0, "backward": 1.0, "update": 0.0}] * 2
    with pytest.raises(ValueError, match=r"schedule='pipedream'.*'locked', 'gpipe', 'dfa', 'dni'"):
        simulate("pipedream", times)
    with pytest.raises(ValueError, match=r"times\[0\] lacks \['synth'\]"):
        simulate("dni", times)
    with pytest.raises(ValueError, match="window=0"):
        simulate("dfa", [{"forward": 1.0, "update": 1.0}], window=0)
    with pytest.raises(ValueError, match="unknown message kinds"):
        simulate("locked", times, transfer={"activations": 1.0})


# --------------------------------------------------------------------------------------
# Splits and errors


def test_partition_minimises_the_slowest_stage():
    rng = np.random.default_rng(1)
    for _ in range(20):
        costs = rng.uniform(0.1, 1.0, size=int(rng.integers(2, 8))).tolist()
        k = int(rng.integers(1, len(costs) + 1))
        ranges = partition(costs, k)
        assert len(ranges) == k and ranges[0][0] == 0 and ranges[-1][1] == len(costs)
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(ranges, ranges[1:]))
        best = min(max(sum(costs[s:e]) for s, e in zip((0,) + cut, cut + (len(costs),)))
                   for cut in itertools.combinations(range(1, len(costs)), k - 1))
        assert max(sum(costs[s:e]) for s, e in ranges) == pytest.approx(best)


def test_split_of_the_experiment_model_cuts_at_block_outputs():
    model = build_mlp(width=16, depth=8, input_dim=10, classes=3)
    split = split_model(model, 8)
    assert split.stages == 8 and len(split.blocks) == 9
    assert all(split.stage_layers(k)[-1].startswith(("act_", "output")) for k in range(8))
    assert method_config("dni", split)["at"] == list(split.boundaries)


def test_bad_inputs_name_the_argument_the_value_and_the_fix(data):
    x, y = data
    model = build_mlp(**spec())
    with pytest.raises(ValueError, match=r"stages=5 is larger than the model's 4 blocks.*"
                                         r"Pass stages <= 4"):
        split_model(model, 5)
    with pytest.raises(ValueError, match=r"stages=0.*integer >= 1"):
        split_model(model, 0)
    with pytest.raises(ValueError, match=r"schedule='pipedream' is not a schedule.*'dni'"):
        check_schedule("pipedream")
    with pytest.raises(ValueError, match=r"schedule='dni' needs stages >= 2"):
        method_config("dni", split_model(model, 1))
    with pytest.raises(ValueError, match=r"backend='mpi'.*'process' or 'thread'"):
        Workers(1, backend="mpi")
    with pytest.raises(ValueError, match=r"count=0"):
        Workers(0, backend="thread")
    with Workers(2, backend="thread") as workers:
        with pytest.raises(ValueError, match=r"micro_batches=3 does not divide batch_size=16"):
            run_decoupled(workers, spec(), x, y, schedule="gpipe", batch_size=16,
                          micro_batches=3)
        with pytest.raises(ValueError, match=r"schedule='sync'"):
            run_decoupled(workers, spec(), x, y, schedule="sync", batch_size=16)
        with pytest.raises(ValueError, match=r"window=0"):
            run_decoupled(workers, spec(), x, y, schedule="dfa", batch_size=16, window=0)


def test_command_line_errors_name_the_flag(capsys):
    for argv, message in ((["--simulate", "12"], "--simulate: got 12"),
                          (["--micro-batches", "3"], "--micro-batches: got 3"),
                          (["--seeds", "a"], "--seeds: got a")):
        with pytest.raises(SystemExit):
            cli.parse_args(argv)
        assert message in capsys.readouterr().err
    settings, out = cli.parse_args(["--quick", "--seeds", "4", "--out", "somewhere"])
    assert settings.seeds == (4,) and settings.quick and str(out) == "somewhere"


@pytest.mark.slow
def test_quick_run_writes_its_tables(tmp_path):
    summary, simulated, check = cli.main(["--quick", "--out", str(tmp_path)])
    folder = tmp_path / "decoupled"
    text = (folder / "decoupled.md").read_text()
    assert "## Measured on this machine" in text and "## Simulated: K devices" in text
    for name in ("measured.csv", "simulated.csv", "simulator_check.csv", "profile.csv",
                 "runs.csv", "transfer.json"):
        assert (folder / name).exists()
    assert not [p for p in os.listdir(folder) if p.startswith(".")]  # no temp files
    # One replay per measured K = 2 run: six schedules, DGL included, one with micro-batches.
    assert set(simulated.K) == {2, 4} and len(check) == 7
    assert set(check.run) == {run for run in summary.run if run.endswith("K=2")}
    # Lock-step runs compute the in-process method's numbers: same test accuracy.
    acc = dict(zip(summary.run, summary.test_accuracy))
    assert acc["locked backprop, K=2"] == pytest.approx(acc[
        "backprop, 1 process, 1 core (credit step)"], abs=0.002)
    assert acc["DNI lock-step, K=2"] == pytest.approx(acc["DNI, 1 process, 1 core (credit step)"],
                                                      abs=0.002)


# --------------------------------------------------------------------------------------
# DGL: local losses, each stage updated from its own head


def test_dgl_stages_equal_the_in_process_local_losses(data):
    # Three stages, two heads (at the two boundaries); the stages in one thread and
    # as threads that run at their own pace both reach credit's local_losses weights.
    x, y = data
    model_spec = spec()
    model = build_mlp(**model_spec)
    split = split_model(model, 3)
    config = method_config("dgl", split, seed=0)
    assert config == {"name": "local_losses", "seed": 0, "at": list(split.boundaries)}
    method = reference.resolve_method(config, model)
    stages = [Stage(model, split, k, "dgl", method=method, optimizer=SGD,
                    loss=reference.loss_object()) for k in range(3)]
    heads = {name: head.get_weights() for name, head in method.heads.items()}
    for epoch in range(EPOCHS):
        for index in batches(len(x), BATCH, 0, epoch):
            sequential_step(stages, "dgl", x[index], y[index])
    expected = in_process(model_spec, "dgl", 3, x, y)
    initial = build_mlp(**model_spec).get_weights()
    assert_same(model.get_weights(), expected, initial)
    # The heads learnt too (with the method's head optimizer) and the timings name
    # the local piece the simulator reads.
    for name, before in heads.items():
        assert max(float(np.max(np.abs(a - b)))
                   for a, b in zip(method.heads[name].get_weights(), before)) > 1e-4
    assert set(stages[0].timings) >= {"forward", "local", "backward", "apply"}
    assert "local" not in stages[-1].timings
    with Workers(3, backend="thread") as workers:
        result = run_decoupled(workers, model_spec, x, y, schedule="dgl",
                               batch_size=BATCH, epochs=EPOCHS, seed=0, optimizer=SGD)
    assert_same(result.weights, expected, initial)


def test_dgl_head_gradient_against_numpy(data):
    # The signal a dgl stage sends into its layers: d CE(softmax(h A + c), y) / d h =
    # (softmax(h A + c) - onehot(y)) A^T / batch, for the linear head (A, c).
    x, y = data
    model = build_mlp(**spec(batch_norm=False))
    split = split_model(model, 2)
    method = reference.resolve_method(method_config("dgl", split, seed=0), model)
    stage = Stage(model, split, 0, "dgl", method=method, optimizer=SGD,
                  loss=reference.loss_object())
    fwd = stage.forward(x[:BATCH], y[:BATCH])
    loss, g, _ = stage._local(fwd.outputs["h"], fwd.y)
    h = fwd.h.reshape(BATCH, -1)
    kernel, bias = stage.head.get_weights()[:2]
    logits = h @ kernel + bias
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    onehot = np.eye(p.shape[1])[y[:BATCH]]
    np.testing.assert_allclose(float(loss), -np.mean(np.log(p[np.arange(BATCH), y[:BATCH]])),
                               rtol=1e-5)
    np.testing.assert_allclose(g.numpy().reshape(BATCH, -1), (p - onehot) @ kernel.T / BATCH,
                               atol=1e-6)


def test_dgl_simulator_waits_for_nothing_but_the_input():
    # Two stages, no transfer: stage 1 runs batch t as soon as stage 0's forward of t
    # is done, and stage 0 never waits: the epoch takes the slowest stage's time plus
    # the first forward of stage 0.
    times = [{"forward": 1.0, "update": 2.0}, {"forward": 1.5, "update": 1.5}]
    sim = simulate("dgl", times, steps=4)
    assert sim.seconds == pytest.approx(1.0 + 4 * 3.0)
    locked = simulate("locked", [{"forward": 1.0, "backward": 2.0, "update": 0.0},
                                 {"forward": 1.5, "backward": 1.5, "update": 0.0}], steps=4)
    assert locked.seconds == pytest.approx(4 * 6.0)


class _SoftmaxDense(__import__("keras").layers.Dense):
    """A Dense layer whose call ends in a softmax op: credit reads its output error at
    the logits Keras keeps on the result (the ``"returned"`` kind)."""

    def call(self, inputs):
        import keras

        return keras.ops.softmax(super().call(inputs))


def test_dfa_stages_read_the_logits_a_softmax_op_returns(data):
    # Before the stage knew the "returned" kind, it took e at the probabilities (the
    # loss gradient there, not p - onehot(y)) and drifted from credit's DFA.
    import keras

    import credit

    x, y = data

    def build():
        keras.utils.set_random_seed(3)
        return credit.Sequential([keras.Input((12,)),
                                  keras.layers.Dense(16, activation="tanh", name="h0"),
                                  keras.layers.Dense(16, activation="tanh", name="h1"),
                                  _SoftmaxDense(4, name="output")])

    model, twin = build(), build()
    split = split_model(model, 2)
    method = reference.resolve_method(method_config("dfa", split, seed=0), model)
    assert method.graph.logits == ("returned", "output")
    stages = [Stage(model, split, k, "dfa", method=method, optimizer=SGD,
                    loss=reference.loss_object()) for k in range(2)]
    for epoch in range(EPOCHS):
        for index in batches(len(x), BATCH, 0, epoch):
            sequential_step(stages, "dfa", x[index], y[index])
    reference.train_in_process(twin, method_config("dfa", split, seed=0), x, y,
                               batch_size=BATCH, epochs=EPOCHS, seed=0, optimizer=SGD)
    assert_same(model.get_weights(), twin.get_weights(), build().get_weights())


def test_stages_refuse_logits_they_cannot_read():
    # A softmax op between the layers of a functional model is not run by a stage of
    # layers: the stage says so instead of training on the probabilities.
    import keras

    import credit

    inputs = keras.Input((12,))
    h = keras.layers.Dense(16, activation="tanh", name="h0")(inputs)
    h = keras.layers.Dense(16, activation="tanh", name="h1")(h)
    outputs = keras.ops.softmax(keras.layers.Dense(4, name="output")(h))
    model = credit.Model(inputs, outputs)
    split = split_model(model, 2)
    method = reference.resolve_method(method_config("dfa", split, seed=0), model)
    assert method.graph.logits[0] == "output_of"
    with pytest.raises(ValueError, match="'output_of'.*cannot read"):
        Stage(model, split, 1, "dfa", method=method, optimizer=SGD,
              loss=reference.loss_object())
