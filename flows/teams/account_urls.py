from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

from flows.teams import account_views
from flows.throttle import throttled_posts

urlpatterns = [
    path("signup/", throttled_posts("signup", "accounts/signup.html")(account_views.signup), name="signup"),
    path("account/", account_views.profile, name="profile"),
    path("account/tokens/", account_views.tokens, name="tokens"),
    path("account/tokens/<int:token_id>/revoke/", account_views.revoke_token, name="revoke_token"),
    path(
        "password-reset/",
        throttled_posts("password-reset", "accounts/password_reset_form.html")(auth_views.PasswordResetView.as_view(
            template_name="accounts/password_reset_form.html",
            email_template_name="accounts/password_reset_email.txt",
            subject_template_name="accounts/password_reset_subject.txt",
            success_url=reverse_lazy("password_reset_done"),
        )),
        name="password_reset",
    ),
    path(
        "password-reset/sent/",
        auth_views.PasswordResetDoneView.as_view(template_name="accounts/password_reset_done.html"),
        name="password_reset_done",
    ),
    path(
        "password-reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(
            template_name="accounts/password_reset_confirm.html", success_url=reverse_lazy("password_reset_complete")
        ),
        name="password_reset_confirm",
    ),
    path(
        "password-reset/done/",
        auth_views.PasswordResetCompleteView.as_view(template_name="accounts/password_reset_complete.html"),
        name="password_reset_complete",
    ),
]
