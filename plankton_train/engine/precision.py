"""How a run computes: the precision names and the torch.compile backends, without importing torch.

The CLI offers these names before torch loads (``--help`` stays light); :func:`plankton_train.engine.device.autocast`
and :func:`plankton_train.engine.device.compile_model` apply them. A run records the *resolved* precision
(``bf16`` or ``fp32``, never ``auto``) and its compile setting in its configuration, so a resumed run keeps them
and a finished run says how it was trained.

* ``bf16``: forward passes under ``torch.autocast(device, dtype=torch.bfloat16)``: matmuls and attention in
  bfloat16, weights, optimiser state, losses and reductions in float32. bf16 has float32's exponent range, so no
  loss scaling is needed (fp16 overflows in ViT-L attention). The same on a CPU (slower there, but it is how CI
  exercises the GPU path).
* ``fp32``: no autocast (on a GPU, matmuls outside autocast may use TF32: ``set_float32_matmul_precision("high")``).
* ``auto``: ``bf16`` on CUDA, ``fp32`` elsewhere (the behaviour before ``--precision`` existed).
"""

from __future__ import annotations

#: What ``--precision`` accepts.
PRECISIONS = ("auto", "bf16", "fp32")

#: ``torch.compile`` backends a run may name. ``inductor`` (what ``--compile`` uses) generates kernels: Triton on a
#: GPU, C++ on a CPU (needs a C++ compiler; a cold compile of even the tiny test MAE takes about a minute on 2
#: cores). ``aot_eager`` captures the same graphs (dynamo, graph breaks, AOT autograd) and runs them with eager
#: kernels: the CPU smoke check uses it to exercise the compiled code path in seconds.
COMPILE_BACKENDS = ("inductor", "aot_eager")


def resolve_precision(precision: str, device_type: str) -> str:
    """``auto`` -> ``bf16`` on CUDA, ``fp32`` elsewhere; ``bf16``/``fp32`` unchanged.

    Raises:
        ValueError: an unknown name (configs check it first, with their own error class).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return precision


def precision_problem(precision: str, compile_backend: str) -> str | None:
    """One line naming what is wrong with a precision / compile backend pair, or ``None``."""
    bad = []
    if precision not in PRECISIONS:
        bad.append(f"precision={precision!r} ({' | '.join(PRECISIONS)})")
    if compile_backend not in COMPILE_BACKENDS:
        bad.append(f"compile_backend={compile_backend!r} ({' | '.join(COMPILE_BACKENDS)})")
    return ", ".join(bad) or None
