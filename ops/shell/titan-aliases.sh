# Titan operator shortcuts (the operations guide's appendix), for bash and zsh.
#
#   source /opt/titan/ops/shell/titan-aliases.sh     # in ~/.bashrc or ~/.zshrc
#
#   titan-status     health (exit 1 when unhealthy, still starting or unreachable)
#   titan-positions  open positions            titan-equity   equity, P&L, drawdown
#   titan-logs       the last 50 log lines, then follows (pm2 logs / journalctl)
#   titan-restart    titan-stop    titan-start  (pm2 or systemctl)
#   titan-flatten    EMERGENCY: cancel all orders, close all positions, halt trading
#   titan-backup     back up the database now (`titan backup`; run it in the service's
#                    working directory when the config's paths are relative)
#
# Arguments go through: `titan-positions --url http://10.0.0.5:8080`, `titan-logs --nostream`.
#
# Settings, read each time a command runs (so `TITAN_PM=systemd titan-restart` works):
#   TITAN_HOME    the checkout with its .venv              (default /opt/titan)
#   TITAN_CONFIG  the service's configuration: API address and token (default /etc/titan/config.json)
#   TITAN_PM      pm2 or systemd, whichever runs the service (default pm2)
#   TITAN_APP     the pm2 app / systemd unit name           (default titan-execution)
#   TITAN_API_TOKEN  the bearer token for titan-flatten when the config does not hold it
#
# They are shell functions, not aliases as in the guide: aliases are not expanded in
# scripts (bash without expand_aliases), cannot look at TITAN_PM when they run, and a
# function passes its arguments where they belong. Same names, same use. The API
# commands use the titan CLI, not curl | jq: it knows the address and token from the
# config and says "cannot reach the service ... is it running?" instead of printing
# nothing. systemctl and journalctl are run as they are: for a system unit an operator
# who is not root needs sudo, or polkit asks.

# A user who pasted the guide's aliases earlier would have them expanded inside the
# definitions below. `|| true`: the file is sourced under `set -e` too (the runbook's test does).
for _titan_name in titan-status titan-positions titan-equity titan-logs titan-restart \
  titan-stop titan-start titan-flatten titan-backup; do
  unalias "$_titan_name" 2>/dev/null || true
done
unset _titan_name

# The titan CLI of TITAN_HOME's virtualenv, else the one on PATH; always with the config.
_titan_cli() {
  local bin="${TITAN_HOME:-/opt/titan}/.venv/bin/titan"
  if [ ! -x "$bin" ]; then
    if command -v titan >/dev/null 2>&1; then
      bin=titan
    else
      echo "titan: no CLI at $bin and none on PATH (set TITAN_HOME to the checkout)" >&2
      return 127
    fi
  fi
  local sub="$1"
  shift
  command "$bin" "$sub" "$@" --config "${TITAN_CONFIG:-/etc/titan/config.json}"
}

# pm2 or systemd, as TITAN_PM says. $1 is the action: logs, restart, stop, start.
_titan_pm() {
  local action="$1" app="${TITAN_APP:-titan-execution}"
  shift
  case "${TITAN_PM:-pm2}" in
    pm2)
      case "$action" in
        logs) command pm2 logs "$app" --lines 50 "$@" ;;
        start)
          # Known to pm2 (stopped, or saved): start it by name. Never started: the
          # ecosystem file of the checkout defines it.
          if command pm2 describe "$app" >/dev/null 2>&1; then
            command pm2 start "$app" "$@"
          else
            command pm2 start "${TITAN_HOME:-/opt/titan}/ops/pm2/ecosystem.config.js" \
              --only "$app" "$@"
          fi
          ;;
        *) command pm2 "$action" "$app" "$@" ;;
      esac
      ;;
    systemd)
      case "$action" in
        logs) command journalctl --unit "$app.service" --lines 50 --follow "$@" ;;
        *) command systemctl "$action" "$app.service" "$@" ;;
      esac
      ;;
    *)
      echo "titan: TITAN_PM must be pm2 or systemd (got '${TITAN_PM}')" >&2
      return 2
      ;;
  esac
}

titan-status() { _titan_cli health "$@"; }
titan-positions() { _titan_cli positions "$@"; }
titan-equity() { _titan_cli equity "$@"; }
titan-logs() { _titan_pm logs "$@"; }
titan-restart() { _titan_pm restart "$@"; }
titan-stop() { _titan_pm stop "$@"; }
titan-start() { _titan_pm start "$@"; }
titan-flatten() { _titan_cli flatten "$@"; }
titan-backup() { _titan_cli backup "$@"; }
