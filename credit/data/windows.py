"""Consecutive windows of long sequences, for stateful truncated BPTT in Keras.

Truncated backpropagation through time in Keras: a ``stateful=True`` recurrent
layer trained with ``model.fit(x, y, batch_size=B, shuffle=False)`` keeps its
final state of batch i as the initial state of batch i + 1, row by row, while
the gradient stops at the batch boundary. For this to be right, row r of batch
i + 1 must be the continuation of row r of batch i. The functions here lay the
data out that way:

1. the stream is cut into ``batch_size`` contiguous rows (row r is the r-th
   ``1 / batch_size`` of the stream);
2. each row is cut into consecutive windows of ``window`` steps;
3. the examples are ordered window-major: example ``i * batch_size + r`` is
   window i of row r, so Keras's batch i (examples ``i*B ... i*B + B - 1``
   when ``shuffle=False``) is window i of every row.

Markers travel with the data so that code downstream can check the order and
know where the state must start afresh: ``window_index`` and ``row`` per
example (see :meth:`Windows.check_order`), and ``starts``, True at each step
where a new sequence begins.

Example: character-level language modelling with a window of 50 characters
(a stateful layer needs the batch size in its input)::

    import keras
    from credit import data

    corpus = data.pydoc_text()
    w = data.next_step_windows(corpus.train, window=50, batch_size=32)
    model = keras.Sequential([
        keras.Input((w.window,), batch_size=w.batch_size),
        keras.layers.Embedding(corpus.vocab_size, 64),
        keras.layers.LSTM(256, stateful=True, return_sequences=True),
        keras.layers.Dense(corpus.vocab_size),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(w.inputs, w.targets, batch_size=w.batch_size, shuffle=False, epochs=1)
    # the loss / ln 2 is bits per character; reset the states between epochs

Copy sequences end to end, the state reset where each begins::

    w = data.tbptt_sequence_windows(data.copy_task(length=10, n=640, seed=0),
                                    window=21, batch_size=32)
    # w.resets[i * 32] is True: batch i starts new sequences in every row
"""

import dataclasses

import numpy as np

from credit.data._base import _check_int
from credit.data.copy_tasks import SequenceBatch


@dataclasses.dataclass(frozen=True, eq=False)
class Windows:
    """Windows of a stream in the order a stateful Keras RNN must see them.

    With ``B = batch_size``, example ``e = i * B + r`` is window ``i`` of row
    ``r``: feed with ``model.fit(w.inputs, w.targets, batch_size=B,
    shuffle=False, sample_weight=w.mask)``.

    Attributes:
        inputs: Array ``(n_windows * B, window, ...)``.
        targets: Array ``(n_windows * B, window, ...)``, or None.
        mask: float32 ``(n_windows * B, window)``: 1 at steps to score, 0 at
            padding (and wherever the given mask was 0).
        starts: bool ``(n_windows * B, window)``: True at each step where a
            sequence begins, so the recurrent state must start afresh there.
            Always True at step 0 of each row's first window.
        window_index: int64 ``(n_windows * B,)``: i for example ``i * B + r``.
        row: int64 ``(n_windows * B,)``: r for example ``i * B + r``.
        batch_size: B, the number of rows and the batch size to train with.
        window: Number of steps in a window (the truncation length T).
        dropped: Number of steps (for a stream) or whole sequences (for
            :func:`tbptt_sequence_windows`) left out because they did not
            fill a row.

    Example:
        >>> w = tbptt_windows(np.arange(12), window=2, batch_size=2)
        >>> w.inputs.tolist()       # rows [0..5] and [6..11]
        [[0, 1], [6, 7], [2, 3], [8, 9], [4, 5], [10, 11]]
        >>> w.window_index.tolist(), w.row.tolist()
        ([0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 1])
    """

    inputs: np.ndarray
    targets: np.ndarray | None
    mask: np.ndarray
    starts: np.ndarray
    window_index: np.ndarray
    row: np.ndarray
    batch_size: int
    window: int
    dropped: int

    @property
    def n_windows(self):
        """Number of windows per row, i.e. of batches per epoch."""
        return len(self.window_index) // self.batch_size

    @property
    def resets(self):
        """bool ``(n_windows * B,)``: a sequence begins at the window's first step.

        When every sequence starts at a window boundary (e.g. equal-length
        sequences whose length is a multiple of ``window``), batch ``i`` needs a
        state reset before it exactly when ``resets[i * B]`` is True, the same
        for all rows; a callback can then call the layer's ``reset_states()``
        at the start of that batch.
        """
        return self.starts[:, 0].copy()

    def to_rows(self, values):
        """Undo the layout: per-example values back to one array per row.

        Args:
            values: Array ``(n_windows * B, window, ...)`` in the order of the
                examples, e.g. ``model.predict(w.inputs, batch_size=B)`` or
                ``w.targets``.

        Returns:
            Array ``(B, n_windows * window, ...)``: row r is the r-th row of the
            stream (or of the sequences end to end), in time order.

        Example:
            >>> w = tbptt_windows(np.arange(12), window=2, batch_size=2)
            >>> w.to_rows(w.inputs).tolist()
            [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
        """
        values = np.asarray(values)
        b, t = self.batch_size, self.window
        if values.shape[:2] != (self.n_windows * b, t):
            raise ValueError(
                f"values must have shape ({self.n_windows * b}, {t}, ...), one window per "
                f"example like the inputs; got {values.shape}.")
        rest = values.shape[2:]
        out = values.reshape(self.n_windows, b, t, *rest).swapaxes(0, 1)
        return np.ascontiguousarray(out).reshape(b, self.n_windows * t, *rest)

    def check_order(self, window_index, row=None):
        """Check that examples were seen in the order a stateful RNN needs.

        Args:
            window_index: The ``window_index`` markers of the examples, in the
                order they were fed (e.g. recorded by the model, or the
                ``window_index`` of the data after whatever reordering was
                done to it). A prefix of an epoch is fine.
            row: Their ``row`` markers, optional.

        Raises:
            ValueError: At the first example out of order, naming it and the
                fix (train with ``shuffle=False`` and ``batch_size`` equal to
                the number of rows).
        """
        seen = np.asarray(window_index).reshape(-1)
        expected = np.arange(len(seen)) % len(self.window_index) // self.batch_size
        rows = None if row is None else np.asarray(row).reshape(-1)
        if rows is not None and len(rows) != len(seen):
            raise ValueError(
                f"row must have one marker per example, like window_index ({len(seen)}), "
                f"got {len(rows)}."
            )
        wrong = seen != expected
        if rows is not None:
            wrong |= rows != np.arange(len(rows)) % self.batch_size
        if wrong.any():
            e = int(np.argmax(wrong))
            got = f"window {seen[e]}" + ("" if rows is None else f", row {rows[e]}")
            want = f"window {expected[e]}" + ("" if rows is None else f", row {e % self.batch_size}")
            raise ValueError(
                f"windows are out of order: example {e} is {got}, expected {want}. A stateful "
                f"RNN needs window i of every row in batch i: train with model.fit(..., "
                f"batch_size={self.batch_size}, shuffle=False) and do not reorder the windows."
            )

    def __repr__(self):
        return (
            f"Windows(inputs={self.inputs.shape}, "
            f"targets={None if self.targets is None else self.targets.shape}, "
            f"batch_size={self.batch_size}, window={self.window}, n_windows={self.n_windows}, "
            f"dropped={self.dropped})"
        )


def _to_windows(rows, batch_size, n_windows, window):
    """(B, n_windows * T, ...) rows -> (n_windows * B, T, ...) examples, window-major."""
    rest = rows.shape[2:]
    out = rows.reshape(batch_size, n_windows, window, *rest).swapaxes(0, 1)
    return np.ascontiguousarray(out).reshape(n_windows * batch_size, window, *rest)


def _markers(n_windows, batch_size):
    e = np.arange(n_windows * batch_size, dtype=np.int64)
    return e // batch_size, e % batch_size


def _check_layout(window, batch_size):
    return _check_int("window", window, 1), _check_int("batch_size", batch_size, 1)


def tbptt_windows(stream, window, batch_size, targets=None, mask=None):
    """Lay one long stream out as consecutive windows for stateful truncated BPTT.

    The stream is cut into ``batch_size`` contiguous rows of ``L`` steps,
    ``L`` the largest multiple of ``window`` with ``batch_size * L <= len(stream)``
    (the tail is dropped, as in the usual Penn Treebank batching); row r is
    ``stream[r*L:(r+1)*L]``. Window i of row r is example ``i * batch_size +
    r`` (see :class:`Windows`). Each row is one sequence: ``starts`` is True
    only at the first step of each row.

    Args:
        stream: Array ``(N, ...)``, the time axis first.
        window: Steps per window, the truncation length T.
        batch_size: Number of rows, the batch size to train with.
        targets: Optional array ``(N, ...)`` aligned with ``stream`` (for
            next-step prediction use :func:`next_step_windows`).
        mask: Optional ``(N,)`` weights of the steps to score.

    Returns:
        A :class:`Windows`.

    Example:
        >>> w = tbptt_windows(np.arange(10), window=2, batch_size=2)  # rows [0..3], [4..7]
        >>> w.inputs[2].tolist(), w.dropped        # window 1 of row 0; 8 and 9 dropped
        ([2, 3], 2)
    """
    window, batch_size = _check_layout(window, batch_size)
    stream = np.asarray(stream)
    if stream.ndim < 1:
        raise ValueError(f"stream must be an array with time as its first axis, got {stream!r}.")
    n = len(stream)
    length = n // batch_size // window * window
    if length == 0:
        raise ValueError(
            f"stream has {n} steps, too few for batch_size={batch_size} rows of at least one "
            f"window of {window} steps; pass a stream of at least {batch_size * window} steps, "
            "or a smaller batch_size or window."
        )
    aligned = {"targets": targets, "mask": mask}
    for name, value in aligned.items():
        if value is not None and len(value) != n:
            raise ValueError(
                f"{name} must have one entry per step of the stream ({n}), got {len(value)}."
            )
    used = batch_size * length
    n_windows = length // window

    def lay(a):
        a = np.asarray(a)[:used]
        return _to_windows(a.reshape(batch_size, length, *a.shape[1:]), batch_size, n_windows, window)

    weights = np.ones(n, np.float32) if mask is None else np.asarray(mask, np.float32)
    starts = np.zeros((batch_size, length), bool)
    starts[:, 0] = True
    window_index, row = _markers(n_windows, batch_size)
    return Windows(
        inputs=lay(stream),
        targets=None if targets is None else lay(targets),
        mask=lay(weights),
        starts=_to_windows(starts, batch_size, n_windows, window),
        window_index=window_index,
        row=row,
        batch_size=batch_size,
        window=window,
        dropped=n - used,
    )


def next_step_windows(ids, window, batch_size):
    """Windows for next-step prediction on one stream, e.g. characters of a text.

    Inputs are ``ids[:-1]`` and targets ``ids[1:]`` (each step's target is the
    next element), laid out by :func:`tbptt_windows`. With a
    :class:`~credit.data.TextCorpus`, ``next_step_windows(corpus.train, 100,
    32)`` gives integer inputs and targets of shape ``(n, 100)`` for an
    ``Embedding`` + stateful LSTM trained with sparse categorical
    cross-entropy; the loss divided by ln 2 is bits per character.

    Args:
        ids: Array ``(N, ...)``, time first.
        window: Steps per window.
        batch_size: Number of rows.

    Returns:
        A :class:`Windows` with inputs and targets.

    Example:
        >>> w = next_step_windows(np.arange(9), window=2, batch_size=2)
        >>> w.inputs.tolist(), w.targets.tolist()
        ([[0, 1], [4, 5], [2, 3], [6, 7]], [[1, 2], [5, 6], [3, 4], [7, 8]])
    """
    ids = np.asarray(ids)
    if ids.ndim < 1 or len(ids) < 2:
        raise ValueError(f"ids must be a sequence of at least 2 steps, got shape {ids.shape}.")
    return tbptt_windows(ids[:-1], window, batch_size, targets=ids[1:])


def tbptt_sequence_windows(sequences, window, batch_size, targets=None, mask=None,
                           align=False):
    """Lay independent sequences end to end as windows for stateful truncated BPTT.

    The sequences are dealt to ``batch_size`` rows in contiguous blocks: with
    ``k = len(sequences) // batch_size``, row r holds sequences ``r*k`` to
    ``r*k + k - 1`` end to end (the last ``len(sequences) - k * batch_size``
    are dropped). Each row is padded at its end with zeros (mask 0) to the
    same length, a multiple of ``window``, and cut into windows as in
    :func:`tbptt_windows`. ``starts`` is True at the first step of every
    sequence: the state carried in from the previous sequence must be reset
    there (by the model, given the flag as an input, or by a callback at
    window boundaries, see :attr:`Windows.resets`). A sequence may straddle
    two windows; that is how truncated BPTT meets dependencies longer than the
    window.

    Args:
        sequences: A :class:`~credit.data.SequenceBatch` (its targets and mask
            are used), an array ``(n, steps, ...)``, or a list of arrays
            ``(steps_k, ...)`` of any lengths.
        window: Steps per window.
        batch_size: Number of rows.
        targets: The sequences' targets, in the same form; ignored for a
            :class:`SequenceBatch`.
        mask: Per-step weights of the sequences, ``(n, steps)`` or a list of
            ``(steps_k,)``; ignored for a :class:`SequenceBatch`.
        align: Pad each sequence at its end with zeros (mask 0) to a whole number
            of windows, so that every sequence begins at a window's first step:
            the state can then be reset between batches where ``resets`` says
            (``credit.recurrent.StatefulWindows`` does), and no window mixes two
            sequences.

    Returns:
        A :class:`Windows`; ``dropped`` counts the sequences left out.

    Example:
        >>> from credit.data import copy_task
        >>> b = copy_task(length=2, n=4, bits=3, seed=0)       # 4 sequences of 5 steps
        >>> w = tbptt_sequence_windows(b, window=5, batch_size=2)
        >>> w.inputs.shape, w.resets.tolist()                  # each window one sequence
        ((4, 5, 4), [True, True, True, True])
    """
    window, batch_size = _check_layout(window, batch_size)
    if isinstance(sequences, SequenceBatch):
        sequences, targets, mask = sequences.inputs, sequences.targets, sequences.mask
    sequences = [np.asarray(s) for s in sequences]
    n = len(sequences)
    if any(s.ndim < 1 for s in sequences):
        raise ValueError("sequences must each have time as their first axis; got a scalar.")
    per_row = n // batch_size
    if per_row == 0:
        raise ValueError(
            f"got {n} sequences, fewer than batch_size={batch_size} rows; pass at least "
            f"{batch_size} sequences or a smaller batch_size."
        )
    lengths = [len(s) for s in sequences]

    def aligned(name, value):
        if value is None:
            return None
        value = [np.asarray(v) for v in value]
        if len(value) != n or any(len(v) != k for v, k in zip(value, lengths)):
            raise ValueError(
                f"{name} must hold one array per sequence, as long as the sequence "
                f"({n} sequences); got {len(value)} arrays of lengths "
                f"{[len(v) for v in value][:5]}..."
            )
        return value

    targets = aligned("targets", targets)
    mask = aligned("mask", mask)
    if mask is None:
        mask = [np.ones(k, np.float32) for k in lengths]
    starts = [np.eye(1, k, dtype=bool)[0] for k in lengths]
    if align:
        def pad(parts):
            return [np.concatenate([p, np.zeros((-len(p) % window, *p.shape[1:]), p.dtype)])
                    for p in parts]

        sequences, starts = pad(sequences), pad(starts)
        targets = None if targets is None else pad(targets)
        mask = pad([np.asarray(m, np.float32) for m in mask])
        lengths = [len(s) for s in sequences]
    row_lengths = [sum(lengths[r * per_row:(r + 1) * per_row]) for r in range(batch_size)]
    length = -(-max(row_lengths) // window) * window     # rounded up to whole windows
    n_windows = length // window

    def lay(parts):
        first = parts[0]
        rows = np.zeros((batch_size, length, *first.shape[1:]), dtype=first.dtype)
        for r in range(batch_size):
            block = parts[r * per_row:(r + 1) * per_row]
            if any(p.shape[1:] != first.shape[1:] for p in block):
                raise ValueError(
                    f"every sequence must have the same shape after the time axis, got "
                    f"{first.shape[1:]} and {[p.shape[1:] for p in block]}."
                )
            rows[r, :row_lengths[r]] = np.concatenate(block)
        return _to_windows(rows, batch_size, n_windows, window)

    window_index, row = _markers(n_windows, batch_size)
    return Windows(
        inputs=lay(sequences),
        targets=None if targets is None else lay(targets),
        mask=lay([np.asarray(m, np.float32) for m in mask]),
        starts=lay(starts),
        window_index=window_index,
        row=row,
        batch_size=batch_size,
        window=window,
        dropped=n - per_row * batch_size,
    )
