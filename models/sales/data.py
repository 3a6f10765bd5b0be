"""Synthetic daily store sales (numpy; pandas only inside ``frame``), deterministic per seed.

Each record is one store on one day of 2022-2024: the store (8 of them, ``s01``..``s08``),
the day of the week (0 = Monday), the month, whether it is a public holiday, whether a
promotion runs, the shelf price and the distance to the nearest competitor. The target,
``units_sold``, is multiplicative as retail demand is: the store's base level x weekly
and yearly seasonality x promotion lift x price elasticity (-1.6 around 10.00) x holiday
rush x a nearby competitor's pull, with lognormal day-to-day noise and Poisson counts.
So a model has real structure to learn (interactions, a non-linear distance effect) and
a noise floor it cannot beat (held-out R^2 near 0.95 at best).

``INPUT_SCHEMA`` is the manifest's ``input_schema`` (models/schema.py); ``encode_frame``
is the same encoding as ``Schema.encode``, written out here so that training needs no
schema implementation and the tests can check the two against each other.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "DAYS",
    "DEFAULT_DISTANCE_KM",
    "FEATURES",
    "INPUT_SCHEMA",
    "MONTHS",
    "STORES",
    "TARGET",
    "encode_frame",
    "frame",
    "make_sales",
    "records",
    "train_test",
]

STORES: tuple[str, ...] = tuple(f"s{i:02d}" for i in range(1, 9))
DAYS = 7
MONTHS = 12
TARGET = "units_sold"
DEFAULT_DISTANCE_KM = 5.0
TEST_SEED_OFFSET = 10_000

INPUT_SCHEMA: list[dict[str, Any]] = [
    {"name": "store", "dtype": "category", "required": True, "default": None,
     "categories": list(STORES)},
    {"name": "day_of_week", "dtype": "int", "required": True, "default": None,
     "categories": []},
    {"name": "month", "dtype": "int", "required": True, "default": None, "categories": []},
    {"name": "holiday", "dtype": "bool", "required": True, "default": None, "categories": []},
    {"name": "promo", "dtype": "bool", "required": True, "default": None, "categories": []},
    {"name": "price", "dtype": "float", "required": True, "default": None, "categories": []},
    {"name": "competitor_distance_km", "dtype": "float", "required": False,
     "default": DEFAULT_DISTANCE_KM, "categories": []},
]
FEATURES: tuple[str, ...] = tuple(f["name"] for f in INPUT_SCHEMA)

# Store base demand (units on an average day at the reference price) and the typical
# distance to its nearest competitor (km): a city store close to rivals, a rural one not.
_BASE = np.array([120.0, 185.0, 90.0, 240.0, 150.0, 310.0, 105.0, 205.0])
_DISTANCE = np.array([0.6, 2.5, 12.0, 1.2, 6.0, 0.9, 18.0, 4.0])
# Monday..Sunday, January..December.
_WEEKLY = np.array([0.86, 0.88, 0.93, 0.97, 1.12, 1.32, 0.92])
_MONTHLY = np.array([0.86, 0.84, 0.94, 0.98, 1.00, 1.02, 1.06, 1.04, 0.96, 0.99, 1.09, 1.32])
# Fixed-date public holidays (month, day): shoppers stock up, sales rise.
_HOLIDAYS = ((1, 1), (1, 6), (5, 1), (7, 4), (8, 15), (10, 3), (11, 1), (11, 11),
             (12, 24), (12, 25), (12, 26), (12, 31))
_HOLIDAY_LIFT = 1.35
_PROMO_LIFT = 1.30  # display and advertising, on top of the discount's own effect
_PROMO_DISCOUNT = 0.85
_REFERENCE_PRICE = 10.0
_ELASTICITY = -1.6
_COMPETITOR_PULL = 0.35  # share of demand lost to a competitor next door
_COMPETITOR_SCALE_KM = 2.0
_NOISE = 0.08  # lognormal sigma of day-to-day demand
_START = np.datetime64("2022-01-01")
_SPAN_DAYS = 3 * 365 + 1


def make_sales(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` records as columns (numpy arrays keyed by field name, plus ``units_sold``).

    Stores are drawn uniformly, days uniformly over 2022-2024; the same seed gives the
    same columns on any platform (only numpy's seeded Generator is used).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    store = rng.integers(0, len(STORES), size=n)
    day = _START + rng.integers(0, _SPAN_DAYS, size=n).astype("timedelta64[D]")
    day_of_week = (day.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    first = day.astype("datetime64[M]")
    month = first.astype(np.int64) % 12 + 1
    dom = (day - first.astype("datetime64[D]")).astype(np.int64) + 1
    holiday = np.zeros(n, dtype=bool)
    for m, d in _HOLIDAYS:
        holiday |= (month == m) & (dom == d)
    promo = rng.random(n) < 0.3
    shelf = _REFERENCE_PRICE * rng.uniform(0.85, 1.2, size=n)
    price = np.round(np.where(promo, shelf * _PROMO_DISCOUNT, shelf), 2)
    distance = np.round(_DISTANCE[store] * np.exp(rng.normal(0.0, 0.3, size=n)), 1)
    distance = np.maximum(distance, 0.1)

    expected = (
        _BASE[store]
        * _WEEKLY[day_of_week]
        * _MONTHLY[month - 1]
        * np.where(holiday, _HOLIDAY_LIFT, 1.0)
        * np.where(promo, _PROMO_LIFT, 1.0)
        * (price / _REFERENCE_PRICE) ** _ELASTICITY
        * (1.0 - _COMPETITOR_PULL * np.exp(-distance / _COMPETITOR_SCALE_KM))
    )
    units = rng.poisson(expected * np.exp(rng.normal(0.0, _NOISE, size=n))).astype(np.float64)
    return {
        "store": store,
        "day_of_week": day_of_week,
        "month": month,
        "holiday": holiday,
        "promo": promo,
        "price": price,
        "competitor_distance_km": distance,
        TARGET: units,
    }


def records(n: int, seed: int = 0, *, with_target: bool = False) -> list[dict[str, Any]]:
    """``n`` records as JSON-ready dicts (plain str/int/bool/float), for requests and demos.

    Without ``with_target`` they hold exactly the schema's fields, so a server's schema
    accepts them as they are; with it, ``units_sold`` too (the label for feedback).
    """
    cols = make_sales(n, seed)
    out = []
    for i in range(n):
        rec: dict[str, Any] = {
            "store": STORES[int(cols["store"][i])],
            "day_of_week": int(cols["day_of_week"][i]),
            "month": int(cols["month"][i]),
            "holiday": bool(cols["holiday"][i]),
            "promo": bool(cols["promo"][i]),
            "price": float(cols["price"][i]),
            "competitor_distance_km": float(cols["competitor_distance_km"][i]),
        }
        if with_target:
            rec[TARGET] = float(cols[TARGET][i])
        out.append(rec)
    return out


def frame(n: int, seed: int = 0) -> tuple[Any, np.ndarray]:
    """``n`` records as a pandas DataFrame in schema order (store as its name, int, bool and
    float columns) and the target ``units_sold`` as float64 ``(n,)``."""
    import pandas as pd

    cols = make_sales(n, seed)
    data = {name: cols[name] for name in FEATURES}
    data["store"] = np.asarray(STORES, dtype=object)[cols["store"]]
    df = pd.DataFrame(data, columns=list(FEATURES))
    return df, cols[TARGET].copy()


def train_test(
    n_train: int = 4000, n_test: int = 1000, seed: int = 0
) -> tuple[tuple[Any, np.ndarray], tuple[Any, np.ndarray]]:
    """The training frame and a held-out frame drawn with another seed (same distribution)."""
    return frame(n_train, seed), frame(n_test, seed + TEST_SEED_OFFSET)


def encode_frame(df: Any) -> np.ndarray:
    """A frame of the schema's fields as the float64 ``(n, 7)`` matrix ``Schema.encode`` makes:
    schema order, the store as its index in ``STORES``, bools as 0/1."""
    index = {s: i for i, s in enumerate(STORES)}
    out = np.empty((len(df), len(FEATURES)), dtype=np.float64)
    for j, name in enumerate(FEATURES):
        col = df[name]
        if name == "store":
            out[:, j] = [index[str(s)] for s in col]
        else:
            out[:, j] = np.asarray(col, dtype=np.float64)
    return out
