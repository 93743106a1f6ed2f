from __future__ import annotations

from executor.models import Notification
from flows.permissions import current_membership

UNREAD_SHOWN = 99


def alerts(request) -> dict:
    """The unread alert count of the current team, for the nav: up to 99, then "99+"
    (counted no further: a team can have a million)."""
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    membership = current_membership(request)
    if membership is None:
        return {}
    unread = Notification.objects.filter(team_id=membership.team_id, read_at=None)[: UNREAD_SHOWN + 1].count()
    return {"unread_alerts": f"{UNREAD_SHOWN}+" if unread > UNREAD_SHOWN else unread}
