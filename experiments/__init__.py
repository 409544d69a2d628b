"""Batch scripts over methods x data sets x seeds: the paper's experiments and the benchmark.

Importing this package turns TensorFlow's oneDNN custom operations off
(``TF_ENABLE_ONEDNN_OPTS=0``) unless the variable is already set. Every entry point
(``python -m experiments.<script>``) and every worker process of a sweep imports this
package before TensorFlow, which reads the variable once, at its own import.

Why: on a CPU where TensorFlow 2.21 turns oneDNN on by itself (one with AVX512_VNNI,
AVX512_BF16, AVX_VNNI or AMX), training the zoo's ResNet on 28x28 MNIST aborted the
process (``munmap_chunk(): invalid pointer``, ``double free or corruption``,
segmentation faults), under backprop too, and ran with the option off;
``experiments/repro_onednn.py`` is the plain-Keras reproduction and says what was found.
With the option off TensorFlow runs its own (Eigen) kernels, as it does by default on
CPUs without those instructions, where this changes nothing. Set
``TF_ENABLE_ONEDNN_OPTS=1`` to measure with oneDNN anyway.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
