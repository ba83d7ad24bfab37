"""Train / validation / test splits: random (stratified by NT) or grouped (whole neurons,
hemilineages or regions on one side), balanced per NT by an integer program."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array, vstack

from .errors import NtclassError

PARTS = ("train", "validation", "test")


def _check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    unknown = set(fractions) - set(PARTS)
    if unknown:
        raise NtclassError(f"split.fractions has an unknown part '{sorted(unknown)[0]}'; "
                           f"expected {list(PARTS)}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise NtclassError(f"split.fractions add up to {total:g}, expected 1")
    return {p: float(fractions.get(p, 0.0)) for p in PARTS}


def random_split(nts: pd.Series, fractions: Mapping[str, float], seed: int) -> np.ndarray:
    """Stratified by NT: each NT's synapses are shuffled and cut at the target fractions."""
    rng = np.random.default_rng(seed)
    parts = np.empty(len(nts), dtype=object)
    for nt in sorted(nts.unique()):
        idx = np.flatnonzero((nts == nt).to_numpy())
        idx = idx[rng.permutation(len(idx))]
        cuts = np.round(np.cumsum([fractions[p] for p in PARTS]) * len(idx)).astype(int)
        for part, lo, hi in zip(PARTS, np.r_[0, cuts[:-1]], cuts):
            parts[idx[lo:hi]] = part
    return parts


def _solve_group_assignment(counts: np.ndarray, targets: np.ndarray, seed: int,
                            time_limit: float) -> np.ndarray:
    """Assign each group (row of `counts`, synapses per NT) to one part so that the per-NT
    counts of each part come closest to `targets` (NT x part), relative to each NT's size.

    Variables: x[g, p] binary, then under/over deviations d-[c, p], d+[c, p] >= 0.
    """
    n_groups, n_nt = counts.shape
    n_parts = targets.shape[1]
    n_x = n_groups * n_parts
    n_d = n_nt * n_parts
    rng = np.random.default_rng(seed)
    size = counts.sum(axis=0).astype(float)
    # main objective: summed relative deviation; a tie-break far below one synapse of the
    # largest NT makes the seed choose among equally balanced splits
    tie = rng.random(n_x) * 0.5 / (n_x * size.max())
    weights = np.repeat(1.0 / size, n_parts)
    cost = np.concatenate([tie, weights, weights])

    # each group in exactly one part
    g = np.repeat(np.arange(n_groups), n_parts)
    one_part = coo_array((np.ones(n_x), (g, np.arange(n_x))), shape=(n_groups, n_x + 2 * n_d))
    # per NT and part: sum_g counts[g, c] x[g, p] + d-[c, p] - d+[c, p] = target[c, p]
    rows, cols, vals = [], [], []
    for c in range(n_nt):
        nz = np.flatnonzero(counts[:, c])
        for p in range(n_parts):
            r = c * n_parts + p
            rows += [r] * len(nz) + [r, r]
            cols += list(nz * n_parts + p) + [n_x + r, n_x + n_d + r]
            vals += list(counts[nz, c]) + [1.0, -1.0]
    balance = coo_array((vals, (rows, cols)), shape=(n_d, n_x + 2 * n_d))
    a = vstack([one_part, balance]).tocsr()
    rhs = np.concatenate([np.ones(n_groups), targets.ravel()])
    integrality = np.concatenate([np.ones(n_x), np.zeros(2 * n_d)])
    bounds = Bounds(np.zeros(n_x + 2 * n_d),
                    np.concatenate([np.ones(n_x), np.full(2 * n_d, np.inf)]))
    res = milp(cost, constraints=LinearConstraint(a, rhs, rhs), integrality=integrality,
               bounds=bounds, options={"time_limit": time_limit, "presolve": True})
    if res.x is None:
        raise NtclassError(f"the split's integer program found no solution ({res.message})")
    x = res.x[:n_x].reshape(n_groups, n_parts)
    return np.argmax(x, axis=1)


def grouped_split(nts: pd.Series, groups: pd.Series, fractions: Mapping[str, float],
                  seed: int, group_by: str, time_limit: float = 60.0) -> np.ndarray:
    """Every group on one side, per-NT fractions as close to the targets as possible."""
    classes = sorted(nts.unique())
    group_codes, group_values = pd.factorize(groups, sort=True)
    nt_codes = pd.Categorical(nts, categories=classes).codes
    counts = np.zeros((len(group_values), len(classes)))
    np.add.at(counts, (group_codes, nt_codes), 1)
    parts = [p for p in PARTS if fractions[p] > 0]
    for c, nt in enumerate(classes):
        n_groups = int((counts[:, c] > 0).sum())
        if n_groups < len(parts):
            raise NtclassError(
                f"cannot split NT '{nt}' by '{group_by}': it has {n_groups} group(s) but "
                f"{len(parts)} parts ({', '.join(parts)}) need one each; add data, lower the "
                "number of parts, or group by another column")
    targets = counts.sum(axis=0)[:, None] * np.array([fractions[p] for p in parts])[None, :]
    # the seed also permutes the groups so that different seeds explore different optima
    perm = np.random.default_rng(seed).permutation(len(group_values))
    assigned = np.empty(len(group_values), dtype=int)
    assigned[perm] = _solve_group_assignment(counts[perm], targets, seed, time_limit)
    return np.array(parts, dtype=object)[assigned][group_codes]


def check_balance(table: pd.DataFrame, fractions: Mapping[str, float], max_deviation: float,
                  method: str) -> None:
    """Refuse a split whose per-NT fraction in some part is off its target by too much."""
    counts = pd.crosstab(table["nt"], table["split"])
    for nt, row in counts.iterrows():
        total = row.sum()
        for part in PARTS:
            got = row.get(part, 0) / total
            if abs(got - fractions[part]) > max_deviation + 1e-9:
                raise NtclassError(
                    f"the {method} split cannot keep NT '{nt}' within {max_deviation:.0%} of "
                    f"the target fractions: {part} holds {got:.1%} of its {total} synapses "
                    f"(target {fractions[part]:.0%}); use smaller groups, more data, or raise "
                    "split.max_deviation")


def make_split(table: pd.DataFrame, method: str, fractions: Mapping[str, float], seed: int,
               group_by: str = "pre_id", max_deviation: float = 0.05,
               time_limit: float = 60.0) -> pd.DataFrame:
    """Return `table` with a `split` column: train / validation / test for labelled synapses,
    empty for unlabelled ones."""
    fractions = _check_fractions(fractions)
    out = table.copy()
    out["split"] = pd.array([pd.NA] * len(out), dtype="string")
    labelled = out["nt"].notna().to_numpy()
    if not labelled.any():
        raise NtclassError("the synapse source has no labelled synapse (column 'nt') to split")
    nts = out.loc[labelled, "nt"].reset_index(drop=True)
    if method == "random":
        parts = random_split(nts, fractions, seed)
    elif method == "grouped":
        if group_by not in out:
            raise NtclassError(f"split.group_by '{group_by}' is not a column of the synapse "
                               f"table (columns: {', '.join(out.columns)})")
        groups = out.loc[labelled, group_by].reset_index(drop=True)
        if groups.isna().any():
            sid = out.loc[labelled, "synapse_id"].reset_index(drop=True)[groups.isna()].iloc[0]
            raise NtclassError(f"synapse {sid} has no '{group_by}', which the grouped split "
                               "needs for every labelled synapse")
        parts = grouped_split(nts, groups.astype(str), fractions, seed, group_by, time_limit)
    else:
        raise NtclassError(f"split.method '{method}' is unknown; expected random or grouped")
    out.loc[labelled, "split"] = parts
    check_balance(out[labelled], fractions, max_deviation, method)
    return out


def apply_given_split(table: pd.DataFrame, assignment_path: str) -> pd.DataFrame:
    """Return `table` with the parts of a split file (`synapse_id`, `split`), which must
    name every labelled synapse of the table and nothing else."""
    from .synapses import read_table_file

    origin = f"split file '{assignment_path}'"
    given = read_table_file(assignment_path)
    for col in ("synapse_id", "split"):
        if col not in given:
            raise NtclassError(f"{origin} has no column '{col}'; expected columns "
                               "synapse_id and split")
    ids = pd.to_numeric(given["synapse_id"], errors="coerce")
    if ids.isna().any() or (ids != ids.round()).any():
        raise NtclassError(f"{origin}: column 'synapse_id' must hold integers")
    given = pd.DataFrame({"synapse_id": ids.astype(np.int64),
                          "split": given["split"].astype("string")})
    bad = ~given["split"].isin(PARTS)
    if bad.any():
        row = given[bad].iloc[0]
        raise NtclassError(f"{origin}: synapse {row.synapse_id} is in part '{row.split}'; "
                           f"expected one of {', '.join(PARTS)}")
    dup = given["synapse_id"].duplicated()
    if dup.any():
        raise NtclassError(f"{origin}: synapse_id {given['synapse_id'][dup].iloc[0]} occurs "
                           "more than once")
    labelled = table.loc[table["nt"].notna(), "synapse_id"]
    unknown = given.loc[~given["synapse_id"].isin(labelled), "synapse_id"]
    if len(unknown):
        raise NtclassError(
            f"{origin} does not match the data: synapse {unknown.iloc[0]} (and "
            f"{len(unknown) - 1} more) is not a labelled synapse of the synapse source")
    missing = labelled[~labelled.isin(given["synapse_id"])]
    if len(missing):
        raise NtclassError(
            f"{origin} does not match the data: labelled synapse {missing.iloc[0]} (and "
            f"{len(missing) - 1} more) of the synapse source has no part in it")
    parts = given.set_index("synapse_id")["split"]
    out = table.copy()
    out["split"] = pd.array(out["synapse_id"].map(parts), dtype="string")
    return out


def summarise(manifest: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Synapses per NT and part, with each part's fraction of the NT."""
    labelled = manifest[manifest["split"].notna()]
    counts = pd.crosstab(labelled["nt"], labelled["split"]).reindex(
        index=list(classes), columns=list(PARTS), fill_value=0)
    total = counts.sum(axis=1)
    summary = counts.copy()
    for part in PARTS:
        summary[f"{part}_fraction"] = (counts[part] / total.where(total > 0)).round(4)
    summary.insert(0, "total", total)
    return summary.rename_axis("nt").reset_index()


def split_source(source: dict, classes: Sequence[str], voxel_size: Sequence[int],
                 split: Mapping, manifest_out: str, summary_out: str) -> pd.DataFrame:
    """Read the configured source, split it, write the manifest and its summary."""
    from .io import write_csv
    from .synapses import read_source

    table = read_source(source, classes, voxel_size)
    if split["method"] == "given":
        manifest = apply_given_split(table, split["assignment"])
    else:
        manifest = make_split(table, split["method"], split["fractions"], split["seed"],
                              split.get("group_by", "pre_id"), split["max_deviation"],
                              split.get("time_limit", 60.0))
    summary = summarise(manifest, classes)
    write_csv(manifest, manifest_out)
    write_csv(summary, summary_out)
    return manifest
