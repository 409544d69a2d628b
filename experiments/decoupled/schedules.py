"""The schedules: what each stage does with each batch, and when.

Two drivers run the same :class:`~experiments.decoupled.stage.Stage` pieces:

- :func:`run_epoch`, in each stage's own worker (a process, or a thread in tests):
  messages between stages go through :class:`Links`;
- :func:`sequential_step`, all stages in one thread, one piece at a time in the order of
  a lock-step step: used to time every stage's pieces on one core (the simulator's
  input) and as a single-process check of the stage math.

The schedules, for batch t on stage k (of K):

- ``locked`` (backprop): forward, send h up; wait for the gradient from above (the last
  stage takes the loss gradient), backward, send the input gradient down, update. The
  first stage starts batch t+1 only after its update: one batch in the whole pipeline.
- ``gpipe`` (backprop, Huang et al. 2019, GPipe): the batch is cut into M micro-batches;
  every stage forwards all of them in turn (the last stage then starts the backward
  passes, last micro-batch first), accumulates the micro-batch gradients and updates
  once per batch. Same gradient as the whole batch.
- ``dfa``: forward, send h up; the last stage computes the loss and the output error e,
  sends e to every stage, and updates. A stage updates for batch t as soon as e_t
  arrives; it may forward up to ``window`` batches before their e arrives (window 1:
  lock-step, the updates of the in-process method).
- ``dni``: forward, send h up, then at once update from the synthesizer's signal and send
  the input gradient down (the stage below's bootstrap target). The synthesizer learns
  from its target when it arrives. The update of batch t waits until the synthesizer has
  learnt from the targets of batches up to t - ``window`` (window 1: lock-step, the
  in-process method's numbers).
- ``dgl`` (local losses, Belilovsky et al. 2020's decoupled greedy learning): forward,
  send h up, then at once update from the local loss of the stage's auxiliary head
  (its gradient through the head, backprop through the stage; the head learns from the
  same loss). Nothing is sent down and nothing is waited for but the input: the stages
  are update-unlocked and backward-unlocked, with no window to bound.
"""

import collections
import queue
import time

import numpy as np

#: The pieces each schedule's simulator reads, as sums of a stage's timed pieces.
PIECES = {
    "locked": {"forward": ("forward",), "backward": ("backward",), "update": ("apply",)},
    "gpipe": {"forward": ("forward",), "backward": ("backward", "accumulate"),
              "update": ("apply",)},
    "dfa": {"forward": ("forward",), "update": ("backward", "apply")},
    "dni": {"forward": ("forward",), "backward": ("synthesize", "backward"),
            "update": ("apply",), "synth": ("synth_train",)},
    "dgl": {"forward": ("forward",), "update": ("local", "backward", "apply")},
}


def batches(n, batch_size, seed, epoch):
    """The batches of one epoch: index arrays of a seeded permutation of ``n`` examples,
    the last incomplete batch dropped (every step has the same batch size).

    Example:
        >>> [b.tolist() for b in batches(5, 2, seed=0, epoch=0)]
        [[2, 4], [3, 0]]
    """
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(int(n))
    count = int(n) // int(batch_size)
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(count)]


def micro_split(index, micro_batches):
    """``index`` cut into ``micro_batches`` equal consecutive parts."""
    return np.split(np.asarray(index), int(micro_batches))


class Links:
    """A stage's messages. Every stage has one inbox (a queue); a message is
    ``(kind, step, micro, payload)``: ``"h"`` (an activation, from the stage below),
    ``"g"`` (a gradient or bootstrap target, from the stage above), ``"e"`` (the output
    error, from the last stage). Messages that arrive before they are wanted are kept.

    Attributes:
        waiting: seconds spent blocked on the inbox.
        sending: seconds spent handing messages to the queues.
    """

    def __init__(self, index, inboxes, clock=time.perf_counter):
        self.index = index
        self.inboxes = inboxes
        self.inbox = inboxes[index]
        self.buffer = {}
        self.clock = clock
        self.waiting = 0.0
        self.sending = 0.0

    def send(self, to, kind, step, payload, micro=0):
        """Put a message in stage ``to``'s inbox, timing the send."""
        start = self.clock()
        self.inboxes[to].put((kind, step, micro, payload))
        self.sending += self.clock() - start

    def _take(self, block):
        kind, step, micro, payload = self.inbox.get() if block else self.inbox.get_nowait()
        if kind == "abort":
            raise RuntimeError("another stage failed; this stage stops (see its error).")
        self.buffer[(kind, step, micro)] = payload

    def ready(self, kind, step, micro=0):
        """Whether the message is here, taking in whatever has arrived (never blocks)."""
        key = (kind, step, micro)
        try:
            while key not in self.buffer:
                self._take(block=False)
        except queue.Empty:
            return False
        return True

    def wait_any(self, keys):
        """Block until one of ``keys`` (``(kind, step, micro)``) is here; return the
        first of them, in the order given, that is."""
        start = self.clock()
        try:
            while True:
                for key in keys:
                    if key in self.buffer:
                        return key
                self._take(block=True)
        finally:
            self.waiting += self.clock() - start

    def recv(self, kind, step, micro=0):
        """Block until the message is here; return its payload."""
        key = self.wait_any([(kind, step, micro)])
        return self.buffer.pop(key)

    def take(self, key):
        """Remove and return a message already received under ``key``."""
        return self.buffer.pop(key)


class EpochLog:
    """What one stage did in one epoch: its loss and hits (last stage), wall-clock."""

    def __init__(self):
        self.losses = []
        self.correct = 0.0
        self.examples = 0
        self.synth_losses = []


# --------------------------------------------------------------------------------------
# In each stage's worker


def run_epoch(stage, links, schedule, epoch_batches, x, y, window=1, micro_batches=1):
    """Train one epoch of ``schedule`` on ``stage``, talking to the other stages through
    ``links``; returns an :class:`EpochLog`. Every stage of the pipeline runs this with
    the same ``epoch_batches`` (the first stage reads ``x``, every stage ``y``).

    Args:
        stage: the :class:`~experiments.decoupled.stage.Stage`.
        links: its :class:`Links`.
        schedule: ``"locked"``, ``"gpipe"``, ``"dfa"``, ``"dni"`` or ``"dgl"``.
        epoch_batches: the epoch's index arrays (see :func:`batches`).
        x, y: the training data (``x`` is read only by the first stage).
        window: DFA and DNI: batches a stage may run ahead (1: lock-step).
        micro_batches: GPipe's M.

    Example (in stage k's worker; every stage runs the same call):
        >>> links = Links(k, inboxes)                               # doctest: +SKIP
        >>> log = run_epoch(stage, links, "dni", batches(len(y), 128, 0, 0), x, y,
        ...                 window=2)                                # doctest: +SKIP
    """
    log = EpochLog()
    runner = {"locked": _locked, "gpipe": _gpipe, "dfa": _dfa, "dni": _dni,
              "dgl": _dgl}[schedule]
    runner(stage, links, epoch_batches, x, y, log, window=window,
           micro_batches=micro_batches)
    return log


def _record(stage, fwd, log, count):
    if stage.last:
        log.losses.append(fwd.loss)
        log.correct += fwd.correct
        log.examples += count


def _input(stage, links, x, index, step, micro=0):
    return x[index] if stage.first else links.recv("h", step, micro)


def _forward(stage, links, x, y, index, step):
    """Runs the stage's forward pass on its input and passes the activations on."""
    fwd = stage.forward(_input(stage, links, x, index, step), y[index], step=step)
    if not stage.last:
        links.send(stage.index + 1, "h", step, fwd.h)
    return fwd


def _locked(stage, links, epoch_batches, x, y, log, **_):
    k = stage.index
    for t, index in enumerate(epoch_batches):
        fwd = _forward(stage, links, x, y, index, t)
        g = None if stage.last else links.recv("g", t)
        gx, grads = stage.backward(fwd, g)
        if not stage.first:
            links.send(k - 1, "g", t, gx)
        stage.apply(grads)
        _record(stage, fwd, log, len(index))


def _gpipe(stage, links, epoch_batches, x, y, log, micro_batches=1, **_):
    k, m_count = stage.index, int(micro_batches)
    for t, index in enumerate(epoch_batches):
        parts = micro_split(index, m_count)
        fwds = []
        for m, part in enumerate(parts):
            fwd = stage.forward(_input(stage, links, x, part, t, m), y[part], step=t, micro=m)
            if not stage.last:
                links.send(k + 1, "h", t, fwd.h, micro=m)
            fwds.append(fwd)
        total = None
        for m in reversed(range(m_count)):
            g = None if stage.last else links.recv("g", t, m)
            # The batch loss is the mean of the micro-batch losses.
            gx, grads = stage.backward(fwds[m], g, scale=1.0 / m_count)
            if not stage.first:
                links.send(k - 1, "g", t, gx, micro=m)
            total = stage.accumulate(total, grads)
            _record(stage, fwds[m], log, len(parts[m]))
            fwds[m] = None
        stage.apply(total)


def _dfa(stage, links, epoch_batches, x, y, log, window=1, **_):
    k, n = stage.index, len(epoch_batches)
    pending = collections.deque()
    t = 0
    while t < n or pending:
        if stage.last:  # forward, send e to every stage, update: nothing to wait for
            index = epoch_batches[t]
            fwd = stage.forward(_input(stage, links, x, index, t), y[index], step=t)
            e = fwd.e
            for other in range(stage.count - 1):
                links.send(other, "e", t, e)
            stage.dfa_update(fwd, e)
            _record(stage, fwd, log, len(index))
            t += 1
            continue
        keys = []
        if pending:
            keys.append(("e", pending[0].step, 0))  # updates first
        can_forward = t < n and len(pending) < window
        if can_forward and not stage.first:
            keys.append(("h", t, 0))
        key = next((key for key in keys if links.ready(*key)), None)
        if key is None and not (can_forward and stage.first):
            key = links.wait_any(keys)
        if key is not None and key[0] == "e":
            fwd = pending.popleft()
            stage.dfa_update(fwd, links.take(key))
            continue
        index = epoch_batches[t]
        h = x[index] if stage.first else links.take(key)
        fwd = stage.forward(h, y[index], step=t)
        links.send(k + 1, "h", t, fwd.h)
        pending.append(fwd)
        t += 1


def _dni(stage, links, epoch_batches, x, y, log, window=1, **_):
    k, n = stage.index, len(epoch_batches)
    pending = collections.deque()  # predictions waiting for their bootstrap target

    def learn(block_until=None):
        # Train the synthesizer on every target that is here (and, with block_until,
        # wait for the targets up to that step).
        while pending:
            key = ("g", pending[0].step, 0)
            if not links.ready(*key):
                if block_until is None or pending[0].step > block_until:
                    return
                links.wait_any([key])
            item = pending.popleft()
            log.synth_losses.append(stage.train_synthesizer(item, links.take(key)))

    for t, index in enumerate(epoch_batches):
        if stage.first:
            h = x[index]
        else:
            while True:  # learn from targets while the input is on its way
                learn()
                key = ("h", t, 0)
                if links.ready(*key) or not pending:
                    break
                links.wait_any([key, ("g", pending[0].step, 0)])
            h = links.recv("h", t)
        fwd = stage.forward(h, y[index], step=t)
        if stage.last:
            gx, grads = stage.backward(fwd)
        else:
            links.send(k + 1, "h", t, fwd.h)
            learn(block_until=t - window)
            gx, grads, item = stage.synthetic_backward(fwd)
            pending.append(item)
        if not stage.first:
            links.send(k - 1, "g", t, gx)
        stage.apply(grads)
        _record(stage, fwd, log, len(index))
        if not stage.last:
            learn()
    if not stage.last:
        learn(block_until=n)


def _dgl(stage, links, epoch_batches, x, y, log, **_):
    for t, index in enumerate(epoch_batches):
        fwd = _forward(stage, links, x, y, index, t)
        stage.local_update(fwd)
        _record(stage, fwd, log, len(index))


# --------------------------------------------------------------------------------------
# All stages in one thread


def sequential_step(stages, schedule, x, y, step=0, micro_batches=1):
    """One lock-step training step of every stage, in one thread, one piece at a time.

    The result equals the in-process method's step (and :func:`run_epoch` with window
    1); the stages' :attr:`~experiments.decoupled.stage.Stage.timings` get each piece's
    time on its own, with nothing else running.

    Args:
        stages: the K stages, in order.
        schedule: ``"locked"``, ``"gpipe"``, ``"dfa"``, ``"dni"`` or ``"dgl"``.
        x, y: the batch (numpy arrays).
        step: the step number.
        micro_batches: GPipe's M.

    Returns:
        The batch loss (the mean of the micro-batch losses for GPipe).

    Example:
        >>> stages = [Stage(model, split, k, "dfa", method=dfa, loss=loss)
        ...           for k in range(split.stages)]                  # doctest: +SKIP
        >>> sequential_step(stages, "dfa", x[:128], y[:128])         # doctest: +SKIP
    """
    if schedule in ("locked", "dni"):
        fwds, h = [], x
        for stage in stages:
            fwds.append(stage.forward(h, y, step=step))
            h = fwds[-1].h
        if schedule == "locked":
            g = None
            for stage, fwd in zip(reversed(stages), reversed(fwds)):
                g, grads = stage.backward(fwd, g)
                stage.apply(grads)
        else:
            targets, items = {}, {}
            for stage, fwd in zip(stages, fwds):
                if stage.last:
                    gx, grads = stage.backward(fwd)
                else:
                    gx, grads, items[stage.index] = stage.synthetic_backward(fwd)
                stage.apply(grads)
                if not stage.first:
                    targets[stage.index - 1] = gx
            for stage in stages[:-1]:
                stage.train_synthesizer(items[stage.index], targets[stage.index])
        return fwds[-1].loss
    if schedule == "dfa":
        fwds, h = [], x
        for stage in stages:
            fwds.append(stage.forward(h, y, step=step))
            h = fwds[-1].h
        e = fwds[-1].e
        for stage, fwd in zip(stages, fwds):
            stage.dfa_update(fwd, e)
        return fwds[-1].loss
    if schedule == "dgl":
        fwds, h = [], x
        for stage in stages:
            fwds.append(stage.forward(h, y, step=step))
            h = fwds[-1].h
        for stage, fwd in zip(stages, fwds):
            stage.local_update(fwd)
        return fwds[-1].loss
    if schedule == "gpipe":
        m_count = int(micro_batches)
        parts = micro_split(np.arange(len(x)), m_count)
        fwds = []
        for part in parts:
            h, chain = x[part], []
            for stage in stages:
                chain.append(stage.forward(h, y[part], step=step))
                h = chain[-1].h
            fwds.append(chain)
        totals = [None] * len(stages)
        for m in reversed(range(m_count)):
            g = None
            for k in reversed(range(len(stages))):
                g, grads = stages[k].backward(fwds[m][k], g, scale=1.0 / m_count)
                totals[k] = stages[k].accumulate(totals[k], grads)
        for stage, total in zip(stages, totals):
            stage.apply(total)
        return float(np.mean([chain[-1].loss for chain in fwds]))
    raise ValueError(f"schedule={schedule!r} is not a schedule; choose one of 'locked', "
                     "'gpipe', 'dfa', 'dni', 'dgl'.")
