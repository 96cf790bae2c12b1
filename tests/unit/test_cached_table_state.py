"""A hypothesis state machine: random source writes, invalidations (exact, superset,
dirty-index, deferred), adjusts, clears and reads against a simple model of the source.

The model is the database itself plus `unsynced`: ids written but not yet invalidated (the
cache may legitimately serve their old value). Everything else must read exactly as the
database says; reads outside the covered set must come from the source.
"""

from __future__ import annotations

import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from sqlalchemy.pool import StaticPool

from cachework.cache.tables.indexes import Spec, within
from tests.cached_table_helpers import items, make_table, metadata

IDS = st.integers(1, 8)
SCORES = st.integers(0, 100)


class _Fixed:
    """Stands in for `st.data()` when a rule calls another with chosen values."""

    def __init__(self, *values) -> None:
        self.values = list(values)

    def draw(self, _strategy):
        return self.values.pop(0)


class CachedTableMachine(RuleBasedStateMachine):
    @initialize(
        n=st.integers(2, 8),
        coverage=st.one_of(st.none(), st.tuples(SCORES, SCORES)),
    )
    def setup(self, n, coverage):
        self.engine = sa.create_engine(
            "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
        metadata.create_all(self.engine)
        self.db: dict[int, dict] = {}
        self.version = 0
        for i in range(1, n + 1):
            self._insert(i, score=i * 9)
        self.unsynced: dict[int, list[dict | None]] = {}  # id -> versions the cache may hold
        self.deferred: set[int] = set()  # invalidated without forced refresh, not yet applied
        spec = Spec.all("id") if coverage is None else Spec.range("score", *sorted(coverage))
        self.table = make_table(self.engine, autoload=spec)
        self.table.get(1)  # load

    def teardown(self):
        if hasattr(self, "engine"):
            self.engine.dispose()

    # --- the source -----------------------------------------------------------------------

    def _next(self) -> int:
        self.version += 1
        return self.version

    def _insert(self, i: int, score: int) -> None:
        values = {"id": i, "code": f"c{i}", "grp": i % 3, "score": score, "name": "v0"}
        with self.engine.begin() as conn:
            conn.execute(items.insert().values(**values))
        self.db[i] = values

    def _remember(self, i: int) -> None:
        self.unsynced.setdefault(i, []).append(dict(self.db[i]) if i in self.db else None)

    @rule(i=IDS, score=SCORES, rename=st.booleans(), recode=st.booleans())
    def write(self, i, score, rename, recode):
        self._remember(i)
        if i not in self.db:
            self._insert(i, score)
            return
        values = {"score": score}
        if rename:
            values["name"] = f"v{self._next()}"
        if recode:
            values["code"] = f"x{self._next()}"
        with self.engine.begin() as conn:
            conn.execute(items.update().where(items.c.id == i).values(**values))
        self.db[i].update(values)

    @rule(i=IDS)
    def delete(self, i):
        if i in self.db:
            self._remember(i)
            with self.engine.begin() as conn:
                conn.execute(items.delete().where(items.c.id == i))
            del self.db[i]

    # --- invalidations ----------------------------------------------------------------------

    def _specs_of(self, i: int, rows: list[dict | None]) -> list[Spec]:
        codes = [r["code"] for r in rows if r]
        scores = [r["score"] for r in rows if r]
        specs = [Spec.of("id", i)]
        if codes:
            specs += [Spec.of("code", *codes), Spec.of("grp", i % 3), Spec.of("score", *scores)]
        return specs

    @rule(data=st.data())
    def invalidate_exact(self, data):
        if not self.unsynced:
            return
        i = data.draw(st.sampled_from(sorted(self.unsynced)))
        old = self._specs_of(i, self.unsynced.pop(i))
        new = self._specs_of(i, [self.db.get(i)])
        # Every index named in both lists (one named in a single list goes dirty).
        names = {s.index for s in old} | {s.index for s in new}
        nothing = {"code": "-", "grp": -1, "score": -1}  # no record has these values
        old += [Spec.of(n, nothing[n]) for n in names - {s.index for s in old}]
        new += [Spec.of(n, nothing[n]) for n in names - {s.index for s in new}]
        # The refresh deletes what old[0] names and loads what new[0] names: either exact
        # index (id, or the unique code) may come first in either list.
        for specs in (old, new):
            if data.draw(st.booleans()):
                specs.sort(key=lambda s: s.index != "code")
        if data.draw(st.booleans()):
            # Name only the primary key in the new list: every other index goes dirty.
            new = [Spec.of("id", i)]
            old.sort(key=lambda s: s.index != "id")
        self.table.invalidate_records(old, new)

    @rule(extra=st.lists(IDS, max_size=3))
    def invalidate_superset(self, extra):
        if not self.unsynced:
            return
        ids = sorted(self.unsynced)
        self.table.invalidate_records([Spec.of("id", *ids)], [Spec.of("id", *ids, *extra)])
        self.unsynced.clear()

    @rule(data=st.data())
    def invalidate_dirty(self, data):
        """Only the primary key is named: code, grp and score become dirty."""
        if not self.unsynced:
            return
        i = data.draw(st.sampled_from(sorted(self.unsynced)))
        del self.unsynced[i]
        self.table.invalidate_keys([i])

    @rule(data=st.data())
    def invalidate_deferred(self, data):
        if not self.unsynced:
            return
        i = data.draw(st.sampled_from(sorted(self.unsynced)))
        del self.unsynced[i]
        self.table.invalidate_records([Spec.of("id", i)], force_refresh_on_next_read=False)
        if self.table.stats()["pending"]:  # else: not loaded, nothing cached to go stale
            self.deferred.add(i)

    @rule(
        data=st.data(),
        score=SCORES,
        recode=st.booleans(),
        how=st.sampled_from(["dirty", "exact", "new_names_pk_only"]),
    )
    def write_invalidate_read(self, data, score, recode, how):
        """The headline property in one step: after the invalidation of a record returns,
        no read (by any index) returns its old value."""
        i = data.draw(st.sampled_from(sorted(self.db)) if self.db else IDS)
        self.read_pk(i)  # cached now (when covered)
        old_code = self.db[i]["code"] if i in self.db else None
        self.write(i, score, rename=True, recode=recode)
        if how == "dirty":
            del self.unsynced[i]
            self.table.invalidate_keys([i])
        else:
            swaps = data.draw(st.booleans()), data.draw(st.booleans())
            self.invalidate_exact(_Fixed(i, *swaps, how == "new_names_pk_only"))
        self._check_code(self.db[i]["code"])
        if old_code is not None:
            self._check_code(old_code)
        self.read_pk(i)
        self._check_range(0, 101)

    @rule()
    def invalidate_everything(self):
        self.table.invalidate_all()
        self.unsynced.clear()

    @rule()
    def refresh(self):
        self.table.refresh_invalid()

    @rule()
    def clear(self):
        self.table.clear()
        self.unsynced.clear()

    @rule(lo=SCORES, hi=SCORES, everything=st.booleans())
    def adjust(self, lo, hi, everything):
        spec = Spec.all("id") if everything else Spec.range("score", min(lo, hi), max(lo, hi))
        self.table.adjust(spec)
        fetches = self.table.source.fetches
        if not everything:
            # The new coverage is complete: reading it needs no query.
            self._check_range(min(lo, hi), max(lo, hi))
            assert self.table.source.fetches == fetches

    # --- reads ------------------------------------------------------------------------------

    def _skip(self) -> set[int]:
        return set(self.unsynced) | self.deferred

    @rule(i=IDS)
    def read_pk(self, i):
        record = self.table.get(i)
        if i in self._skip():
            return
        assert (dict(record) if record else None) == self.db.get(i)

    @rule()
    def read_every_pk(self):
        for i in range(1, 9):
            self.read_pk(i)

    @rule(i=IDS)
    def read_code(self, i):
        self._check_code(self.db[i]["code"] if i in self.db else f"c{i}")

    def _check_code(self, code: str) -> None:
        records = self.table.get_records("code", code)
        expected = [r for r in self.db.values() if r["code"] == code]
        ids = {r["id"] for r in records} | {r["id"] for r in expected}
        if ids & self._skip():
            return
        assert [dict(r) for r in records] == expected

    def _check_range(self, lo, hi):
        misses = self.table.stats()["misses"]
        records = self.table.get_records("score", ge=lo, lt=hi)
        got = {r["id"]: dict(r) for r in records}
        assert len(got) == len(records), "a record appears twice"
        expected = {k: r for k, r in self.db.items() if lo <= r["score"] < hi}
        coverage = self.table._coverage
        if coverage is not None and not within(Spec.range("score", lo, hi), coverage):
            assert got == expected  # uncovered: straight from the source
            assert self.table.stats()["misses"] == misses + 1
            return
        for k in set(got) | set(expected):
            if k not in self._skip():
                assert got.get(k) == expected.get(k), (k, lo, hi)

    @rule(lo=SCORES, hi=SCORES)
    def read_range(self, lo, hi):
        self._check_range(min(lo, hi), max(lo, hi))

    @rule(grp=st.integers(0, 2))
    def read_group(self, grp):
        records = self.table.get_records("grp", grp)
        got = {r["id"]: dict(r) for r in records}
        expected = {k: r for k, r in self.db.items() if r["grp"] == grp}
        for k in set(got) | set(expected):
            if k not in self._skip():
                assert got.get(k) == expected.get(k)

    @invariant()
    def deferred_become_synced_after_refresh(self):
        if self.deferred and self.table.stats()["pending"] == 0:
            self.deferred.clear()

    @invariant()
    def stored_records_are_exactly_the_coverage(self):
        """Adjust and refresh never leave a record outside the covered set in storage."""
        coverage = self.table._coverage
        if coverage is None:
            return
        column = self.table.indexes[coverage.index].column
        for record in self.table.storage.records.values():
            assert coverage.matches(record[column]), (dict(record), coverage)

    @invariant()
    def statistics_are_consistent(self):
        stats = self.table.stats()
        assert 0 <= stats["invalid"] <= stats["records"]


CachedTableMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
TestCachedTable = CachedTableMachine.TestCase
