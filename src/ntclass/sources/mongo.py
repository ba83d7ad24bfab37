"""MongoDB as a synapse source, in Synister's schema.

Collections: `synapses` (`synapse_id`, `x`, `y`, `z` in nm, `skeleton_id`, `brain_region`,
`splits`), `skeletons` (`skeleton_id`, `nt_known`: list of NT names, `hemi_lineage_id`),
`hemi_lineages` (`hemi_lineage_id`, `hemi_lineage_name`, `nt_guess`). ntclass adds an
optional `post_skeleton_id` per synapse (the post-synaptic partner's neuron).

The connection string comes from the config (`source.uri`) or the environment
(`NTCLASS_MONGO_URI`); a password only ever comes from `NTCLASS_MONGO_PASSWORD`, so that it
never reaches a config file, Snakemake's records, a log or an error message.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote_plus

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ntclass.errors import NtclassError
from ntclass.ids import ID_COLUMNS, to_ids
from ntclass.io import NULLABLE_INTEGERS, write_json
from ntclass.sources.synapses import LOCATION, LocationCheck, check_classes, normalise

log = logging.getLogger(__name__)
BSON_MAX_INT = 2**63 - 1

URI_ENV = "NTCLASS_MONGO_URI"
PASSWORD_ENV = "NTCLASS_MONGO_PASSWORD"
_CREDENTIALS = re.compile(r"^(mongodb(?:\+srv)?://)([^@/]*)@", re.IGNORECASE)


def redact_uri(uri: str) -> str:
    """`uri` with any password replaced by ***."""
    def hide(m: re.Match) -> str:
        user = m.group(2).split(":", 1)[0]
        return f"{m.group(1)}{user}:***@" if ":" in m.group(2) else m.group(0)

    return _CREDENTIALS.sub(hide, uri)


COLLECTIONS = {"synapses": "synapses", "skeletons": "skeletons",
               "hemi_lineages": "hemi_lineages"}


@dataclass(frozen=True)
class Connection:
    """Where a database in Synister's schema is: the address (None: NTCLASS_MONGO_URI),
    the database and the names of its three collections."""

    uri: str | None
    database: str
    collections: Mapping[str, str]

    def open(self, timeout_s: float = 5.0):
        """A pymongo database handle, checked with a ping; fails within `timeout_s`."""
        return connect(self.uri, self.database, timeout_s)

    def collection(self, db, name: str):
        """One of Synister's three collections, under the name the source gives it."""
        return db[self.collections[name]]

    def shown(self) -> str:
        """The address for logs and receipts, its password hidden."""
        return redact_uri(self.uri or os.environ.get(URI_ENV, ""))


def resolve_uri(uri: str | None) -> str:
    """The connection string to use, with the password from the environment."""
    uri = uri or os.environ.get(URI_ENV)
    if not uri:
        raise NtclassError(f"source.uri is not set and {URI_ENV} is empty; give the MongoDB "
                           "address, e.g. mongodb://host:27017")
    m = _CREDENTIALS.match(uri)
    if m and ":" in m.group(2):
        raise NtclassError(f"the MongoDB address {redact_uri(uri)} holds a password; remove it "
                           f"and set {PASSWORD_ENV} instead")
    password = os.environ.get(PASSWORD_ENV)
    if password and m:
        uri = _CREDENTIALS.sub(lambda g: f"{g.group(1)}{g.group(2)}:{quote_plus(password)}@",
                               uri)
    return uri


def connect(uri: str | None, database: str, timeout_s: float = 5.0):
    """A pymongo database handle, checked with a ping; fails within `timeout_s`."""
    import pymongo
    from pymongo.errors import PyMongoError

    shown = redact_uri(uri or os.environ.get(URI_ENV, ""))
    uri = resolve_uri(uri)
    try:
        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=int(timeout_s * 1000),
                                     connectTimeoutMS=int(timeout_s * 1000))
        client.admin.command("ping")
    except PyMongoError as e:
        raise NtclassError(f"cannot reach MongoDB at {shown} within {timeout_s:g} s "
                           f"({type(e).__name__})") from None
    return client[database]


def import_table(table: pd.DataFrame, uri: str | None, database: str,
                 replace: bool = False) -> int:
    """Write a synapse table into Synister's three collections; return synapses written."""
    table = normalise(table.assign(raw_container="", raw_dataset=""), "the synapse table")
    for col in ID_COLUMNS:
        too_big = (table[col] > BSON_MAX_INT).fillna(False).to_numpy(dtype=bool)
        if too_big.any():
            raise NtclassError(
                f"the synapse table's {col} {int(table[col][too_big].iloc[0])} is above "
                "2^63 - 1, the largest integer MongoDB stores; keep such ids in a CSV or "
                "Parquet source")
    db = connect(uri, database)
    names = ("synapses", "skeletons", "hemi_lineages")
    existing = [n for n in names if db[n].estimated_document_count()]
    if existing and not replace:
        raise NtclassError(f"database '{database}' already holds '{existing[0]}'; "
                           "pass --replace to overwrite it")
    for name in names:
        db.drop_collection(name)
    hemis = sorted(table["hemilineage"].dropna().unique()) if "hemilineage" in table else []
    hemi_ids = {h: i + 1 for i, h in enumerate(hemis)}
    neurons = table.groupby("pre_id", dropna=True)
    skeletons = []
    for pre_id, rows in neurons:
        nts = sorted(rows["nt"].dropna().unique())
        hemi = rows["hemilineage"].dropna().iloc[0] if "hemilineage" in rows and rows[
            "hemilineage"].notna().any() else None
        skeletons.append({"skeleton_id": int(pre_id), "nt_known": list(nts),
                          "hemi_lineage_id": hemi_ids.get(hemi)})
    hemi_docs = []
    for h, i in hemi_ids.items():
        nts = sorted(table.loc[table["hemilineage"] == h, "nt"].dropna().unique())
        hemi_docs.append({"hemi_lineage_id": i, "hemi_lineage_name": h, "nt_guess": nts})
    synapses = []
    for row in table.itertuples(index=False):
        doc = {"synapse_id": int(row.synapse_id), "z": float(row.z), "y": float(row.y),
               "x": float(row.x), "skeleton_id": _int_or_none(row.pre_id),
               "post_skeleton_id": _int_or_none(getattr(row, "post_id", None)),
               "brain_region": getattr(row, "brain_region", None), "splits": {}}
        synapses.append(doc)
    if skeletons:
        db.skeletons.insert_many(skeletons, ordered=False)
    if hemi_docs:
        db.hemi_lineages.insert_many(hemi_docs, ordered=False)
    db.synapses.create_index("synapse_id", unique=True)
    db.synapses.create_index([("z", 1), ("y", 1), ("x", 1)])
    for start in range(0, len(synapses), 10_000):
        db.synapses.insert_many(synapses[start:start + 10_000], ordered=False)
    return len(synapses)


def _int_or_none(value):
    return None if value is None or pd.isna(value) else int(value)


def _columns(cursor, fields: Sequence[str]) -> dict[str, list]:
    """Documents as one list per field (None where absent): ids stay Python ints, never
    floats, which a DataFrame of documents with some missing ids would make them."""
    columns: dict[str, list] = {f: [] for f in fields}
    for doc in cursor:
        for f in fields:
            columns[f].append(doc.get(f))
    return columns


def _skeleton_labels(db, conn: Connection) -> pd.DataFrame:
    """Per skeleton: its NT when exactly one is known, the candidates when several."""
    skeletons = _columns(conn.collection(db, "skeletons").find({}, {"_id": 0}),
                         ["skeleton_id", "nt_known", "hemi_lineage_id"])
    hemis = _columns(conn.collection(db, "hemi_lineages").find({}, {"_id": 0}),
                     ["hemi_lineage_id", "hemi_lineage_name"])
    names = dict(zip(hemis["hemi_lineage_id"], hemis["hemi_lineage_name"]))
    known = [sorted(set(v)) if isinstance(v, list) else [] for v in skeletons["nt_known"]]
    return pd.DataFrame({
        "pre_id": to_ids(pd.Series(skeletons["skeleton_id"], dtype=object), "skeleton_id",
                         "collection 'skeletons'"),
        "nt": pd.array([k[0] if len(k) == 1 else pd.NA for k in known], dtype="string"),
        "nt_candidates": pd.array([";".join(k) if len(k) > 1 else pd.NA for k in known],
                                  dtype="string"),
        "hemilineage": pd.array([names.get(h, pd.NA) for h in skeletons["hemi_lineage_id"]],
                                dtype="string"),
    }).dropna(subset=["pre_id"]).drop_duplicates("pre_id")


# Synister's schema marks each synapse document as a pre- or post-synaptic site; only
# pre-synaptic sites are synapses to classify (documents without the field all are)
PRE_SYNAPTIC = {"$or": [{"prepost": "pre"}, {"prepost": {"$exists": False}}]}


SYNAPSE_FIELDS = ["synapse_id", "z", "y", "x", "skeleton_id", "post_skeleton_id",
                  "brain_region"]


def mongo_batches(conn: Connection, raw_container: str, raw_dataset: str,
                  classes: Sequence[str], check: LocationCheck, batch_rows: int,
                  other_nts: str, split_field: str | None, synapse_filter: Mapping | None,
                  skeleton_filter: Mapping | None) -> Iterator[pd.DataFrame]:
    """The pre-synaptic sites of a MongoDB source (those `synapse_filter` and
    `skeleton_filter` select) in checked
    batches, each labelled with its skeleton's single known NT. Skeletons with several
    known NTs stay unlabelled, their candidates kept in `nt_candidates` and counted in the
    log; NTs that are not among `classes` are left out (`nt_other`) or refused.
    `split_field`: a split stored in the documents (`splits.<name>`), as `stored_split`.

    Each batch is one query for the next `batch_rows` documents by `_id` (always
    indexed), so no cursor stays open across batches and memory is one batch's."""
    db = conn.open()
    synapses = conn.collection(db, "synapses")
    origin = f"MongoDB database '{conn.database}'"
    labels = _skeleton_labels(db, conn)
    fields = SYNAPSE_FIELDS + ([f"splits.{split_field}"] if split_field else [])
    projection = dict.fromkeys(fields, 1)
    selected = [PRE_SYNAPTIC] + ([dict(synapse_filter)] if synapse_filter else [])
    if skeleton_filter:
        skeletons = conn.collection(db, "skeletons").distinct(
            "skeleton_id", dict(skeleton_filter))
        selected.append({"skeleton_id": {"$in": skeletons}})
    last, first_row, several, several_neurons = None, 0, 0, set()
    while True:
        after = [] if last is None else [{"_id": {"$gt": last}}]
        query = {"$and": selected + after}
        try:
            docs = list(synapses.find(query, projection).sort("_id", 1).limit(batch_rows))
        except Exception as e:
            raise NtclassError(f"{origin}: the query {query} failed ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}); check the "
                               "source's filter") from None
        if not docs:
            break
        last = docs[-1]["_id"]
        batch = _synapse_frame(docs, labels, origin, split_field)
        batch["raw_container"] = raw_container
        batch["raw_dataset"] = raw_dataset
        unclear = batch["nt_candidates"].notna()
        several += int(unclear.sum())
        several_neurons.update(batch.loc[unclear, "pre_id"].tolist())
        df = check_classes(normalise(batch, origin, first_row), classes, origin, other_nts)
        check.add(df)
        first_row += len(df)
        yield df
    if first_row == 0:
        which = " that the filters select" if len(selected) > 1 else ""
        raise NtclassError(f"{origin} has no pre-synaptic site{which} in collection "
                           f"'{synapses.name}'")
    if several:
        log.warning("%s: %d synapses of %d skeletons with several known NTs stay unlabelled",
                    origin, several, len(several_neurons))


def _synapse_frame(docs: list[dict], labels: pd.DataFrame, origin: str,
                   split_field: str | None = None) -> pd.DataFrame:
    columns = _columns(docs, SYNAPSE_FIELDS)
    where = f"{origin}, collection 'synapses'"
    synapses = pd.DataFrame({
        "synapse_id": pd.Series(columns["synapse_id"], dtype=object),
        **{c: columns[c] for c in LOCATION},
        "pre_id": to_ids(pd.Series(columns["skeleton_id"], dtype=object), "skeleton_id",
                         where),
        "post_id": to_ids(pd.Series(columns["post_skeleton_id"], dtype=object),
                          "post_skeleton_id", where),
        "brain_region": pd.array(columns["brain_region"], dtype="string"),
    })
    if split_field:
        synapses["stored_split"] = pd.array(
            [(d.get("splits") or {}).get(split_field) for d in docs], dtype="string")
    return synapses.merge(labels, on="pre_id", how="left")


def write_predictions(batches: Iterable[pd.DataFrame], conn: Connection, field: str,
                      classes: Sequence[str]) -> int:
    """Store each synapse's prediction in its document of `synapses` under `field` (a
    dotted path, one per model): predicted NT, confidence and the class probabilities.
    One unordered bulk write per batch of predictions."""
    from pymongo import UpdateOne

    synapses = conn.collection(conn.open(), "synapses")
    written = matched = 0
    for predictions in batches:
        records = predictions[["synapse_id", "predicted_nt", "confidence", *classes]
                              ].to_dict("records")
        ops = [UpdateOne({"synapse_id": int(r["synapse_id"])}, {"$set": {field: {
            "predicted_nt": str(r["predicted_nt"]), "confidence": float(r["confidence"]),
            "probabilities": {c: float(r[c]) for c in classes}}}}) for r in records]
        if ops:
            matched += synapses.bulk_write(ops, ordered=False).matched_count
        written += len(records)
    if matched != written:
        raise NtclassError(f"{written - matched} predicted synapses have no document in "
                           f"collection '{synapses.name}' of MongoDB database "
                           f"'{conn.database}'")
    return matched


@dataclass(frozen=True)
class SynisterLayout:
    """Where Synister's `get_predictions` reads a model's predictions of a target:
    `<database>_predictions`, `<split_name>_<experiment>_t<train>_p<predict>`."""

    split_name: str | None  # None: the target's name
    experiment: str  # "{model}" is replaced by the model's name
    train_number: int
    predict_number: int

    def collection(self, database: str, target_name: str, model: str) -> tuple[str, str]:
        experiment = self.experiment.replace("{model}", model)
        name = (f"{self.split_name or target_name}_{experiment}"
                f"_t{self.train_number}_p{self.predict_number}")
        return f"{database}_predictions", name


@dataclass(frozen=True)
class WriteBack:
    """A MongoDB target's write-back: ntclass's field per model and/or Synister's layout."""

    ntclass: bool
    synister: SynisterLayout | None

    @classmethod
    def from_section(cls, target: Mapping) -> WriteBack:
        layout = dict(target["synister_write_back"])
        synister = (SynisterLayout(**{k: layout.get(k) for k in (
            "split_name", "experiment", "train_number", "predict_number")})
            if layout.pop("enabled") else None)
        return cls(ntclass=bool(target["write_back"]), synister=synister)


def write_synister_predictions(batches: Iterable[pd.DataFrame], conn: Connection,
                               database: str, name: str, classes: Sequence[str]) -> int:
    """Documents {synapse_id, prediction: [probabilities in class order]}, Synister's
    layout. Written to a scratch collection renamed over `name` at the end, so that a
    failed job never leaves a partial collection under Synister's name."""
    db = connect(conn.uri, database)
    scratch = f"{name}.ntclass-incomplete"
    db.drop_collection(scratch)
    n = 0
    for predictions in batches:
        ids = predictions["synapse_id"].to_numpy(dtype=np.int64)
        probabilities = predictions[list(classes)].to_numpy(dtype=np.float64)
        docs = [{"synapse_id": int(i), "prediction": p.tolist()}
                for i, p in zip(ids, probabilities)]
        if docs:
            db[scratch].insert_many(docs, ordered=False)
        n += len(docs)
    if n:
        db[scratch].create_index("synapse_id", unique=True)
        db[scratch].rename(name, dropTarget=True)
    else:
        db.drop_collection(name)
    return n


def write_back(predictions_path: str, conn: Connection, write: WriteBack, target_name: str,
               model: str, classes: Sequence[str], receipt_path: str,
               batch_rows: int = 10_000) -> None:
    """The workflow step: predictions of `model` into the target's database, in ntclass's
    layout (a field of each synapse document) and/or Synister's (a collection of the
    predictions database), read and written in batches; then a receipt file (database,
    collections, counts; never the address's password)."""
    def batches():
        return (b.to_pandas(types_mapper=NULLABLE_INTEGERS.get) for b in
                pq.ParquetFile(predictions_path).iter_batches(batch_size=batch_rows))

    receipt: dict = {"uri": conn.shown(), "classes": list(classes)}
    if write.ntclass:
        field = f"ntclass.{model}"
        n = write_predictions(batches(), conn, field, classes)
        receipt["ntclass"] = {"database": conn.database,
                              "collection": conn.collections["synapses"],
                              "field": field, "synapses": n}
    if write.synister is not None:
        database, name = write.synister.collection(conn.database, target_name, model)
        n = write_synister_predictions(batches(), conn, database, name, classes)
        receipt["synister"] = {"database": database, "collection": name, "synapses": n}
    write_json(receipt, receipt_path)
