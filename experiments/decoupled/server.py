"""What a stage worker does with the coordinator's commands (see :mod:`.workers`).

Every command takes one payload (a dict of plain values and numpy arrays) and returns
plain values and numpy arrays, so that it crosses a process boundary as it is.
"""

import statistics
import time

import numpy as np
import tensorflow as tf

import credit
from experiments.decoupled import reference
from experiments.decoupled.schedules import Links, batches, run_epoch, sequential_step
from experiments.decoupled.split import build_mlp
from experiments.decoupled.stage import Stage


def build(spec):
    """The model of a payload: ``spec["model"]`` (``build_mlp`` arguments) with the
    weights ``spec["weights"]``, and the method ``spec["method"]`` bound to it."""
    model = build_mlp(**spec["model"])
    model.set_weights(spec["weights"])
    method = reference.resolve_method(spec["method"], model)
    return model, (None if method.exact else method)


class Server:
    """The commands of one worker: stage ``index`` of ``count``."""

    def __init__(self, index, count, inboxes, barrier):
        self.index, self.count = index, count
        self.inboxes, self.barrier = inboxes, barrier
        self.stage = None
        self.x = self.y = None
        self.schedule = None

    def info(self, _):
        """The worker's pid, the ``credit`` it imported, its TensorFlow threads."""
        import os

        return {"pid": os.getpid(), "credit": credit.__file__,
                "threads": (tf.config.threading.get_intra_op_parallelism_threads(),
                            tf.config.threading.get_inter_op_parallelism_threads())}

    def setup(self, spec):
        """Build this worker's stage: ``model``, ``weights``, ``method``, ``split``,
        ``schedule``, ``optimizer``, and the data (``x`` for the first stage, ``y``)."""
        self._drain()
        model, method = build(spec)
        self.stage = Stage(model, spec["split"], self.index, spec["schedule"], method=method,
                           optimizer=spec["optimizer"], loss=reference.loss_object())
        self.schedule = spec["schedule"]
        self.x, self.y = spec.get("x"), spec["y"]
        return {"layers": [layer.name for layer in self.stage.layers]}

    def _drain(self):
        inbox = self.inboxes[self.index]
        while True:
            try:
                inbox.get_nowait()
            except Exception:  # noqa: BLE001 - queue.Empty from either queue type
                return

    def train(self, spec):
        """Train ``epochs`` epochs of the schedule (``batch_size``, ``seed``, ``window``,
        ``micro_batches``, ``epoch_offset``); per epoch: wall-clock start and end (the
        system-wide monotonic clock), CPU seconds, time waiting for and handing over
        messages, the loss and hits (last stage); and every piece's durations."""
        stage, links = self.stage, Links(self.index, self.inboxes)
        stage.reset_timings()
        n = len(self.y)
        epochs = []
        for e in range(spec["epochs"]):
            epoch_batches = batches(n, spec["batch_size"], spec["seed"],
                                    spec.get("epoch_offset", 0) + e)
            self.barrier.wait()  # all stages start the epoch together
            links.waiting = links.sending = 0.0
            start, cpu = time.perf_counter(), time.process_time()
            log = run_epoch(stage, links, self.schedule, epoch_batches, self.x, self.y,
                            window=spec.get("window", 1),
                            micro_batches=spec.get("micro_batches", 1))
            end = time.perf_counter()
            epochs.append({"start": start, "end": end, "cpu": time.process_time() - cpu,
                           "waiting": links.waiting, "sending": links.sending,
                           "losses": log.losses, "correct": log.correct,
                           "examples": log.examples,
                           "synth_loss": (float(np.mean(log.synth_losses))
                                          if log.synth_losses else None)})
        return {"epochs": epochs, "timings": {k: list(v) for k, v in stage.timings.items()}}

    def weights(self, _):
        """The stage's layer weights and its method state."""
        return {"weights": self.stage.get_weights(), "state": self.stage.state()}

    def pingpong(self, spec):
        """Time messages of the given ``shapes`` between this worker and the next (worker
        0 sends, worker 1 echoes; others idle): median round trip / 2 over ``repeats``.
        Returns ``{shape: seconds}`` in worker 0."""
        links = Links(self.index, self.inboxes)
        out = {}
        for s, shape in enumerate(spec["shapes"]):
            payload = np.random.default_rng(s).normal(size=shape).astype("float32")
            times = []
            self.barrier.wait()
            for r in range(spec["repeats"]):
                if self.index == 0:
                    start = time.perf_counter()
                    links.send(1, "ping", r, payload, micro=s)
                    links.recv("pong", r, micro=s)
                    times.append((time.perf_counter() - start) / 2)
                elif self.index == 1:
                    echo = links.recv("ping", r, micro=s)
                    links.send(0, "pong", r, echo, micro=s)
            if times:
                out[tuple(shape)] = statistics.median(times)
        return out

    def profile(self, spec):
        """Time every stage's pieces for several ``configs`` (each a dict of ``split``,
        ``schedule``, ``method`` and ``micro_batches``), all stages in this worker, one
        piece at a time (:func:`sequential_step`). After ``warmup`` steps each (tracing),
        the configs take turns, one step each, in a fresh seeded order every round, for
        ``steps`` rounds: load from other processes hits them alike (as in
        ``experiments.bench``). Returns, per config, one dict of piece durations (lists
        of seconds) per stage."""
        x, y = spec["x"], spec["y"]
        index = batches(len(y), spec["batch_size"], spec["seed"], 0)
        runs = []
        for config in spec["configs"]:
            model, method = build(dict(spec, method=config["method"]))
            stages = [Stage(model, config["split"], k, config["schedule"], method=method,
                            optimizer=spec["optimizer"], loss=reference.loss_object())
                      for k in range(config["split"].stages)]
            runs.append((stages, config))
        step = 0

        def one(stages, config):
            batch = index[step % len(index)]
            sequential_step(stages, config["schedule"], x[batch], y[batch], step=step,
                            micro_batches=config.get("micro_batches", 1))

        for _ in range(spec["warmup"]):
            for stages, config in runs:
                one(stages, config)
            step += 1
        for stages, _ in runs:
            for stage in stages:
                stage.reset_timings()
        rng = np.random.default_rng(spec["seed"])
        for _ in range(spec["steps"]):
            for i in rng.permutation(len(runs)):
                one(*runs[i])
            step += 1
        return [[{k: list(v) for k, v in stage.timings.items()} for stage in stages]
                for stages, _ in runs]

    def fused(self, spec):
        """Train the unsplit model with ``credit.compute_gradients`` in this process
        (:func:`~experiments.decoupled.reference.train_in_process`); returns the epoch
        logs and the final weights."""
        model, method = build(spec)
        logs, _ = reference.train_in_process(
            model, method if method is not None else spec["method"], spec["x"], spec["y"],
            batch_size=spec["batch_size"], epochs=spec["epochs"], seed=spec["seed"],
            optimizer=spec["optimizer"], epoch_offset=spec.get("epoch_offset", 0))
        return {"epochs": logs, "weights": model.get_weights()}
