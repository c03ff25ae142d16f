"""Generated raw files with every quirk of the real formats, and tiny per-line
reference parsers that compute the expected arrays independently of the pipeline.

Nothing here imports the pipeline's parsing helpers: the references are plain Python, one line
at a time, written from the format and protocol descriptions.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np

MISSING_HEX = 1 << 32  # documented order of a missing Criteo category: after every 8-hex value


# ---- Criteo ------------------------------------------------------------------------------------
def criteo_rows(n: int, seed: int = 0, pool: int = 40) -> list[tuple[int, list, list]]:
    """Rows (label, 13 ints or None, 26 hex strings or None) with negative ints, missing values
    and Zipf-like repeated categories (lower- and upper-case hex never both: Criteo is lower)."""
    rng = random.Random(seed)
    pools = [[rng.getrandbits(32) for _ in range(pool)] for _ in range(26)]
    rows = []
    for _ in range(n):
        label = int(rng.random() < 0.3)
        ints = []
        for j in range(13):
            r = rng.random()
            if r < 0.15:
                ints.append(None)
            elif r < 0.25:
                ints.append(rng.choice([-1, -2, -3]))
            else:
                ints.append(rng.choice([0, 1, 2, 3, 4, 7, 20, 99, 1000, 65535, 123456789]))
        cats = []
        for j in range(26):
            if rng.random() < (0.5 if j >= 20 else 0.05):
                cats.append(None)
            else:
                k = min(int(rng.paretovariate(1.0)) - 1, pool - 1)
                cats.append(f"{pools[j][k]:08x}")
        rows.append((label, ints, cats))
    return rows


def criteo_line(label, ints, cats, strip: bool = False) -> str:
    fields = [str(label)] + ["" if v is None else str(v) for v in ints] + ["" if c is None else c for c in cats]
    if strip:
        while fields and fields[-1] == "":
            fields.pop()
    return "\t".join(fields) + "\n"


def write_criteo(path: Path, rows, strip_every: int = 0) -> Path:
    """One line per row; every ``strip_every``-th line with trailing empty fields stripped."""
    with open(path, "w", newline="") as f:
        for i, (label, ints, cats) in enumerate(rows):
            f.write(criteo_line(label, ints, cats, strip=bool(strip_every) and i % strip_every == 0))
    return path


def parse_criteo_reference(path: Path):
    """Per line: split on tabs, pad stripped lines to 40 fields, decode."""
    out = []
    with open(path) as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            fields += [""] * (40 - len(fields))
            label = int(fields[0])
            ints = [int(x) if x else None for x in fields[1:14]]
            cats = [int(x, 16) if x else None for x in fields[14:40]]
            out.append((label, ints, cats))
    return out


def dlrm_dense_reference(ints) -> list[float]:
    return [math.log(max(0 if v is None else v, 0) + 1.0) for v in ints]


def bars_bucket_reference(v) -> int:
    v = 0 if v is None else v
    return int(math.floor(math.log(v) ** 2)) if v > 2 else int(v)


# ---- vocabularies ------------------------------------------------------------------------------
def fit_vocab(train_values, min_count: int, order_key, all_values=None) -> tuple[dict, list[int]]:
    """Index of each kept value: 1.. by decreasing training count, ties by ``order_key``;
    returns (value -> index, counts per index with the OOV count first). ``all_values`` (a full
    vocabulary): every one of them is kept too, with training count 0 when not in training."""
    counts = Counter(train_values)
    values = set(counts) | set(all_values or ())
    kept = sorted((v for v in values if all_values is not None or counts[v] >= min_count),
                  key=lambda v: (-counts[v], order_key(v)))
    index = {v: i + 1 for i, v in enumerate(kept)}
    oov = sum(c for v, c in counts.items() if v not in index)
    return index, [oov] + [counts[v] for v in kept]


def hex_order(v) -> int:
    return MISSING_HEX if v is None else v


def token_order(v: str | None) -> bytes:
    """Short ASCII tokens sort by their bytes (the empty/missing token first)."""
    return b"" if v is None else v.encode()


# ---- splits ------------------------------------------------------------------------------------
def _kfold_test_indices(n_samples: int, n_splits: int, seed: int):
    """scikit-learn 0.19.1 ``KFold(n_splits, shuffle=True, random_state=seed)._iter_test_indices``."""
    indices = np.arange(n_samples)
    np.random.RandomState(seed).shuffle(indices)
    fold_sizes = (n_samples // n_splits) * np.ones(n_splits, dtype=int)
    fold_sizes[: n_samples % n_splits] += 1
    current = 0
    for fold_size in fold_sizes:
        yield indices[current:current + fold_size]
        current += fold_size


def sklearn019_test_folds(y, n_splits: int = 10, seed: int = 2018) -> np.ndarray:
    """A transcription of scikit-learn 0.19.1 ``StratifiedKFold._make_test_folds`` with an int
    ``random_state`` (passed as is to every per-class KFold)."""
    y = np.asarray(y)
    unique_y, y_inversed = np.unique(y, return_inverse=True)
    y_counts = np.bincount(y_inversed)
    per_cls_cvs = [_kfold_test_indices(max(count, n_splits), n_splits, seed) for count in y_counts]
    test_folds = np.zeros(len(y), dtype=int)
    for test_fold_indices, per_cls_splits in enumerate(zip(*per_cls_cvs)):
        for cls, test_split in zip(unique_y, per_cls_splits):
            cls_test_folds = test_folds[y == cls]
            test_split = test_split[test_split < len(cls_test_folds)]
            cls_test_folds[test_split] = test_fold_indices
            test_folds[y == cls] = cls_test_folds
    return test_folds


def split_names_bars(labels) -> list[str]:
    folds = sklearn019_test_folds(labels)
    return ["test" if f == 0 else "val" if f == 1 else "train" for f in folds]


def split_names_dlrm(n: int) -> list[str]:
    """facebookresearch/dlrm: divmod into 7 parts (first ``n % 7`` one longer), 6 train, the last
    halved with ``np.array_split`` (test first)."""
    size, extras = divmod(n, 7)
    parts = [size + (1 if j < extras else 0) for j in range(7)]
    n_train = sum(parts[:6])
    test, _ = (len(a) for a in np.array_split(np.arange(parts[6]), 2))
    return ["train"] * n_train + ["test"] * test + ["val"] * (parts[6] - test)


# ---- Avazu -------------------------------------------------------------------------------------
AVAZU_HEADER = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,"
                "device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21")


def avazu_rows(n: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        # unsigned 64-bit ids, most above 2**63 (int64 overflows)
        ident = str(rng.randrange(10**19, 2**64))
        day = rng.choice(range(21, 31))  # 2014-10-21 (Tuesday) .. 2014-10-30, a weekend inside
        hour = f"1410{day:02d}{rng.randrange(24):02d}"
        cols = [ident, str(int(rng.random() < 0.17)), hour, rng.choice(["1005", "1002", "1010"]),
                rng.choice(["0", "1", "7"])]
        for _ in range(9):  # site_*, app_*, device_id, device_ip, device_model: 8 hex chars
            cols.append(f"{rng.choice([0x1fbe01fe, 0xf3845767, 0x28905ebd, 0xecad2386, 0x7801e8d9, rng.getrandbits(32)]):08x}")
        cols += [rng.choice(["1", "0", "4"]), rng.choice(["0", "2", "3"])]
        cols += [str(rng.choice([15706, 15704, 20362, 21611])), "320", "50", str(rng.choice([1722, 2161])), "0",
                 str(rng.choice([35, 1063])), str(rng.choice([-1, 100084, 100148])), str(rng.choice([79, 157]))]
        rows.append(cols)
    return rows


def write_avazu(path: Path, rows) -> Path:
    with open(path, "w", newline="") as f:
        f.write(AVAZU_HEADER + "\n")
        for r in rows:
            f.write(",".join(r) + "\n")
    return path


def avazu_reference(rows):
    """(label, 24 field values) per row: hour-of-day, 21 tokens, weekday (%w), weekend."""
    out = []
    for r in rows:
        h = r[2]
        day = dt.date(2000 + int(h[0:2]), int(h[2:4]), int(h[4:6]))
        weekday = int(day.strftime("%w"))
        out.append((int(r[1]), [int(h[6:8]), *r[3:], weekday, int(weekday in (0, 6))]))
    return out


# ---- MovieLens -----------------------------------------------------------------------------------
def write_movielens(folder: Path, n_ratings: int = 400, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    occupations = ["technician", "other", "writer", "administrator", "entertainment", "student"]
    genres = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Drama", "Thriller", "Sci-Fi"]
    users = [(u, rng.randrange(7, 73), rng.choice("MF"), rng.choice(occupations), f"{rng.randrange(100000):05d}")
             for u in range(1, 31)]
    items = []
    for i in range(1, 41):
        g = sorted(rng.sample(genres, rng.randrange(1, 4)))
        items.append((i, f"Movie {i} (The Sequel)", str(rng.randrange(1930, 1999)), " ".join(g)))
    with open(folder / "ml-100k.user", "w") as f:
        f.write("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n")
        for u in users:
            f.write("\t".join(map(str, u)) + "\n")
    with open(folder / "ml-100k.item", "w") as f:
        f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
        for it in items:
            f.write("\t".join(map(str, it)) + "\n")
    with open(folder / "ml-100k.inter", "w") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for _ in range(n_ratings):
            f.write(f"{rng.randrange(1, 31)}\t{rng.randrange(1, 41)}\t{rng.randrange(1, 6)}\t{rng.randrange(874724710, 893286638)}\n")
    return folder


def movielens_reference(folder: Path, genre: str = "combination"):
    """(label, 8 field values) per rating, by plain line splitting of the typed-header files."""
    def table(name):
        lines = (folder / name).read_text().splitlines()
        header = [h.split(":")[0] for h in lines[0].split("\t")]
        return [dict(zip(header, line.split("\t"))) for line in lines[1:]]

    users = {u["user_id"]: u for u in table("ml-100k.user")}
    items = {i["item_id"]: i for i in table("ml-100k.item")}
    out = []
    for r in table("ml-100k.inter"):
        u, i = users[r["user_id"]], items[r["item_id"]]
        g = i["class"] if genre == "combination" else i["class"].split()[0]
        out.append((int(float(r["rating"]) >= 4),
                    [r["user_id"], r["item_id"], u["age"], u["gender"], u["occupation"], u["zip_code"],
                     i["release_year"], g]))
    return out


def random_split_names(n: int, fractions=(0.8, 0.1, 0.1), seed: int = 2018) -> list[str]:
    order = np.random.default_rng(seed).permutation(n)
    n_train, n_val = int(n * fractions[0]), int(n * fractions[1])
    names = ["test"] * n
    for j in order[:n_train]:
        names[j] = "train"
    for j in order[n_train:n_train + n_val]:
        names[j] = "val"
    return names


# ---- checking a prepared dataset against reference rows ------------------------------------------
def expected_arrays(values: list[list], names: list[str], min_counts: list[int], order_keys: list,
                    vocabulary: str = "train"):
    """Reference (cat arrays per split, counts, cardinalities) from per-row field values;
    ``vocabulary="all"``: every value of every row has its own index."""
    n_fields = len(min_counts)
    split_rows = {s: [i for i, n in enumerate(names) if n == s] for s in ("train", "val", "test")}
    cats = {s: np.zeros((len(r), n_fields), dtype=np.int64) for s, r in split_rows.items()}
    counts, cards = [], []
    for f in range(n_fields):
        every = [row[f] for row in values] if vocabulary == "all" else None
        index, cnt = fit_vocab([values[i][f] for i in split_rows["train"]], min_counts[f], order_keys[f], every)
        counts.append(cnt)
        cards.append(len(index) + 1)
        for s, r in split_rows.items():
            cats[s][:, f] = [index.get(values[i][f], 0) for i in r]
    return cats, counts, cards, split_rows


def assert_matches(arrays, labels: list[int], values: list[list], names: list[str], min_counts: list[int],
                   order_keys: list, dense: list[list[float]] | None = None, fields: list[int] | None = None,
                   vocabulary: str = "train") -> None:
    """The prepared ``arrays`` equal the reference; ``fields`` picks the categorical columns that
    ``values`` describe (default: all, in order)."""
    fields = list(range(len(min_counts))) if fields is None else fields
    cats, counts, cards, split_rows = expected_arrays(values, names, min_counts, order_keys, vocabulary)
    assert [arrays.cardinalities[f] for f in fields] == cards
    for j, f in enumerate(fields):
        np.testing.assert_array_equal(np.asarray(arrays.counts[f]), counts[j], err_msg=f"counts of field {f}")
    for s, rows in split_rows.items():
        split = arrays.splits[s]
        assert len(split) == len(rows), s
        np.testing.assert_array_equal(np.asarray(split.cat)[:, fields], cats[s], err_msg=f"{s} categories")
        np.testing.assert_array_equal(np.asarray(split.label), [labels[i] for i in rows], err_msg=f"{s} labels")
        if dense is not None:
            np.testing.assert_allclose(np.asarray(split.dense), np.array([dense[i] for i in rows]).reshape(len(rows), -1),
                                       rtol=1e-6, atol=1e-6, err_msg=f"{s} dense")
