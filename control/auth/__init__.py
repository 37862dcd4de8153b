"""Authentication: Argon2 password hashes, signed JWTs and the signing key."""
