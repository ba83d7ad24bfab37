"""Train / validation / test splits: random (stratified by NT) or grouped (whole neurons,
hemilineages or regions on one side), balanced per NT by an integer program."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from ntclass.errors import NtclassError
from ntclass.ids import to_ids
from ntclass.settings import Split
from ntclass.sources.kinds import Source

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class SplitOptions:
    """How hard the grouped split's integer program works: limits that depend on the
    problem alone (never on the clock), so every machine finds the same split."""

    node_limit: int = Split.default("node_limit")
    mip_gap: float = Split.default("mip_gap")


# weight of the secondary objective (groups per part) against the main one (synapses per
# part): balancing one group never outweighs a hundredth of an average group's synapses
GROUP_BALANCE_WEIGHT = 0.01


def _deviation_rows(counts: np.ndarray, n_parts: int, first_row: int, first_col: int):
    """Equality rows sum_g counts[g, c] x[g, p] + under[c, p] - over[c, p] = target[c, p],
    one per (c, p); the deviations are columns from `first_col` on (under, then over)."""
    n_nt = counts.shape[1]
    n_d = n_nt * n_parts
    rows, cols, vals = [], [], []
    for c in range(n_nt):
        nz = np.flatnonzero(counts[:, c])
        for p in range(n_parts):
            r = c * n_parts + p
            rows += [first_row + r] * len(nz) + [first_row + r] * 2
            cols += list(nz * n_parts + p) + [first_col + r, first_col + n_d + r]
            vals += list(counts[nz, c]) + [1.0, -1.0]
    return rows, cols, vals


def _solve_group_assignment(counts: np.ndarray, targets: np.ndarray, seed: int,
                            options: SplitOptions) -> tuple[np.ndarray, dict]:
    """Assign each group (row of `counts`, synapses per NT) to one part so that the per-NT
    synapse counts of each part come closest to `targets` (NT x part), relative to each
    NT's size; secondarily, so that each NT's groups spread over the parts by the same
    fractions. Returns the part of each group and the solver's report.

    Variables: x[g, p] binary; deviations of synapses and of groups per (NT, part), >= 0.
    """
    n_groups, n_nt = counts.shape
    n_parts = targets.shape[1]
    n_x = n_groups * n_parts
    n_d = n_nt * n_parts
    # the last variable is fixed at 1 with cost 1: an objective offset that turns HiGHS's
    # relative gap into an absolute one on the summed deviations (whose best value is
    # often near 0, where a relative gap never closes)
    n_var = n_x + 4 * n_d + 1
    present = (counts > 0).astype(float)
    fractions = targets / targets.sum(axis=1, keepdims=True)
    group_targets = present.sum(axis=0)[:, None] * fractions
    rng = np.random.default_rng(seed)
    size = counts.sum(axis=0).astype(float)
    # a tie-break far below one synapse of the largest NT makes the seed choose among
    # equally balanced splits
    tie = rng.random(n_x) * 0.5 / (n_x * size.max())
    synapse_weights = np.repeat(1.0 / size, n_parts)
    group_weights = np.repeat(GROUP_BALANCE_WEIGHT / present.sum(axis=0), n_parts)
    cost = np.concatenate([tie, synapse_weights, synapse_weights, group_weights,
                           group_weights, [1.0]])

    g = np.repeat(np.arange(n_groups), n_parts)
    rows, cols, vals = list(g), list(range(n_x)), [1.0] * n_x  # each group in one part
    for block, (table, first_col) in enumerate(((counts, n_x), (present, n_x + 2 * n_d))):
        r, c, v = _deviation_rows(table, n_parts, n_groups + block * n_d, first_col)
        rows, cols, vals = rows + r, cols + c, vals + v
    a = coo_array((vals, (rows, cols)), shape=(n_groups + 2 * n_d, n_var)).tocsr()
    rhs = np.concatenate([np.ones(n_groups), targets.ravel(), group_targets.ravel()])
    integrality = np.concatenate([np.ones(n_x), np.zeros(4 * n_d + 1)])
    bounds = Bounds(np.concatenate([np.zeros(n_var - 1), [1.0]]),
                    np.concatenate([np.ones(n_x), np.full(4 * n_d, np.inf), [1.0]]))
    res = milp(cost, constraints=LinearConstraint(a, rhs, rhs), integrality=integrality,
               bounds=bounds, options={"node_limit": options.node_limit,
                                       "mip_rel_gap": options.mip_gap, "presolve": True})
    if res.x is None:
        raise NtclassError(
            f"the grouped split's integer program found no split within split.node_limit "
            f"{options.node_limit} nodes ({res.message}); raise split.node_limit")
    # the gap in the objective's own unit: how much lower the objective (summed per-NT
    # fraction deviations, plus group-count deviations weighted GROUP_BALANCE_WEIGHT) of a
    # better split could be. "optimal" is HiGHS's stop within mip_rel_gap, which is relative
    # to the objective plus its offset of 1: the gap may then reach mip_gap x (1 + objective)
    report = {"optimal": bool(res.status == 0),
              "gap": max(float(res.fun - res.mip_dual_bound), 0.0),
              "nodes": int(res.mip_node_count)}
    x = res.x[:n_x].reshape(n_groups, n_parts)
    return np.argmax(x, axis=1), report


def grouped_split(nts: pd.Series, groups: pd.Series, fractions: Mapping[str, float],
                  seed: int, group_by: str, options: SplitOptions = SplitOptions()
                  ) -> tuple[np.ndarray, dict]:
    """Every group on one side, per-NT fractions as close to the targets as possible.
    Returns the part of each synapse and the solver's report."""
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
    assigned[perm], report = _solve_group_assignment(counts[perm], targets, seed, options)
    if not report["optimal"]:
        log.warning("the grouped split stopped at split.node_limit %d nodes without proving "
                    "its balance within split.mip_gap %g of the best possible: a better split "
                    "may exist, whose summed per-NT fraction deviations are lower by at most "
                    "%.4g; raise split.node_limit for it", options.node_limit,
                    options.mip_gap, report["gap"])
    return np.array(parts, dtype=object)[assigned][group_codes], report


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
               group_by: str = Split.default("group_by"),
               max_deviation: float = Split.default("max_deviation"),
               options: SplitOptions = SplitOptions(), origin: str = "the synapse source",
               unknown_groups: Sequence[str] = ()) -> tuple[pd.DataFrame, dict]:
    """Return `table` with a `split` column (train / validation / test for labelled
    synapses, empty for unlabelled ones) and the grouped split solver's report.
    `unknown_groups`: values of `group_by` that mean 'unknown' (see
    `separate_unknown_groups`)."""
    fractions = _check_fractions(fractions)
    out = table.copy()
    out["split"] = pd.array([pd.NA] * len(out), dtype="string")
    labelled = out["nt"].notna().to_numpy()
    if not labelled.any():
        raise NtclassError(f"{origin} has no labelled synapse (column 'nt') to split")
    nts = out.loc[labelled, "nt"].reset_index(drop=True)
    report: dict = {}
    if method == "random":
        parts = random_split(nts, fractions, seed)
    elif method == "grouped":
        groups = out.loc[labelled, group_by].reset_index(drop=True) if group_by in out else None
        if groups is None or groups.isna().all():
            raise NtclassError(
                f"{origin} has no column '{group_by}' (or no value in it), which the grouped "
                f"split (split.group_by) needs; add the column or use split.method random")
        if groups.isna().any():
            sid = out.loc[labelled, "synapse_id"].reset_index(drop=True)[groups.isna()].iloc[0]
            raise NtclassError(f"{origin}: labelled synapse {sid} has no '{group_by}', which "
                               "the grouped split needs for every labelled synapse")
        if unknown_groups:
            neurons = out.loc[labelled, "pre_id"].reset_index(drop=True)
            groups = separate_unknown_groups(groups, neurons, unknown_groups)
        parts, report = grouped_split(nts, groups.astype(str), fractions, seed, group_by,
                                      options)
    else:
        raise NtclassError(f"split.method '{method}' is unknown; expected random or grouped")
    out.loc[labelled, "split"] = parts
    check_balance(out[labelled], fractions, max_deviation, method)
    return out, report


def apply_given_split(table: pd.DataFrame, assignment_path: str) -> pd.DataFrame:
    """Return `table` with the parts of a split file (`synapse_id`, `split`), which must
    name every labelled synapse of the table and nothing else."""
    from ntclass.sources.synapses import read_table_file

    origin = f"split file '{assignment_path}'"
    given = read_table_file(assignment_path, "split file")
    for col in ("synapse_id", "split"):
        if col not in given:
            raise NtclassError(f"{origin} has no column '{col}'; expected columns "
                               "synapse_id and split")
    ids = to_ids(given["synapse_id"], "synapse_id", origin)
    if ids.isna().any():
        raise NtclassError(f"{origin}: column 'synapse_id' has an empty value at row "
                           f"{int(np.flatnonzero(ids.isna().to_numpy())[0])}")
    given = pd.DataFrame({"synapse_id": ids, "split": given["split"].astype("string")})
    bad = ~given["split"].isin(PARTS)
    if bad.any():
        row = given[bad].iloc[0]
        raise NtclassError(f"{origin}: synapse {row.synapse_id} is in part '{row.split}'; "
                           f"expected one of {', '.join(PARTS)}")
    dup = given["synapse_id"].duplicated()
    if dup.any():
        raise NtclassError(f"{origin}: synapse_id {given['synapse_id'][dup].iloc[0]} occurs "
                           "more than once")
    return _with_parts(table, given, origin)


def _left_out(table: pd.DataFrame) -> pd.Series:
    """Unlabelled synapses that have an NT all the same: of an NT outside the classes, or
    of a neuron with several (a given split may well name them; they are not trained)."""
    out = pd.Series(False, index=table.index)
    for col in ("nt_other", "nt_candidates"):
        if col in table:
            out |= table[col].notna()
    return out & table["nt"].isna()


def _with_parts(table: pd.DataFrame, given: pd.DataFrame, origin: str) -> pd.DataFrame:
    """`table` with the parts of `given` (synapse_id, split), which must name every
    labelled synapse and no synapse the source does not have as labelled (parts of the
    synapses left out are dropped)."""
    left_out = table.loc[_left_out(table), "synapse_id"]
    dropped = given["synapse_id"].isin(left_out)
    if dropped.any():
        log.info("%s: %d synapses with a part are left out (an NT outside the classes, or "
                 "several NTs)", origin, int(dropped.sum()))
        given = given[~dropped]
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


def apply_stored_split(table: pd.DataFrame, name: str, origin: str) -> pd.DataFrame:
    """`table` with the parts of a split stored in its source (column `stored_split`,
    Synister's `splits.<name>`), checked like a split file."""
    where = f"the split '{name}' stored in {origin} (splits.{name})"
    stored = table[table["stored_split"].notna()] if "stored_split" in table else table[:0]
    if stored.empty:
        raise NtclassError(f"{where} is empty: no synapse document has a part in it")
    bad = ~stored["stored_split"].isin(PARTS)
    if bad.any():
        row = stored[bad].iloc[0]
        raise NtclassError(f"{where}: synapse {row.synapse_id} is in part "
                           f"'{row.stored_split}'; expected one of {', '.join(PARTS)}")
    given = pd.DataFrame({"synapse_id": stored["synapse_id"],
                          "split": stored["stored_split"].astype("string")})
    return _with_parts(table, given, where).drop(columns="stored_split")


def separate_unknown_groups(groups: pd.Series, neurons: pd.Series,
                            unknown: Sequence[str]) -> pd.Series:
    """`groups` in which a value meaning 'unknown' (compared without case) no longer joins
    its neurons into one group: each neuron with one is a group of its own."""
    names = {str(u).upper() for u in unknown}
    is_unknown = groups.astype("string").str.upper().isin(names).fillna(False)
    if not is_unknown.any():
        return groups
    own = "unknown:" + neurons.astype("string").fillna("no-neuron")
    # neurons without an id: each synapse alone
    own = own.where(neurons.notna(), "unknown-synapse:" + pd.Series(
        range(len(groups)), index=groups.index).astype(str))
    return groups.astype("string").where(~is_unknown, own)


def summarise(manifest: pd.DataFrame, classes: Sequence[str], group_by: str = "pre_id",
              report: Mapping | None = None, unknown_groups: Sequence[str] = ()
              ) -> pd.DataFrame:
    """Synapses per NT and part with each part's fraction of the NT; groups (`group_by`,
    e.g. neurons) per NT and part, counted as the split made them (each neuron with an
    `unknown_groups` value a group of its own); the grouped split's optimality gap; and two
    rows that count the unlabelled synapses, and among them those of neurons with several
    known NTs."""
    labelled = manifest[manifest["split"].notna()]
    if group_by in labelled and unknown_groups:
        labelled = labelled.assign(**{group_by: separate_unknown_groups(
            labelled[group_by], labelled["pre_id"], unknown_groups)})
    counts = pd.crosstab(labelled["nt"], labelled["split"]).reindex(
        index=list(classes), columns=list(PARTS), fill_value=0)
    total = counts.sum(axis=1)
    summary = counts.copy()
    for part in PARTS:
        summary[f"{part}_fraction"] = (counts[part] / total.where(total > 0)).round(4)
    if group_by in labelled and labelled[group_by].notna().any():
        groups = labelled.groupby(["nt", "split"], observed=True)[group_by].nunique()
        groups = groups.unstack(fill_value=0).reindex(index=list(classes), columns=list(PARTS),
                                                      fill_value=0)
        for part in PARTS:
            summary[f"{part}_groups"] = groups[part].astype(int)
    summary.insert(0, "total", total)
    summary = summary.rename_axis("nt").reset_index()
    unlabelled = manifest["nt"].isna()
    several = (manifest["nt_candidates"].notna() & unlabelled if "nt_candidates" in manifest
               else pd.Series(False, index=manifest.index))
    other = (manifest["nt_other"].dropna().value_counts().sort_index()
             if "nt_other" in manifest else pd.Series(dtype=int))
    names = ["unlabelled", "unlabelled_several_nts", *(f"left_out_{nt}" for nt in other.index)]
    extra = pd.DataFrame({"nt": names,
                          "total": [int(unlabelled.sum()), int(several.sum()),
                                    *(int(n) for n in other)],
                          **{part: [0] * len(names) for part in PARTS}})
    summary = pd.concat([summary, extra], ignore_index=True)
    group_columns = [c for c in summary if c.endswith("_groups")]
    summary[group_columns] = summary[group_columns].astype("Int64")
    summary["optimality_gap"] = round(report["gap"], 6) if report else pd.NA
    return summary


def split_source(source: Source, classes: Sequence[str], voxel_size: Sequence[int] | None,
                 split: Split, manifest_out: str, summary_out: str) -> pd.DataFrame:
    """Read the configured source, split it, write the manifest and its summary."""
    from ntclass.io import write_csv

    table = source.read(classes, voxel_size, split_field=split.stored)
    report: dict = {}
    if split.stored:
        manifest = apply_stored_split(table, split.stored, source.name)
    elif split.method == "given":
        manifest = apply_given_split(table, split.assignment)
    else:
        options = SplitOptions(node_limit=split.node_limit, mip_gap=split.mip_gap)
        manifest, report = make_split(table, split.method, split.fractions, split.seed,
                                      split.group_by, split.max_deviation, options,
                                      source.name, split.unknown_groups)
    group_by = split.group_by
    summary = summarise(manifest, classes, group_by, report,
                        split.unknown_groups if split.method == "grouped" else ())
    unlabelled = int(manifest["nt"].isna().sum())
    several = int(summary.loc[summary["nt"] == "unlabelled_several_nts", "total"].iloc[0])
    left_out = int(manifest["nt_other"].notna().sum()) if "nt_other" in manifest else 0
    log.info("%d synapses: %d labelled, %d unlabelled (%d of neurons with several known "
             "NTs, %d of NTs that are not among the classes, left out)", len(manifest),
             len(manifest) - unlabelled, unlabelled, several, left_out)
    if report:
        log.info("grouped split: %s after %d nodes; a better split could lower the summed "
                 "per-NT fraction deviations (plus %g x the group-count deviations) by at "
                 "most %.4g (the summary's optimality_gap)",
                 f"within split.mip_gap {split.mip_gap:g} (relative to 1 + that sum)"
                 if report["optimal"] else f"stopped at split.node_limit {split.node_limit}",
                 report["nodes"], GROUP_BALANCE_WEIGHT, report["gap"])
    write_csv(manifest, manifest_out)
    write_csv(summary, summary_out)
    return manifest
