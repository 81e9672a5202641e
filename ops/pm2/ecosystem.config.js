// Titan Execution Service under pm2:
//   pm2 start ops/pm2/ecosystem.config.js      (as user titan, which owns the data)
//   pm2 save && pm2 startup                    (start it again after a reboot)
//
// Change these paths for your machine (they match ops/systemd and ops/cron; the
// defaults suit a checkout in /opt/titan made with `make run` or `make test`).
// TITAN_HOME and TITAN_CONFIG from the environment of `pm2 start` win over them.
const TITAN_HOME = process.env.TITAN_HOME || "/opt/titan"; // the checkout, with .venv in it
const TITAN_CONFIG = process.env.TITAN_CONFIG || "/etc/titan/config.json";
const DATA_DIR = "/var/lib/titan"; // working directory: relative paths in the config land here
const LOG_DIR = "/var/log/titan"; // pm2's copy of stdout/stderr; the service keeps its own log

// pm2 stops a process with SIGINT, which is the service's Ctrl-C: it drains and exits 0,
// usually within milliseconds, at most about 10 s with an emergency flatten waiting on a
// broker that does not answer. SIGKILL follows after kill_timeout, so it must be longer.
const STOP_LIMIT_MS = 15000;

module.exports = {
  apps: [
    {
      name: "titan-execution",
      script: `${TITAN_HOME}/.venv/bin/titan`,
      args: ["run", "--config", TITAN_CONFIG],
      interpreter: "none", // the console script is run as it is, not by node
      exec_mode: "fork",
      instances: 1, // one process per database: a second one is refused by the instance lock
      cwd: DATA_DIR,
      env: {
        TITAN_CONFIG: TITAN_CONFIG,
        PYTHONUNBUFFERED: "1", // lines reach pm2 logs as they are written
      },
      // Restarts gracefully (SIGINT, then the wait below) above 500 MB resident. Resident
      // includes the first 64 MB of the database's -wal file, which the service keeps
      // mapped so that the host cannot drop it (titan_trio/state/resident.py).
      max_memory_restart: "500M",
      kill_timeout: STOP_LIMIT_MS,
      autorestart: true,
      // Exit 0 is a stop someone asked for; exit 2 is a bad configuration, which a
      // restart cannot fix (`pm2 logs titan-execution` says what is wrong).
      stop_exit_codes: [0, 2],
      // A crash loop backs off (from 0.5 s, growing to pm2's cap of 15 s) instead of hammering
      // the exchange; after 10 starts that die within 10 s pm2 gives up (errored).
      exp_backoff_restart_delay: 500,
      min_uptime: "10s",
      max_restarts: 10,
      watch: false,
      out_file: `${LOG_DIR}/pm2-out.log`,
      error_file: `${LOG_DIR}/pm2-error.log`,
      merge_logs: true,
      // The service writes its own UTC timestamps on every line; pm2 adds none.
      time: false,
    },
  ],
};
