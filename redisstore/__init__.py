"""Redis in the project's shape: every key name, connections, and retries.

Both layers and the serving package meet here instead of importing each other:
:mod:`redisstore.keys` names every ``md:*`` key (docs/storage.md describes what each
holds), :mod:`redisstore.conn` opens connections with errors that say what to do,
and :mod:`redisstore.retry` rides out a Redis restart.
"""
