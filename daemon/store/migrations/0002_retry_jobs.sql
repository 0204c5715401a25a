-- `freshctl retry JOB`: a job that fetches again the items another job recorded as failed.
ALTER TABLE sync_jobs DROP CONSTRAINT sync_jobs_kind_check;
ALTER TABLE sync_jobs ADD CONSTRAINT sync_jobs_kind_check
    CHECK (kind IN ('initial', 'full', 'incremental', 'retry'));
ALTER TABLE sync_jobs ADD COLUMN retry_of bigint REFERENCES sync_jobs (id) ON DELETE SET NULL;
