"""imchat, the terminal chat of `scripts/imchat.py`, in modules a person reads in one sitting:

* `settings`: timings and limits;
* `text`: every error code as a sentence, text width, times, colours (`Style`);
* `line_editor`: the input line in raw terminal mode, redrawn under what is printed above it;
* `model`: conversations, messages on their way, requests in flight;
* `session`: one logged-in session: the select loop, requests, the outbox, reconnection;
* `rendering`: how each item the server pushes is shown (a mixin of `session.Chat`);
* `commands`: the slash commands (a mixin of `session.Chat`);
* `completion`: Tab completion of commands and names (a mixin of `session.Chat`);
* `prompts`: a line or a password asked of the person;
* `device_file`: this installation's device id and name, kept between runs;
* `key_file`: the derived keys, when `--cache-keys` asks to keep them;
* `login`: opening connections, and the login and registration questions;
* `cli`: the command line and `main`.

The SCRAM steps are imclient's (`Client.login`, `Client.register`, and for the
non-blocking re-authentication of /password and /delete-account, `answer_challenge`,
`fresh_keys` and `DerivedKeys.verifier`); nothing here repeats them.
"""
