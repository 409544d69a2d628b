"""A character-level text corpus that ships with Python, and bits per character.

Character-level language modelling on Penn Treebank is the DNI paper's
recurrent benchmark (Jaderberg et al. 2016, §3.1), scored in bits per character
(Graves 2013). Penn Treebank cannot be shipped; the Python documentation topics
in :mod:`pydoc_data.topics` can: about 465,000 characters of English prose and
code in every CPython installation, split like Penn Treebank into contiguous
train / validation / test chunks.
"""

import dataclasses
import hashlib
import math
import sys

import numpy as np

from credit.data._base import _check_fraction, _check_int

#: What an unknown character decodes to; its id is always 0.
UNKNOWN = "\ufffd"


@dataclasses.dataclass(frozen=True, eq=False)
class TextCorpus:
    """A character-level corpus: integer-encoded splits and their vocabulary.

    Id 0 is the unknown character: every character that is not in the
    vocabulary encodes to 0 and 0 decodes to ``UNKNOWN`` (U+FFFD). The other
    ids are the vocabulary's characters in code-point order.

    Attributes:
        name: Name of the corpus.
        train: int32 ids of the training text, one per character, in order.
        valid: int32 ids of the validation text.
        test: int32 ids of the test text.
        vocab: The characters, ``vocab[i]`` for id ``i``; ``vocab[0]`` is
            ``UNKNOWN``.
        source: Where the text came from (module, Python version, length and
            a hash of the text, since the corpus changes between Python
            versions).

    Example:
        >>> corpus = pydoc_text()
        >>> corpus.decode(corpus.encode("for x in y:"))
        'for x in y:'
    """

    name: str
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    vocab: tuple
    source: str

    @property
    def vocab_size(self):
        """Number of ids, the unknown character included."""
        return len(self.vocab)

    def encode(self, text):
        """Encode a string as int32 ids; unknown characters become 0.

        Args:
            text: A string.

        Returns:
            A 1-D int32 array, one id per character.
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a string, got {type(text).__name__}; pass a str.")
        index = {c: i for i, c in enumerate(self.vocab) if i > 0}
        return np.fromiter((index.get(c, 0) for c in text), dtype=np.int32, count=len(text))

    def decode(self, ids):
        """Decode ids to a string; id 0 becomes ``UNKNOWN``.

        Args:
            ids: A sequence of ids in ``range(vocab_size)``.

        Returns:
            The string.
        """
        ids = np.asarray(ids)
        if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0
                         or ids.max() >= len(self.vocab)):
            raise ValueError(
                f"ids must be integers in [0, {len(self.vocab)}) (the vocabulary size), got "
                f"values from {ids.min()} to {ids.max()} of dtype {ids.dtype}."
            )
        return "".join(self.vocab[i] for i in ids.reshape(-1).tolist())

    def __repr__(self):
        return (
            f"TextCorpus(name={self.name!r}, vocab_size={self.vocab_size}, "
            f"train={len(self.train)}, valid={len(self.valid)}, test={len(self.test)}, "
            f"source={self.source!r})"
        )


def pydoc_text_string():
    """The raw corpus: the Python documentation topics joined in sorted-key order.

    Each topic of ``pydoc_data.topics.topics`` (keyed by name, e.g.
    ``"assert"``, ``"with"``) is taken in sorted key order and the texts are
    joined with a newline. The text is the same on every run of one Python
    version; other versions ship other topics.

    Returns:
        The corpus as one string.

    Example:
        >>> pydoc_text_string()[:22]
        'The "assert" statement'
    """
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics))


def pydoc_text(valid_fraction=0.05, test_fraction=0.05, min_count=1):
    """The Python documentation topics as a character-level language-modelling corpus.

    The text of :func:`pydoc_text_string` is cut, like Penn Treebank, into
    three contiguous chunks: the first ``1 - valid_fraction -
    test_fraction`` of the characters for training, then validation, then
    test (so the test text is the last topics alphabetically). Nothing is
    random: the corpus depends only on the Python version.

    The vocabulary is every character that occurs at least ``min_count``
    times in the training chunk, in code-point order, after id 0, the unknown
    character. Rarer characters, and characters that occur only in the
    validation or test chunks, encode to 0. With ``min_count=1`` (the
    default) and Python 3.11 no character is unknown: every character of the
    validation and test chunks occurs in training (103 in all). A larger
    ``min_count`` folds rare characters (typographic quotes, accented
    letters) into the unknown id, which then also occurs in training, so a
    model learns its probability.

    Args:
        valid_fraction: Fraction of the characters in the validation chunk.
        test_fraction: Fraction of the characters in the test chunk.
        min_count: Least number of occurrences in the training chunk for a
            character to get its own id.

    Returns:
        A :class:`TextCorpus`. Score a model with :func:`bits_per_character`.

    Example:
        >>> corpus = pydoc_text()
        >>> corpus.vocab[0] == UNKNOWN, corpus.train.dtype
        (True, dtype('int32'))
    """
    valid_fraction = _check_fraction("valid_fraction", valid_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    if valid_fraction + test_fraction >= 1:
        raise ValueError(
            f"valid_fraction + test_fraction must be below 1 to leave text for training, got "
            f"{valid_fraction} + {test_fraction}; pass for example valid_fraction=0.05, "
            "test_fraction=0.05."
        )
    min_count = _check_int("min_count", min_count, 1)
    text = pydoc_text_string()
    n = len(text)
    valid_start = int(round(n * (1 - valid_fraction - test_fraction)))
    test_start = int(round(n * (1 - test_fraction)))
    chunks = text[:valid_start], text[valid_start:test_start], text[test_start:]
    characters, counts = np.unique(np.array(list(chunks[0])), return_counts=True)
    vocab = (UNKNOWN,) + tuple(sorted(str(c) for c, k in zip(characters, counts) if k >= min_count))
    digest = hashlib.sha256(text.encode("utf8")).hexdigest()[:12]
    version = ".".join(map(str, sys.version_info[:3]))
    corpus = TextCorpus(
        name="pydoc_text",
        train=np.empty(0, np.int32),
        valid=np.empty(0, np.int32),
        test=np.empty(0, np.int32),
        vocab=vocab,
        source=(
            f"pydoc_data.topics of Python {version}: {n} characters, sha256 {digest}; "
            f"contiguous split {len(chunks[0])} / {len(chunks[1])} / {len(chunks[2])}; "
            f"vocabulary of characters seen >= {min_count} times in train"
        ),
    )
    return dataclasses.replace(
        corpus, train=corpus.encode(chunks[0]), valid=corpus.encode(chunks[1]), test=corpus.encode(chunks[2])
    )


def bits_per_character(targets, outputs, from_logits=False, mask=None):
    """Mean negative log2-likelihood of the target characters: bits per character.

    The same number as a Keras ``SparseCategoricalCrossentropy`` (mean over
    all steps, natural log) divided by ln 2.

    Args:
        targets: Integer ids, any shape ``(...)``.
        outputs: Probabilities over the vocabulary (or logits with
            ``from_logits=True``), shape ``(..., vocab_size)``.
        from_logits: Whether ``outputs`` are logits.
        mask: Optional weights of shape ``(...)``, e.g. 0 on padding; the
            mean is over the weighted characters.

    Returns:
        Bits per character, a Python float. Probabilities are clipped below
        at 1e-12, so one impossible character costs about 40 bits.

    Example:
        >>> bits_per_character([0, 1], [[0.5, 0.5], [0.5, 0.5]])
        1.0
    """
    targets = np.asarray(targets)
    outputs = np.asarray(outputs, dtype=np.float64)
    if not np.issubdtype(targets.dtype, np.integer) or outputs.shape[:-1] != targets.shape:
        raise ValueError(
            f"targets must be integer ids of shape (...) and outputs of shape (..., vocab_size); "
            f"got targets {targets.shape} of dtype {targets.dtype} and outputs {outputs.shape}."
        )
    if targets.size and (targets.min() < 0 or targets.max() >= outputs.shape[-1]):
        raise ValueError(
            f"targets must be ids in [0, {outputs.shape[-1]}) (the outputs' last axis), got "
            f"values from {targets.min()} to {targets.max()}."
        )
    if from_logits:
        shifted = outputs - outputs.max(axis=-1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    else:
        log_p = np.log(np.clip(outputs, 1e-12, None))
    nats = -np.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
    weights = np.ones(targets.shape) if mask is None else np.asarray(mask, dtype=np.float64)
    if weights.shape != targets.shape:
        raise ValueError(f"mask must have the targets' shape {targets.shape}, got {weights.shape}.")
    if weights.sum() <= 0:
        raise ValueError("mask weights no character; pass a mask with some positive weights.")
    return float((nats * weights).sum() / weights.sum() / math.log(2.0))
