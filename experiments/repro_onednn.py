"""Plain-Keras reproduction of the oneDNN fault that aborted the zoo's ResNet on MNIST.

The fault: ``python -m experiments.compare --quick --models resnet --methods backprop
--datasets mnist`` aborted the process (``munmap_chunk(): invalid pointer``, ``double
free or corruption`` or a segmentation fault; exit 134 or 139) on the machine where it
was reported, under backprop too, and ran with ``TF_ENABLE_ONEDNN_OPTS=0``. TensorFlow
2.21.0 (Keras 3.15.1, oneDNN 3.7.3), CPU only. The model is the zoo's ``--quick``
ResNet-8: a 3x3 convolution of 8 filters, three stages of one residual block (widths 8,
16, 32; convolutions without bias, each followed by batch normalisation; the first block
of stages 2 and 3 has stride 2 and a 1x1 projection shortcut), global average pooling
and a softmax Dense layer, on 28x28x1 inputs, batch 64. On 28x28 inputs its last
stage computes on odd 7x7 feature maps (28 -> 14 -> 7), which the zoo's other image
sizes (8x8 digits: 8 -> 4 -> 2, 32x32 CIFAR: 32 -> 16 -> 8) never give.

What this script does: it trains each case below with plain Keras (no credit), in a fresh
child process per try so that a crash is observed, not suffered, with oneDNN's custom
operations forced on (``TF_ENABLE_ONEDNN_OPTS=1``; ``--onednn off`` for the control). It
prints, per case, how many tries crashed (killed by a signal, or a non-zero exit) and the
last line each crash printed, and exits with status 1 if any try crashed, 0 if none did.

Cases, from the reported one down to single layers:

==============  ================================================================
resnet8_28      the zoo's ResNet-8 on 28x28x1 (the reported case)
resnet8_32      the same model on 32x32x1: even sizes at every stride-2 stage
resnet8_8       the same model on 8x8x1 (digits, on which the zoo ran)
strided_28      Conv2D(8, 3, strides=2, "same") + BatchNorm + ReLU on 28x28x1, pooled
projection_28   the 1x1 stride-2 projection alone: Conv2D(8, 1, strides=2) on 28x28x1
conv_28         Conv2D(8, 3, "same") + BatchNorm + ReLU on 28x28x1, pooled
==============  ================================================================

Findings (2026-12-07; TensorFlow 2.21.0, oneDNN 3.7.3; 2 cores of an AMD EPYC that has
AVX2 but not AVX-512):

- On this CPU TensorFlow leaves its oneDNN custom operations **off** by default: it
  turns them on by default only on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX
  (and then logs "oneDNN custom operations are on"). So here the default and
  ``TF_ENABLE_ONEDNN_OPTS=0`` run the same kernels, and the reported command ran: it
  exited 0 in 4 runs by default, in 3 with ``TF_ENABLE_ONEDNN_OPTS=1`` (oneDNN's AVX2
  convolutions, checked with ``ONEDNN_VERBOSE=1``) and in 1 more under glibc's heap
  checker (``LD_PRELOAD=libc_malloc_debug.so.0 MALLOC_CHECK_=3``). This script with
  oneDNN on (each child reports "oneDNN custom operations on"): ``resnet8_28`` 2 of 2
  tries of 300 steps ok, every case 1 try of 150 steps ok, and 3 earlier tries of the
  same ResNet for 400 steps ok; with ``--onednn off`` ok too.
- So the fault is not reproduced on this machine: oneDNN picks its kernels by
  instruction set, and the report came from a machine where TensorFlow turned oneDNN on
  by itself, i.e. one with those instructions. Run this script there: the cases that
  crash, the smallest first, locate the fault.

The work-around, for every experiment script and every worker of a sweep: the package
``experiments`` sets ``TF_ENABLE_ONEDNN_OPTS=0`` before TensorFlow is imported, unless
it is set (see ``experiments/__init__.py``); and a sweep trains its runs in worker
processes, so a crash that still happens is recorded as a failed run instead of ending
the sweep (``experiments.runner.isolation``).

Usage:
    python -m experiments.repro_onednn                     # resnet8_28, 3 tries
    python -m experiments.repro_onednn --cases all --tries 5
    python -m experiments.repro_onednn --onednn off        # the control
    python -m experiments.repro_onednn --steps 600 --timeout 900
"""

import argparse
import os
import subprocess
import sys
import time

#: case -> (input side, model kind)
CASES = {
    "resnet8_28": (28, "resnet"),
    "resnet8_32": (32, "resnet"),
    "resnet8_8": (8, "resnet"),
    "strided_28": (28, "strided"),
    "projection_28": (28, "projection"),
    "conv_28": (28, "conv"),
}


def build(kind, side):
    """The plain Keras model of a case (imports Keras: call in the child only)."""
    import keras

    inputs = keras.Input((side, side, 1))

    def conv(x, filters, strides=1, kernel=3):
        x = keras.layers.Conv2D(filters, kernel, strides=strides, padding="same",
                                use_bias=False, kernel_initializer="he_normal")(x)
        return keras.layers.BatchNormalization()(x)

    if kind == "resnet":  # the zoo's ResNet-8, widths 8, 16, 32
        x = keras.layers.Activation("relu")(conv(inputs, 8))
        for stage, filters in enumerate((8, 16, 32)):
            strides = 2 if stage > 0 else 1
            shortcut = x
            if strides != 1 or x.shape[-1] != filters:
                shortcut = conv(x, filters, strides, kernel=1)
            h = keras.layers.Activation("relu")(conv(x, filters, strides))
            h = conv(h, filters)
            x = keras.layers.Activation("relu")(keras.layers.Add()([h, shortcut]))
    elif kind == "strided":
        x = keras.layers.Activation("relu")(conv(inputs, 8, strides=2))
    elif kind == "projection":
        x = conv(inputs, 8, strides=2, kernel=1)
    else:
        x = keras.layers.Activation("relu")(conv(inputs, 8))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def child(case, steps, batch):
    """One try: train the case on random images for ``steps`` steps, then evaluate."""
    import numpy as np

    side, kind = CASES[case]
    n = 3600  # the --quick MNIST training split
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, side, side, 1)).astype("float32")
    y = rng.integers(0, 10, n)
    model = build(kind, side)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    epochs = max(1, -(-steps * batch // n))
    begin = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0,
              validation_data=(x[:400], y[:400]))
    model.evaluate(x[:1000], y[:1000], batch_size=256, verbose=0)
    try:  # what TensorFlow decided from TF_ENABLE_ONEDNN_OPTS and the CPU
        from tensorflow.python.util import _pywrap_util_port

        onednn = "on" if _pywrap_util_port.IsMklEnabled() else "off"
    except ImportError:
        onednn = "unknown"
    print(f"ok: {epochs} epochs in {time.perf_counter() - begin:.1f} s, oneDNN custom "
          f"operations {onednn}", flush=True)


def _signal_name(code):
    import signal

    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def try_case(case, args):
    """``(outcome, last line)`` of one try in a child process."""
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1" if args.onednn == "on" else "0",
               TF_CPP_MIN_LOG_LEVEL="3", LIBC_FATAL_STDERR_="1")
    command = [sys.executable, "-m", "experiments.repro_onednn", "--child", case,
               "--steps", str(args.steps), "--batch", str(args.batch)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True,
                              errors="replace", timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"no result in {args.timeout} s"
    if done.returncode == 0:
        return "ok", (done.stdout.strip().splitlines() or [""])[-1]
    # The last line of the crash (glibc's message), not TensorFlow's start-up logs.
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines()
             if line.strip() and not line.startswith(("I0000", "WARNING: All log"))]
    last = lines[-1] if lines else ""
    if done.returncode < 0:
        return f"crashed ({_signal_name(done.returncode)})", last
    return f"crashed (exit {done.returncode})", last


def main(argv=None):
    """Run the tries; returns 1 if any crashed, else 0."""
    p = argparse.ArgumentParser(prog="python -m experiments.repro_onednn",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="resnet8_28",
                   help=f"comma-separated cases, or 'all' ({', '.join(CASES)})")
    p.add_argument("--tries", type=int, default=3, help="tries per case (default 3)")
    p.add_argument("--steps", type=int, default=300, help="training steps per try")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--onednn", choices=("on", "off"), default="on",
                   help="TF_ENABLE_ONEDNN_OPTS=1 (on, default) or 0 (off) in the tries")
    p.add_argument("--timeout", type=int, default=600, help="seconds per try")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.steps, args.batch)
        return 0
    cases = list(CASES) if args.cases == "all" else [c.strip() for c in args.cases.split(",")]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"--cases: unknown case(s) {unknown}; choose from {', '.join(CASES)} or all")
    crashed = 0
    print(f"oneDNN custom operations {args.onednn}; {args.tries} tries per case, "
          f"{args.steps} steps of batch {args.batch}", flush=True)
    for case in cases:
        for i in range(args.tries):
            begin = time.perf_counter()
            outcome, last = try_case(case, args)
            crashed += outcome.startswith("crashed")
            print(f"{case} try {i + 1}: {outcome} after {time.perf_counter() - begin:.0f} s"
                  f" -- {last}", flush=True)
    print(f"{crashed} crashed" if crashed else "no crash")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
