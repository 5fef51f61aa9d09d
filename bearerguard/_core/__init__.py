"""The sans-I/O core: parsing, verification and decisions as plain functions and objects.

Nothing here performs network I/O, sleeps or reads the clock: the current time is passed in.
The edges (``bearerguard.jwks``, the middlewares, the revocation stores) do the I/O.
"""
