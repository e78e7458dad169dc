"""Basket-size profiles: the basket recommender's parameters, one set per basket size (pure).

A profile is ``{"basket_params_by_size": {"1": {...}, "2": {...}, "5+": {...}, "default": {...}}}``
(the peer system's format), plus an optional top-level ``"active": "<name>"`` (the profile a
query uses unless told; a run stores the one it chose on validation there): a size uses its own key, else the largest ``"N+"`` with N ≤ size,
else ``"default"``; each set only names what differs from `DEFAULTS`. A bad key or parameter
is refused in one line naming the profile and the key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, float] = {
    # linear score
    "W_PAIR": 0.6,  # pair score (segment pairs + PAIR_ANY_WEIGHT × any-segment + REV_WEIGHT × reverse)
    "PAIR_ANY_WEIGHT": 0.4,
    "REV_WEIGHT": 0.3,
    "W_EMB": 0.3,  # cosine of the item embedding to the basket centroid
    "W_POPP": 0.2,  # segment popularity (of the given or detected segment mix)
    "W_POPG": 0.0,  # global popularity
    "W_COVER": 0.1,  # bonus × share of the basket's items that link to the candidate
    "W_PL_BASE": 0.0,  # private label: constant bonus
    "W_PL_PER_BASK_PL": 0.0,  # private label: bonus × the basket's private-label share
    # candidate pool
    "TOP_PAIRS": 100,  # neighbours per basket item (segment pairs)
    "TOP_PAIRS_ANY_FRAC": 0.3,  # any-segment neighbours = this × TOP_PAIRS
    "TOP_REV": 30,  # predecessors per basket item
    "TOP_POPP": 100,
    "TOP_POPG": 50,
    # selection
    "PAIR_QUOTA": 2,  # at least this many pair-based items when the pool has them
    "DIVERSIFY": 0,  # 1: MMR
    "MMR_LAMBDA": 0.7,
    "CAP_PER_AISLE": 0,  # 0: no cap
    # segment auto-detection
    "SEGMIX_TOPK": 2,
    "SEGMIX_TEMP": 0.1,
}
_INT = {"TOP_PAIRS", "TOP_REV", "TOP_POPP", "TOP_POPG", "PAIR_QUOTA", "DIVERSIFY", "CAP_PER_AISLE", "SEGMIX_TOPK"}
_SIZE_KEY = re.compile(r"^[1-9][0-9]*\+?\Z")

PROFILES_FILE = Path(__file__).with_name("profiles.json")
ACTIVE = "active"  # the top-level key naming the default profile, not a profile
FALLBACK = "precision_pair_heavy"  # the default when a file names none


class ProfileError(ValueError):
    """A profile that cannot be used, named with its bad key."""


def validate(profiles: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """``{profile: {size key: full parameter set}}``, or `ProfileError` naming the bad key."""
    if not isinstance(profiles, dict) or not profiles:
        raise ProfileError("basket profiles: expected a JSON object of named profiles")
    out = {}
    for name, body in profiles.items():
        if name == ACTIVE:
            continue
        sets = body.get("basket_params_by_size") if isinstance(body, dict) else None
        if not isinstance(sets, dict) or not sets:
            raise ProfileError(f"basket profile {name!r}: missing the basket_params_by_size object")
        out[name] = {key: _params(name, key, values) for key, values in sets.items()}
        if sum(k.endswith("+") for k in out[name]) > 1:
            raise ProfileError(f"basket profile {name!r}: more than one \"N+\" key ({', '.join(k for k in out[name] if k.endswith('+'))})")
    if not out:
        raise ProfileError("basket profiles: no profile besides \"active\"")
    if ACTIVE in profiles and (not isinstance(profiles[ACTIVE], str) or profiles[ACTIVE] not in out):
        raise ProfileError(f"basket profiles: key \"active\" names {profiles[ACTIVE]!r}, not one of the profiles ({', '.join(out)})")
    return out


def active(profiles: dict[str, Any]) -> str:
    """The default profile of a profiles JSON: its ``"active"`` key, else `FALLBACK` when
    present, else the first."""
    names = [n for n in profiles if n != ACTIVE]
    return profiles.get(ACTIVE) or (FALLBACK if FALLBACK in names else names[0])


def _params(profile: str, key: str, values: Any) -> dict[str, float]:
    if key != "default" and not _SIZE_KEY.match(key):
        raise ProfileError(f"basket profile {profile!r}: key {key!r} is not \"default\", a basket size (\"1\", \"2\", …) or \"N+\"")
    if not isinstance(values, dict):
        raise ProfileError(f"basket profile {profile!r}: key {key!r} must map to an object of parameters")
    params = dict(DEFAULTS)
    for p, v in values.items():
        if p not in DEFAULTS:
            raise ProfileError(f"basket profile {profile!r}: key {key!r}: unknown parameter {p!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ProfileError(f"basket profile {profile!r}: key {key!r}: {p} must be a number >= 0, got {v!r}")
        params[p] = int(v) if p in _INT else float(v)
    return params


def for_size(profile: dict[str, dict[str, float]], size: int) -> tuple[str, dict[str, float]]:
    """The key a basket of ``size`` items uses, and its parameters."""
    if str(size) in profile:
        return str(size), profile[str(size)]
    plus = [k for k in profile if k.endswith("+") and int(k[:-1]) <= size]
    if plus:
        return plus[0], profile[plus[0]]
    return ("default", profile["default"]) if "default" in profile else ("defaults", dict(DEFAULTS))


def raw(path: str | Path | None = None) -> dict[str, Any]:
    """The JSON of a profiles file as written (the package's `PROFILES_FILE` by default)."""
    path = Path(path or PROFILES_FILE)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def load(path: str | Path | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """The validated profiles of a JSON file (the package's `PROFILES_FILE` by default)."""
    return validate(raw(path))


def single(**params: float) -> dict[str, dict[str, float]]:
    """A one-set profile (every size uses ``params`` over the defaults): the evaluation's
    single-component methods."""
    return validate({"_": {"basket_params_by_size": {"default": params}}})["_"]
