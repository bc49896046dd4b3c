-- TimescaleDB only. The commit log (0019) names devices and the time ranges they recorded: it is kept as long as the
-- samples it points at (their retention policy, 0003: 90 days) and no longer. A daily job deletes the log rows whose
-- newest sample is past that age; the BRIN index (rows arrive roughly in time order) spares it a full scan.
CREATE INDEX IF NOT EXISTS sample_commits_t_max_brin ON sample_commits USING brin (t_max);
CREATE OR REPLACE PROCEDURE pulsegate_trim_sample_commits(job_id integer, config jsonb) LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM sample_commits WHERE t_max < now() - (config->>'drop_after')::interval;
END
$$;
SELECT add_job('pulsegate_trim_sample_commits', INTERVAL '1 day', config => '{"drop_after": "90 days"}')
  WHERE NOT EXISTS (SELECT 1 FROM timescaledb_information.jobs WHERE proc_name = 'pulsegate_trim_sample_commits');
