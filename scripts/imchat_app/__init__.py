"""imchat, the terminal chat of `scripts/imchat.py`, in modules a person reads in one sitting:

* `settings`: timings and limits;
* `text`: every error code as a sentence, text width, times, colours (`Style`);
* `line_editor`: the input line in raw terminal mode, redrawn under what is printed above it;
* `model`: conversations, messages on their way, requests in flight;
* `session`: one logged-in session: the select loop, requests, the outbox, reconnection;
* `rendering`: how each item the server pushes is shown (a mixin of `session.Chat`);
* `commands`: the slash commands and Tab completion (a mixin of `session.Chat`);
* `login`: the login and registration prompts, the key cache, the device file;
* `cli`: the command line and `main`.

The SCRAM steps are imclient's (`Client.login`, `Client.register`, and for the
non-blocking re-authentication of /password and /delete-account, `answer_challenge`,
`fresh_keys` and `DerivedKeys.verifier`); nothing here repeats them.
"""
