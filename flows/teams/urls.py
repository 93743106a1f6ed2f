from django.urls import path

from flows.teams import views as team_views

urlpatterns = [
    path("team/", team_views.team, name="team"),
    path("team/switch/", team_views.switch_team, name="switch_team"),
    path("team/new/", team_views.create_team, name="create_team"),
    path("team/invite/", team_views.invite, name="invite"),
    path("team/invitations/<str:code>/revoke/", team_views.revoke_invitation, name="revoke_invitation"),
    path("team/members/<str:username>/role/", team_views.change_role, name="change_role"),
    path("team/members/<str:username>/remove/", team_views.remove_member, name="remove_member"),
    path("team/leave/", team_views.leave_team, name="leave_team"),
    path("team/secrets/", team_views.secrets, name="secrets"),
    path("team/secrets/<str:name>/delete/", team_views.delete_secret, name="delete_secret"),
    path("team/keys/", team_views.signers, name="signers"),
    path("team/keys/<str:code>/delete/", team_views.delete_signer, name="delete_signer"),
    path("team/keys/<str:code>/limits/", team_views.signer_limits, name="signer_limits"),
    path("team/audit/", team_views.audit_log, name="audit_log"),
    path("invitations/<str:token>/", team_views.accept_invitation, name="accept_invitation"),
    path("flows/<str:code>/sharing/", team_views.flow_sharing, name="flow_sharing"),
    path("flows/<str:code>/sharing/teams/<str:team_code>/remove/", team_views.unshare_flow, name="unshare_flow"),
    path("flows/<str:code>/sharing/links/", team_views.create_public_link, name="create_public_link"),
    path("flows/<str:code>/sharing/links/<str:token>/revoke/", team_views.revoke_public_link, name="revoke_public_link"),
    path("flows/<str:code>/duplicate/", team_views.duplicate_flow, name="duplicate_flow"),
    path("shared/<str:code>/", team_views.shared_flow, name="shared_flow"),
    path("p/<str:token>/", team_views.public_flow, name="public_flow"),
]
