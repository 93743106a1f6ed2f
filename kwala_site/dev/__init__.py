"""Development tooling, kept out of the runtime apps: the embedded PostgreSQL and Redis that the
settings start when no DATABASE_URL/REDIS_URL is given (`embedded`), local anvil chains and the
demo contracts (`devchain`), the process supervisor and `manage.py dev` (what `make run` runs).

Nothing here is imported by a production process except `embedded`, and only when the settings
run on their embedded defaults. Keep this module free of Django imports: the settings import
`embedded` before the apps are ready.
"""
