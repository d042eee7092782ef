"""What accounts announces. Receivers (accounts/signals.py, other apps) hang work off these."""

from django.dispatch import Signal

# A user's password was replaced by any path that saves the model (the API,
# the admin form, `changepassword`, the shell, `set_password` + `save`): not
# by a hash upgrade at login. kwargs: user, keep_session_id (the session that
# made the change and stays signed in; None = end them all).
password_replaced = Signal()
