from __future__ import annotations

from executor.models import Notification
from flows.permissions import current_membership


def alerts(request) -> dict:
    """The unread alert count of the current team, for the nav."""
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    membership = current_membership(request)
    if membership is None:
        return {}
    return {"unread_alerts": Notification.objects.filter(team_id=membership.team_id, read_at=None).count()}
