"""velro.prepared: a read compiled once gives what its queryset gives, with one query and no compile per call."""

from __future__ import annotations

from unittest import mock

import pytest
from django.db import connection
from django.db.models import Exists, OuterRef
from django.db.models.sql.compiler import SQLCompiler
from django.test.utils import CaptureQueriesContext

from accounts.models import MfaFactor, User
from accounts.tests.factories import MfaFactorFactory, UserFactory
from velro.prepared import PreparedRead, PreparedReadError

pytestmark = pytest.mark.django_db


def by_email(*, email: str):
    return (
        User.objects.select_related("profile", "referral_code")
        .annotate(has_factors=Exists(MfaFactor.objects.filter(user_id=OuterRef("pk"))))
        .filter(email__lower=email)[:1]
    )


def state(obj) -> dict:
    return {name: value for name, value in vars(obj).items() if name != "_state"}


def test_a_prepared_read_gives_the_object_its_queryset_gives():
    user = UserFactory(email="ada@example.com")
    MfaFactorFactory(user=user)
    read = PreparedRead(User, by_email, "email")

    expected = by_email(email="ada@example.com").get()
    got = read.first(email="ada@example.com")

    assert state(got) == state(expected)
    assert got.has_factors is True
    assert got._state.db == expected._state.db and got._state.adding is False
    # select_related: the related rows came with it, no query to reach them.
    with CaptureQueriesContext(connection) as queries:
        assert state(got.profile) == state(expected.profile)
        assert state(got.referral_code) == state(expected.referral_code)
    assert len(queries) == 0


def test_a_prepared_read_compiles_once_then_runs_one_query_per_call():
    users = [UserFactory() for _ in range(3)]
    read = PreparedRead(User, by_email, "email")
    compiling = mock.patch.object(SQLCompiler, "as_sql", autospec=True, side_effect=SQLCompiler.as_sql)
    with compiling as compiles, CaptureQueriesContext(connection) as queries:
        found = [read.first(email=user.email) for user in users]
    assert [user.pk for user in found] == [user.pk for user in users]
    assert len(queries) == 3
    # The outer query once; its EXISTS subquery compiles inside that one call.
    assert sum(1 for call in compiles.call_args_list if call.args[0].query.model is User) == 1


def test_a_prepared_read_without_a_row_is_none_and_its_value_is_a_parameter_not_sql():
    UserFactory(email="ada@example.com")
    read = PreparedRead(User, by_email, "email")
    assert read.first(email="nobody@example.com") is None
    assert read.first(email="' OR '1'='1") is None
    assert read.first(email="ada@example.com").email == "ada@example.com"


def test_a_value_that_is_not_one_parameter_is_refused_when_compiled():
    twice = PreparedRead(User, lambda *, email: User.objects.filter(email=email, username=email), "email")
    with pytest.raises(PreparedReadError, match="2 found"):
        twice.first(email="ada@example.com")
    with pytest.raises(TypeError):
        PreparedRead(User, by_email, "email").first(address="ada@example.com")


def test_a_reset_read_compiles_again_with_what_its_builder_now_returns():
    user = UserFactory()
    related = ["profile"]
    read = PreparedRead(User, lambda *, email: User.objects.select_related(*related).filter(email=email), "email")
    first = read.first(email=user.email)
    assert User.referral_code.is_cached(first) is False
    related.append("referral_code")
    read.reset()
    again = read.first(email=user.email)
    assert User.referral_code.is_cached(again) is True
