"""Backups, restore, credentials and database maintenance (SPEC §10)."""
