-- Credentials and tokens sealed with AES-GCM (freshd.secrets), bound to their connection.
-- 'plain' rows written by earlier versions are re-sealed by the daemon at start.
ALTER TABLE credentials ADD COLUMN tokens bytea;
ALTER TABLE credentials ALTER COLUMN scheme SET DEFAULT 'aesgcm';
ALTER TABLE credentials ADD CONSTRAINT credentials_scheme_known CHECK (scheme IN ('plain', 'aesgcm'));
