"""What accounts announces. Receivers (accounts/signals.py, other apps) hang work off these.

accounts imports no other app: whatever another app does when a user signs up, is
imported, or is shown, it does from its own receivers (connected in its AppConfig.ready).
"""

from django.dispatch import Signal

# A user's password was replaced by any path that saves the model (the API,
# the admin form, `changepassword`, the shell, `set_password` + `save`): not
# by a hash upgrade at login. kwargs: user, keep_session_id (the session that
# made the change and stays signed in; None = end them all).
password_replaced = Signal()

# A user signed up through the API (native or GoTrue surface). Sent inside the
# signup's transaction, after the user, mirror, session and primary key rows:
# receivers write their durable work there (one INSERT each, no lookups) and
# enqueue on commit, so a broker outage delays that work but cannot lose it; a
# receiver that raises fails the signup. kwargs: user, referral_code (the code
# the signup carried, as typed and cleaned, or None), now.
user_signed_up = Signal()

# Users were written in bulk (the Supabase importer): no post_save was sent
# for them. Sent inside the batch's transaction. kwargs: user_ids (created or
# updated), now.
users_imported = Signal()
