"""The Copy and Repeat Copy tasks, their bits-per-sequence score and a curriculum.

Graves, Wayne & Danihelka 2014, "Neural Turing Machines" (arXiv:1410.5401), §4.1
and §4.2, introduced both tasks; Jaderberg et al. 2016, "Decoupled Neural
Interfaces using Synthetic Gradients" (ICML 2017; arXiv:1608.05343), §3.1, used
them to measure how far back in time an RNN trained with truncated BPTT, with or
without synthetic gradients, can carry information, scored by the longest
sequence solved. :class:`CopyCurriculum` raises the length each time the
current one is solved; what counts as solved is a parameter (0.15 bits per
sequence by default, :data:`SOLVED_BITS`).

Layout of one Copy sequence of ``length`` L random ``bits``-bit vectors
v_0 ... v_{L-1} (2L + 1 steps; ``bits`` = 8 by default). Inputs have
``bits`` + 1 channels (the last is the delimiter), targets ``bits``:

============  =======================  =============  ====
step t        inputs: bits, delimiter  targets: bits  mask
============  =======================  =============  ====
0 ... L-1     v_t, 0                   0              0
L             0, 1                     0              0
L+1 ... 2L    0, 0                     v_{t-L-1}      1
============  =======================  =============  ====

Repeat Copy with R ``repeats`` (L + 1 + R L + 1 steps) adds an input channel,
the count, holding R / ``max_repeats`` at the delimiter step, and a target
channel, the end marker, which must be 1 on the step after the last copy
(j < R is the copy, k < L the vector):

==========  ==============================  ==================  ====
step t      inputs: bits, delimiter, count  targets: bits, end  mask
==========  ==============================  ==================  ====
0 ... L-1   v_t, 0, 0                       0, 0                0
L           0, 1, R / max_repeats           0, 0                0
L+1+jL+k    0, 0, 0                         v_k, 0              1
L+1+RL      0, 0, 0                         0, 1                1
==========  ==============================  ==================  ====

Every bit is 0 or 1 with probability 1/2, drawn from ``seed``.
"""

import dataclasses
import math

import numpy as np

from credit.data._base import _check_int, _check_seed

#: The error below which a length counts as solved, in bits per sequence.
SOLVED_BITS = 0.15


@dataclasses.dataclass(frozen=True, eq=False)
class SequenceBatch:
    """Inputs, targets and the mask of scored steps of a batch of sequences.

    Unpacks as ``inputs, targets, mask``. For Keras, the mask is the
    per-step sample weight: ``model.fit(b.inputs, b.targets,
    sample_weight=b.mask)`` scores only the output phase.

    Attributes:
        inputs: float32 array ``(n, steps, input channels)``.
        targets: float32 array of 0/1 ``(n, steps, target channels)``.
        mask: float32 array ``(n, steps)``: 1 at the steps that are scored
            (the output phase), 0 elsewhere.
        task: ``"copy"`` or ``"repeat_copy"``.
        length: Number of random vectors in each sequence.
        repeats: Number of copies asked for (1 for ``"copy"``).

    Example:
        >>> x, y, mask = copy_task(length=3, n=2, seed=0)
        >>> x.shape, y.shape, mask.shape
        ((2, 7, 9), (2, 7, 8), (2, 7))
    """

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    task: str
    length: int
    repeats: int

    def __iter__(self):
        return iter((self.inputs, self.targets, self.mask))

    def __repr__(self):
        return (
            f"SequenceBatch(task={self.task!r}, length={self.length}, repeats={self.repeats}, "
            f"inputs={self.inputs.shape}, targets={self.targets.shape}, mask={self.mask.shape})"
        )


def copy_task(length, n=32, bits=8, seed=0):
    """A batch of Copy sequences (Graves et al. 2014, §4.1).

    The network reads ``length`` random binary vectors, then a delimiter,
    then must write the vectors back in the same order while its input is
    silent. The layout, step by step, is in the module docstring.

    Args:
        length: Number of random vectors L to copy (at least 1). Each
            sequence has 2L + 1 steps.
        n: Number of sequences.
        bits: Width of each vector (8 in both papers).
        seed: Seed of the random bits.

    Returns:
        A :class:`SequenceBatch` with inputs ``(n, 2L+1, bits+1)`` (the last
        channel is the delimiter), targets ``(n, 2L+1, bits)`` and mask
        ``(n, 2L+1)``, 1 on the last L steps.

    Example:
        >>> x, y, mask = copy_task(length=2, n=1, bits=3, seed=0)
        >>> mask[0].tolist()
        [0.0, 0.0, 0.0, 1.0, 1.0]
        >>> bool((y[0, 3:] == x[0, :2, :3]).all()), x[0, 2].tolist()
        (True, [0.0, 0.0, 0.0, 1.0])
    """
    length = _check_int("length", length, 1)
    n = _check_int("n", n, 1)
    bits = _check_int("bits", bits, 1)
    seed = _check_seed(seed)
    vectors = np.random.default_rng(seed).integers(0, 2, (n, length, bits)).astype(np.float32)
    steps = 2 * length + 1
    inputs = np.zeros((n, steps, bits + 1), np.float32)
    targets = np.zeros((n, steps, bits), np.float32)
    mask = np.zeros((n, steps), np.float32)
    inputs[:, :length, :bits] = vectors
    inputs[:, length, bits] = 1.0
    targets[:, length + 1:] = vectors
    mask[:, length + 1:] = 1.0
    return SequenceBatch(inputs, targets, mask, task="copy", length=length, repeats=1)


def repeat_copy_task(length, repeats=2, n=32, bits=8, max_repeats=10, seed=0):
    """A batch of Repeat Copy sequences (Graves et al. 2014, §4.2).

    The network reads ``length`` random binary vectors, then a delimiter step
    that also carries the number of copies wanted, ``repeats /
    max_repeats``, on its own channel; it must then write the vectors back
    ``repeats`` times in a row and raise an end marker on the step after the
    last copy. The layout, step by step, is in the module docstring.

    Args:
        length: Number of random vectors L (at least 1).
        repeats: Number of copies R (1 ... ``max_repeats``). Each sequence
            has L + 1 + R L + 1 steps.
        n: Number of sequences.
        bits: Width of each vector (8 in both papers).
        max_repeats: Scale of the repeat channel: it holds
            ``repeats / max_repeats``, in (0, 1]. Keep it fixed while a
            curriculum raises ``repeats``, so that the same count always
            reads the same.
        seed: Seed of the random bits.

    Returns:
        A :class:`SequenceBatch` with inputs ``(n, steps, bits+2)``
        (channels: the bits, the delimiter, the repeat count), targets
        ``(n, steps, bits+1)`` (the bits, the end marker) and mask
        ``(n, steps)``, 1 on the last R L + 1 steps.

    Example:
        >>> b = repeat_copy_task(length=2, repeats=3, n=1, bits=4, seed=0)
        >>> b.inputs.shape, b.targets.shape, int(b.mask.sum())
        ((1, 10, 6), (1, 10, 5), 7)
    """
    length = _check_int("length", length, 1)
    max_repeats = _check_int("max_repeats", max_repeats, 1)
    repeats = _check_int("repeats", repeats, 1)
    if repeats > max_repeats:
        raise ValueError(
            f"repeats must be at most max_repeats={max_repeats} (the repeat channel holds "
            f"repeats / max_repeats), got repeats={repeats}; pass a larger max_repeats."
        )
    n = _check_int("n", n, 1)
    bits = _check_int("bits", bits, 1)
    seed = _check_seed(seed)
    vectors = np.random.default_rng(seed).integers(0, 2, (n, length, bits)).astype(np.float32)
    out = length + 1                     # first step of the output phase
    end = out + repeats * length         # the end-marker step
    inputs = np.zeros((n, end + 1, bits + 2), np.float32)
    targets = np.zeros((n, end + 1, bits + 1), np.float32)
    mask = np.zeros((n, end + 1), np.float32)
    inputs[:, :length, :bits] = vectors
    inputs[:, length, bits] = 1.0
    inputs[:, length, bits + 1] = repeats / max_repeats
    targets[:, out:end, :bits] = np.tile(vectors, (1, repeats, 1))
    targets[:, end, bits] = 1.0
    mask[:, out:] = 1.0
    return SequenceBatch(inputs, targets, mask, task="repeat_copy", length=length, repeats=repeats)


def bits_error(targets, outputs, mask=None, from_logits=False, per="sequence"):
    """Binary cross-entropy in bits over the scored steps: the Copy tasks' error.

    For each scored step the cost is ``-sum_c [y_c log2 p_c + (1 - y_c)
    log2(1 - p_c)]`` over the target channels, where ``p`` are the network's
    output probabilities. ``per="sequence"`` sums it over the scored steps of
    each sequence and averages over sequences: the "cost per sequence (bits)"
    of Graves et al. 2014, and the unit of the threshold :data:`SOLVED_BITS`
    (0.15, the value commonly used for "solved"). ``per="step"`` divides the
    total by the number of scored steps instead (bits per output step).

    Probabilities are clipped to [1e-7, 1 - 1e-7], so one wrong bit costs at
    most about 23.3 bits; with ``from_logits=True`` the cost is computed
    stably from the logits without clipping.

    Args:
        targets: 0/1 array ``(n, steps, channels)``.
        outputs: Probabilities (or logits with ``from_logits=True``), same
            shape as ``targets``.
        mask: ``(n, steps)`` weights of the scored steps (the
            :class:`SequenceBatch` mask); None scores every step.
        from_logits: Whether ``outputs`` are logits rather than
            probabilities.
        per: ``"sequence"`` or ``"step"``.

    Returns:
        The error in bits, a Python float.

    Example:
        >>> y = np.array([[[1.0, 0.0]]])
        >>> bits_error(y, np.array([[[0.5, 0.5]]]))  # two bits, each a coin flip
        2.0
    """
    if per not in ("sequence", "step"):
        raise ValueError(
            f"per must be 'sequence' (bits summed over each sequence's scored steps, averaged "
            f"over sequences) or 'step' (bits per scored step), got per={per!r}."
        )
    targets = np.asarray(targets, dtype=np.float64)
    outputs = np.asarray(outputs, dtype=np.float64)
    if targets.shape != outputs.shape or targets.ndim != 3:
        raise ValueError(
            f"targets and outputs must have the same shape (n, steps, channels), got "
            f"targets {targets.shape} and outputs {outputs.shape}; pass the network's "
            "per-step outputs for the whole sequence."
        )
    if from_logits:
        # -log p(y) = softplus(z) - y z, computed without overflow.
        nats = np.logaddexp(0.0, outputs) - targets * outputs
    else:
        p = np.clip(outputs, 1e-7, 1.0 - 1e-7)
        nats = -(targets * np.log(p) + (1.0 - targets) * np.log1p(-p))
    step_bits = nats.sum(axis=-1) / math.log(2.0)
    if mask is None:
        mask = np.ones(step_bits.shape)
    mask = np.asarray(mask, dtype=np.float64)
    if mask.shape != step_bits.shape:
        raise ValueError(
            f"mask must have shape (n, steps) = {step_bits.shape}, got {mask.shape}; pass "
            "the SequenceBatch's mask."
        )
    total = step_bits * mask
    if per == "sequence":
        return float(total.sum(axis=1).mean())
    scored = mask.sum()
    if scored == 0:
        raise ValueError("mask scores no step; per='step' needs at least one scored step.")
    return float(total.sum() / scored)


class CopyCurriculum:
    """Raises the length of a Copy or Repeat Copy task each time it is solved.

    :meth:`batch` draws a fresh batch at the current length; :meth:`update`
    takes the error measured at that length (bits per sequence, see
    :func:`bits_error`) and raises the length by ``step`` when it is below
    ``threshold``. The score of a run is :attr:`longest_solved`. Every batch
    derives from ``seed`` and the number of batches drawn before it, so a run
    is reproducible.

    Args:
        task: ``"copy"`` or ``"repeat_copy"``.
        length: Starting length (1 by default).
        max_length: Length at which to stop raising; None for no limit.
        step: How much to raise the length when solved.
        threshold: Error in bits per sequence below which a length is solved;
            0.15 (:data:`SOLVED_BITS`) is the value commonly used.
        bits: Width of the random vectors.
        repeats: Number of copies, for ``"repeat_copy"``.
        max_repeats: Scale of the repeat channel, for ``"repeat_copy"``.
        seed: Seed of every batch.

    Attributes:
        length: The current length.
        longest_solved: The longest length solved so far (0 before any).

    Example:
        >>> curriculum = CopyCurriculum("copy", seed=0)
        >>> x, y, mask = curriculum.batch(16)
        >>> x.shape
        (16, 3, 9)
        >>> curriculum.update(0.1), curriculum.length, curriculum.longest_solved
        (True, 2, 1)
    """

    def __init__(self, task="copy", length=1, max_length=None, step=1,
                 threshold=SOLVED_BITS, bits=8, repeats=2, max_repeats=10, seed=0):
        if task not in ("copy", "repeat_copy"):
            raise ValueError(f"task must be 'copy' or 'repeat_copy', got task={task!r}.")
        self.task = task
        self.length = _check_int("length", length, 1)
        self.max_length = None if max_length is None else _check_int("max_length", max_length, self.length)
        self.step = _check_int("step", step, 1)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or not threshold > 0:
            raise ValueError(
                f"threshold must be a positive number of bits, got {threshold!r}; "
                f"pass for example threshold={SOLVED_BITS}."
            )
        self.threshold = float(threshold)
        self.bits = _check_int("bits", bits, 1)
        self.repeats = _check_int("repeats", repeats, 1)
        self.max_repeats = _check_int("max_repeats", max_repeats, self.repeats)
        self.seed = _check_seed(seed)
        self.longest_solved = 0
        self.batches_drawn = 0

    def batch(self, n=32):
        """Draw a new batch of ``n`` sequences at the current length.

        Args:
            n: Number of sequences.

        Returns:
            A :class:`SequenceBatch`.
        """
        seed = int(np.random.default_rng([self.seed, self.batches_drawn]).integers(2**63))
        self.batches_drawn += 1
        if self.task == "copy":
            return copy_task(self.length, n=n, bits=self.bits, seed=seed)
        return repeat_copy_task(self.length, repeats=self.repeats, n=n, bits=self.bits,
                                max_repeats=self.max_repeats, seed=seed)

    @property
    def done(self):
        """Whether ``max_length`` has been solved."""
        return self.max_length is not None and self.longest_solved >= self.max_length

    def update(self, error):
        """Record the error at the current length; raise the length if it is solved.

        Args:
            error: Error at the current length in bits per sequence, e.g.
                ``bits_error(batch.targets, outputs, batch.mask)``.

        Returns:
            True if the length was solved (and raised unless ``max_length``
            was reached), False otherwise.
        """
        if not np.isfinite(error) or error < 0:
            raise ValueError(f"error must be a finite number of bits >= 0, got {error!r}.")
        if error >= self.threshold:
            return False
        self.longest_solved = max(self.longest_solved, self.length)
        if self.max_length is None or self.length < self.max_length:
            self.length = self.length + self.step
            if self.max_length is not None:
                self.length = min(self.length, self.max_length)
        return True

    def __repr__(self):
        return (
            f"CopyCurriculum(task={self.task!r}, length={self.length}, "
            f"longest_solved={self.longest_solved}, threshold={self.threshold})"
        )
