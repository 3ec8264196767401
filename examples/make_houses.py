"""Generate examples/houses.csv: a small table whose price is a known linear function.

Run from the repository root:

    python examples/make_houses.py            # writes examples/houses.csv (200 rows)
    python examples/make_houses.py --rows 1000 --out /tmp/houses.csv

price_k = 1.8 * area_m2 + 12 * rooms - 0.9 * age_years - 6.5 * distance_km + 40 + noise,
with noise ~ N(0, 5^2). The columns have very different scales, which is what
`torchlr train --standardize` is for.
"""

from __future__ import annotations

import argparse
import csv
import pathlib

import numpy as np

COLUMNS = ("area_m2", "rooms", "age_years", "distance_km")
WEIGHTS = (1.8, 12.0, -0.9, -6.5)
BIAS = 40.0
NOISE = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(pathlib.Path(__file__).with_name("houses.csv")))
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    area = rng.uniform(30, 200, args.rows).round(1)
    rooms = rng.integers(1, 7, args.rows).astype(float)
    age = rng.uniform(0, 80, args.rows).round(0)
    distance = rng.uniform(0.5, 25, args.rows).round(2)
    X = np.stack([area, rooms, age, distance], axis=1)
    price = X @ np.array(WEIGHTS) + BIAS + rng.normal(0, NOISE, args.rows)
    with open(args.out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*COLUMNS, "price_k"])
        for row, p in zip(X, price):
            writer.writerow([f"{v:g}" for v in row] + [f"{p:.2f}"])


if __name__ == "__main__":
    main()
