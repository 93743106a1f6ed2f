"""Pages of long lists (runs, alerts) that cost the same on the first page and the thousandth.

A page is read newest first from where the previous one stopped: the rows whose (created_at,
id) is below the last row shown, through an index that ends with (created_at, id)
(executor.models: run_team_created and friends), never with OFFSET, which reads and throws
away every row before the page. Totals are counted up to COUNT_CAP and then reported as
"COUNT_CAP or more": counting ten million runs is a scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.utils.functional import cached_property

COUNT_CAP = 10_000


@dataclass
class Page:
    """Rows newest first; `older` / `newer` say whether rows exist past each end."""

    items: list
    older: bool
    newer: bool

    @property
    def first(self):
        return self.items[0] if self.items else None

    @property
    def last(self):
        return self.items[-1] if self.items else None


def older_than(rows: QuerySet, row: tuple[datetime, int]) -> QuerySet:
    """The rows below `row`'s (created_at, id). The <= bound on created_at is what the index
    range uses; the OR only sorts out rows created in the same microsecond."""
    at, pk = row
    return rows.filter(Q(created_at__lte=at) & (Q(created_at__lt=at) | Q(id__lt=pk)))


def newer_than(rows: QuerySet, row: tuple[datetime, int]) -> QuerySet:
    """The rows above `row`'s (created_at, id) (see older_than)."""
    at, pk = row
    return rows.filter(Q(created_at__gte=at) & (Q(created_at__gt=at) | Q(id__gt=pk)))


def keyset_page(rows: QuerySet, size: int, *, before: tuple[datetime, int] | None = None,
                after: tuple[datetime, int] | None = None) -> Page:
    """The `size` rows newest first below `before`, or just above `after`, or the newest.

    `before` / `after` are the (created_at, id) of the row the previous page ended or started with.
    """
    if after is not None:
        found = list(newer_than(rows, after).order_by("created_at", "id")[: size + 1])
        return Page(items=found[:size][::-1], older=True, newer=len(found) > size)
    if before is not None:
        rows = older_than(rows, before)
    found = list(rows.order_by("-created_at", "-id")[: size + 1])
    return Page(items=found[:size], older=len(found) > size, newer=before is not None)


def capped_count(rows: QuerySet, cap: int | None = None) -> tuple[int, bool]:
    """(how many rows, up to `cap` (COUNT_CAP); whether there are more): a count that stops at the cap."""
    cap = cap if cap is not None else COUNT_CAP
    counted = rows.order_by()[: cap + 1].count()
    return min(counted, cap), counted > cap


class CappedPaginator(Paginator):
    """Django's paginator counting to COUNT_CAP at most, for the admin's run and event lists
    (with show_full_result_count off): its pages reach the newest 10,000; filter for the rest."""

    @cached_property
    def count(self) -> int:
        return capped_count(self.object_list)[0]
