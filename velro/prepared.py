"""A model read compiled once, then run with new values.

Django builds and compiles a queryset's SQL on every run. For a read with
select_related and an EXISTS annotation (a login's user read) that is about
1 ms of CPU when warm and 2-3 ms right after an argon2id verify has flushed
the CPU caches: more than the indexed query itself costs PostgreSQL. A
`PreparedRead` builds the queryset once per database alias with placeholder
values, keeps its SQL and the compiler's column map, and on each call only
executes that SQL with the caller's values and makes the objects with
Django's own machinery (converters, Model.from_db, the select_related
populators, annotations): the same objects the queryset would give.

Platform code: velro imports no app (the apps pass their querysets in).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import connections, router
from django.db.models import Model, QuerySet
from django.db.models.query import get_related_populators


class PreparedReadError(RuntimeError):
    """The queryset cannot be prepared (a value is not a plain parameter of its SQL)."""


@dataclass(frozen=True)
class _Plan:
    sql: str
    params: tuple[Any, ...]
    slots: dict[str, int]  # value name -> its index in params
    model: type[Model]
    init_list: list[str]
    model_fields: slice
    converters: dict[int, Any]
    apply_converters: Callable[..., Any]
    related_populators: list[Any]
    annotation_col_map: dict[str, int]


class PreparedRead:
    """`build(**values)` returns the queryset (of `model`) for those values;
    each value must reach the SQL unchanged as one parameter (a filter on it,
    any transform applied on the database side). `first(**values)` is that
    queryset's first row as a model object, or None."""

    def __init__(self, model: type[Model], build: Callable[..., QuerySet], *names: str) -> None:
        self._model = model
        self._build = build
        self._names = names
        self._plans: dict[tuple[str, str], _Plan] = {}
        self._lock = threading.Lock()

    def _plan(self, alias: str) -> _Plan:
        # Per alias and engine: the SQL is that database's dialect.
        key = (alias, connections[alias].vendor)
        plan = self._plans.get(key)
        if plan is None:
            with self._lock:
                plan = self._plans.get(key) or self._compile(alias)
                self._plans[key] = plan
        return plan

    def _compile(self, alias: str) -> _Plan:
        # Placeholder values no caller could send, to find where each lands in the parameters.
        markers = {name: f"\x00prepared:{name}:{secrets.token_hex(8)}" for name in self._names}
        queryset = self._build(**markers)
        compiler = queryset.query.get_compiler(using=alias)
        sql, params = compiler.as_sql()
        slots = {}
        for name, marker in markers.items():
            where = [index for index, param in enumerate(params) if param == marker]
            if len(where) != 1:
                raise PreparedReadError(f"value {name!r} is not one parameter of the SQL ({len(where)} found)")
            slots[name] = where[0]
        klass_info, select = compiler.klass_info, compiler.select
        fields = klass_info["select_fields"]
        model_fields = slice(fields[0], fields[-1] + 1)
        return _Plan(
            sql=sql,
            params=tuple(params),
            slots=slots,
            model=klass_info["model"],
            init_list=[column[0].target.attname for column in select[model_fields]],
            model_fields=model_fields,
            converters=compiler.get_converters([column[0] for column in select[: compiler.col_count]]),
            apply_converters=compiler.apply_converters,
            related_populators=get_related_populators(klass_info, select, alias),
            annotation_col_map=dict(compiler.annotation_col_map or {}),
        )

    def reset(self) -> None:
        """Compile again on next use (what `build` returns has changed)."""
        with self._lock:
            self._plans.clear()

    def first(self, **values: Any) -> Model | None:
        if set(values) != set(self._names):
            raise TypeError(f"values {sorted(values)} given, {sorted(self._names)} expected")
        alias = router.db_for_read(self._model)
        plan = self._plan(alias)
        params = list(plan.params)
        for name, index in plan.slots.items():
            params[index] = values[name]
        with connections[alias].cursor() as cursor:
            cursor.execute(plan.sql, params)
            row = cursor.fetchone()
        if row is None:
            return None
        if plan.converters:
            row = next(iter(plan.apply_converters([row], plan.converters)))
        obj = plan.model.from_db(alias, plan.init_list, row[plan.model_fields])
        for populator in plan.related_populators:
            populator.populate(row, obj)
        for name, position in plan.annotation_col_map.items():
            setattr(obj, name, row[position])
        return obj
