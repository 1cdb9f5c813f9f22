"""Numbers and parameter sets as people read them: `0.4123`, `1.33e-3`, `7.78e6`, and `captions=alt, lr=1.33e-3`
rather than `{"data.captions": "alt", "optim.lr": 0.0013274414292574908}`.

Tables, figure labels, the launcher's messages and `ablate train`'s summary all format through here, so a
value prints alike wherever it appears. Full precision stays in MLflow and the Optuna storage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

SCIENTIFIC_BELOW = 1e-2  # 0.00133 reads better as 1.33e-3; accuracies (0.0123 and up) stay decimal


def number(value: object, digits: int = 4) -> str:
    """`digits` significant digits; scientific (`1.33e-3`, `7.78e6`, no `+` or leading zero in the exponent)
    below 0.01 and from 10^digits up; integers, and floats that are integers below 10^digits, without a point."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) and abs(value) < 10**digits:
        return str(value)
    value = float(value)
    if not math.isfinite(value) or value == 0:
        return f"{value:g}"
    if SCIENTIFIC_BELOW <= abs(value) < 10**digits:
        return f"{value:.{digits}g}"
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def params_text(params: Mapping[str, object], digits: int = 3) -> str:
    """`captions=alt, lr=1.33e-3`: each parameter by the last part of its dotted name (the whole name where two
    share that part), numbers to `digits` significant digits, in the given order."""
    short = [name.rsplit(".", 1)[-1] for name in params]
    keys = [name if short.count(part) > 1 else part for name, part in zip(params, short, strict=True)]
    return ", ".join(f"{key}={number(value, digits)}" for key, value in zip(keys, params.values(), strict=True))


def table_number(value: float, digits: int = 4, signed: bool = False) -> str:
    """A statistic in a report: `digits` decimals for accuracies and the like, `digits` significant digits from
    1000 up (parameter counts read 6.306e+06 ± 2.398e+05, not 6306066.0000 ± 239807.6893)."""
    sign = "+" if signed else ""
    return f"{value:{sign}.{digits}g}" if abs(value) >= 1000 else f"{value:{sign}.{digits}f}"
