"""Database maintenance: backups (local and S3), restore, credentials, db commands."""
